"""`onnxlift bench`: every measurement in one bounded run, then results.json, REPORT.md, PNGs."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxlift_serving.cpu import cpu_facts

from onnxlift.bench import report as report_module
from onnxlift.bench.alternatives import run_alternatives
from onnxlift.bench.coldstart import handler_env, run_coldstart
from onnxlift.bench.corpus import BATCH_SIZES, bench_sentences, read_lines
from onnxlift.bench.serving import api_event, onnx_variants, stage_artifact
from onnxlift.bench.size import run_size
from onnxlift.bench.threads import run_threads
from onnxlift.bench.throughput import local_stack, run_throughput
from onnxlift.bench.tiers import run_tiers

Report = Callable[[str], None]
HANDLER = Path("functions/inference/handler.py")
RUNTIME = Path("layers/runtime")


@dataclass(frozen=True)
class Settings:
    """How much of everything: a full run stays well under 10 minutes on 2 cores, --quick
    under a minute (it checks the harness, not the speed)."""

    batch_sizes: tuple[int, ...]
    warmup: int
    repeat: int
    budget_s: float  # per batch size and section
    alt_repeat: int
    alt_budget_s: float
    cold_runs: int
    cold_fp32_plain: bool
    requests: int  # per concurrency level
    throughput_max_s: float
    parity_in_run: bool
    download: bool

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls((1, 8), 2, 20, 1.0, 10, 2.0, 1, False, 30, 5.0, False, False)
        return cls(BATCH_SIZES, 10, 300, 6.0, 150, 12.0, 5, True, 400, 20.0, True, True)


@dataclass(frozen=True)
class BenchConfig:
    root: Path
    out: Path
    models: tuple[str, ...] = ()
    quick: bool = False
    state: Path | None = None  # a running stack's local.json; None: start one
    command: str = "onnxlift bench"


def _versions() -> dict[str, str]:
    versions = {}
    for package in (
        "onnxruntime",
        "numpy",
        "tokenizers",
        "torch",
        "transformers",
        "sentence-transformers",
        "aws-lambda-powertools",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _git(root: Path) -> dict[str, Any]:
    def run(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    status = run("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench")
    return {"commit": run("rev-parse", "--short=12", "HEAD") or "unknown", "dirty": bool(status)}


METHOD = [
    "Inputs: the parity set's sentences of 20-120 characters in file order; batch b is the "
    "first b of them, the same texts for every tier and every variant.",
    "Latency: time.perf_counter around each call after warm-up calls; p50/p95/p99 of the "
    "samples. Variants and tiers compared with each other are timed round-robin (one call each "
    "per round), so drift on the machine spreads evenly. The runs are bounded by count and by "
    "a time budget per batch size.",
    "Threads: every figure except the threads section uses intra_op_num_threads=1 (one vCPU, "
    "as a Lambda function gets below 1,769 MB); PyTorch gets torch.set_num_threads(1).",
    "Tiers: floor = session.run on prepared int64 tensors; pre-processing + run = the serving "
    "pipeline's run (tokenizer + session.run); V2 = ModelService.infer + json.dumps; handler = "
    "the real Lambda handler (powertools resolver, logger, tracer disabled, metrics flushed to "
    "stdout, here /dev/null) on the API Gateway proxy event the local gateway builds; HTTP = one "
    "keep-alive connection through the local gateway to the local Lambda runtime.",
    "Parity: min and mean cosine against sentence-transformers on PyTorch over the model's "
    "parity set (65 texts, one word to past 256 tokens), computed in this run (full mode) or "
    "taken from the build manifest (quick mode).",
    "Cold start: a new interpreter per run (onnxlift/bench/coldstart_probe.py), from spawn to "
    "the first answer read by the parent; ONNX kinds go through the serving runtime "
    "(sha256 check, session, pipeline); handler_int8 imports the Lambda handler (powertools) and "
    "answers one API Gateway event; torch loads SentenceTransformer from the safetensors "
    "folder. Files are in the page cache; a Lambda cold start also pulls its image.",
    "Throughput: `onnxlift up` started as a separate process on free loopback ports with its own "
    "state folder (or a running stack via --state); batch 1; limit = cores / bare session.run "
    "time at batch 1 with one thread. The client threads run on the same cores.",
    "Only loopback traffic; nothing is fetched from a model hub. pip reaches PyPI for the size "
    "section in full mode only, cached under ~/.cache/onnxlift-bench.",
]


def run_model(
    config: BenchConfig,
    settings: Settings,
    name: str,
    scratch: Path,
    info: dict[str, Any] | None,
    report: Report,
) -> dict[str, Any]:
    from onnxlift.build.pipeline import build_model, load_source_module
    from onnxlift.spec import load_spec

    root = config.root
    spec = load_spec(root / "models" / name)
    timings: dict[str, float] = {}

    def section(label: str) -> Callable[[], None]:
        started = time.perf_counter()
        report(f"{name}: {label}")
        return lambda: timings.__setitem__(label, round(time.perf_counter() - started, 1))

    done = section("build (cached by fingerprint)")
    build = build_model(spec, root=root, report=lambda m: report(f"  {m}"))
    done()
    folder = build.folder
    sentences = bench_sentences(spec.folder / spec.parity.inputs)
    parity_texts = read_lines(spec.folder / spec.parity.inputs) if settings.parity_in_run else None
    try:
        source = load_source_module(spec)
    except Exception as exc:  # a model without a PyTorch source still gets its tiers
        report(f"  no source module for the alternatives: {exc}")
        source = None
    weights_dir = Path(source.weights_dir()) if source and hasattr(source, "weights_dir") else None
    staged = {
        v.key: stage_artifact(folder, v.path, scratch / name / v.key) for v in onnx_variants(folder)
    }
    model: dict[str, Any] = {
        "name": name,
        "build": {
            "folder": str(folder),
            "fingerprint": build.manifest.get("build_fingerprint"),
            "parity": build.manifest.get("parity"),
            "bytes": build.manifest.get("bytes"),
        },
        "section_seconds": timings,
    }
    handler = root / HANDLER
    gateway = (info["url"], info["api_key"]) if info else None

    done = section("tiers")
    model["tiers"] = run_tiers(
        name=name,
        artifact_folder=staged["int8"],
        handler_path=handler,
        sentences=sentences,
        batch_sizes=settings.batch_sizes,
        warmup=settings.warmup,
        repeat=settings.repeat,
        budget_s=settings.budget_s,
        gateway=gateway,
        report=report,
    )
    done()

    done = section("alternatives")
    model["alternatives"] = run_alternatives(
        build_folder=folder,
        manifest=build.manifest,
        source=source,
        sentences=sentences,
        parity_texts=parity_texts,
        batch_sizes=settings.batch_sizes,
        warmup=max(2, settings.warmup // 3),
        repeat=settings.alt_repeat,
        budget_s=settings.alt_budget_s,
        report=report,
    )
    done()

    done = section("threads")
    model["threads"] = run_threads(
        build_folder=folder,
        sentences=sentences,
        batch_sizes=settings.batch_sizes,
        warmup=max(2, settings.warmup // 3),
        repeat=settings.alt_repeat,
        budget_s=settings.budget_s,
        report=report,
    )
    done()

    if info:
        done = section("throughput")
        floor = model["tiers"]["batches"]["1"]["floor"]["p50"]
        model["throughput"] = run_throughput(
            info=info,
            name=name,
            text=sentences[0],
            floor_ms=floor,
            requests=settings.requests,
            max_seconds=settings.throughput_max_s,
            report=report,
        )
        done()
    return model | {"_staged": staged, "_weights_dir": weights_dir, "_sentences": sentences}


def run_cold_and_size(
    config: BenchConfig, settings: Settings, name: str, model: dict[str, Any], report: Report
) -> None:
    """After the stack is down, so nothing else competes for the cores."""
    staged, weights_dir = model.pop("_staged"), model.pop("_weights_dir")
    sentences = model.pop("_sentences")
    timings = model["section_seconds"]
    started = time.perf_counter()
    report(f"{name}: cold start")
    event = api_event(name, sentences[:1])
    targets: dict[str, tuple[str, Path, dict[str, str]]] = {"int8": ("onnx", staged["int8"], {})}
    if "fp32_fused" in staged:
        targets["fp32_fused"] = ("onnx", staged["fp32_fused"], {})
    if "fp32" in staged and settings.cold_fp32_plain:
        targets["fp32"] = ("onnx", staged["fp32"], {})
    targets["handler_int8"] = (
        "handler",
        config.root / HANDLER,
        handler_env(staged["int8"], event, threads=1),
    )
    if weights_dir is not None:
        targets["torch"] = ("torch", weights_dir, {})
    model["coldstart"] = run_coldstart(
        targets=targets,
        runtime_dir=config.root / RUNTIME,
        runs=settings.cold_runs,
        report=report,
    )
    timings["cold start"] = round(time.perf_counter() - started, 1)

    started = time.perf_counter()
    report(f"{name}: deployable size")
    # the staged INT8 folder: model.onnx, manifest, assets, not the build's work/
    model["size"] = run_size(config.root, staged["int8"], weights_dir, settings.download, report)
    timings["size"] = round(time.perf_counter() - started, 1)


def run(config: BenchConfig, report: Report = print) -> dict[str, Any]:
    from onnxlift.spec import discover_specs

    started = time.perf_counter()
    settings = Settings.for_mode(config.quick)
    names = list(config.models) or [
        s.name
        for s in discover_specs(config.root / "models")
        if s.serving.target == "lambda" and s.task == "text-embedding"
    ]
    git = _git(config.root)
    config.out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="onnxlift-bench-") as folder:
        scratch = Path(folder)
        report("starting the local stack (onnxlift up) for the HTTP tier and throughput")
        with local_stack(config.root, names, state=config.state, report=report) as info:
            for name in names:
                models[name] = run_model(config, settings, name, scratch, info, report)
        for name in names:
            run_cold_and_size(config, settings, name, models[name], report)

    all_goals = []
    for name, model in models.items():
        model["goals"] = report_module.goals(name, model)
        model["notes"] = report_module.notes(model)
        all_goals += model["goals"]
    results: dict[str, Any] = {
        "schema": 1,
        "meta": {
            "command": config.command,
            "mode": "quick" if config.quick else "full",
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git": git,
            "machine": {
                "cpu": cpu_facts()["model"],
                "cpu_flags": cpu_facts()["flags"],  # integer kernels differ by these
                "cores": len(__import__("os").sched_getaffinity(0)),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "versions": _versions(),
            "settings": settings.__dict__,
            "duration_s": 0.0,
        },
        "goals": all_goals,
        "headline": {name: report_module.figures(model) for name, model in models.items()},
        "models": models,
        "method": METHOD,
    }
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    plots = report_module.write_plots(results, config.out)
    results["plots"] = plots
    (config.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (config.out / "REPORT.md").write_text(report_module.render_markdown(results, plots))
    report(
        f"wrote {config.out / 'results.json'}, {config.out / 'REPORT.md'} and {len(plots)} plots"
    )
    return results
