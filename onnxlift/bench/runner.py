"""`onnxlift bench`: every measurement in one bounded run, then results.json, REPORT.md, PNGs."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxlift_serving.cpu import cpu_facts

from onnxlift.bench import (
    alternatives,
    coldstart,
    op_profile,
    sagemaker_batching,
    serving,
    size,
    throughput,
)
from onnxlift.bench import report as outputs
from onnxlift.bench.corpus import BATCH_SIZES, bench_sentences, read_lines
from onnxlift.bench.tiers import run_tiers
from onnxlift.bench.timing import Plan

Report = Callable[[str], None]
HANDLER, RUNTIME = Path("functions/inference/handler.py"), Path("layers/runtime")
PACKAGES = "onnxruntime numpy tokenizers torch transformers sentence-transformers"
PACKAGES += " aws-lambda-powertools"
METHOD = [
    "Inputs: the parity set's sentences of 20-120 characters in file order; batch b is the "
    "first b of them, the same texts for every tier and every variant.",
    "Latency: time.perf_counter around each call after warm-up calls; p50/p95/p99 of the "
    "samples. Variants and tiers compared with each other are timed round-robin (one call each "
    "per round), the rounds' orders balanced so that within a round each call runs right after "
    "every other equally often over a cycle of orders (a Williams design), and a time budget "
    "stops only at the end of a cycle: drift on the machine and what the previous call left in "
    "the cache spread evenly. The runs are bounded by count and by a time budget per batch "
    "size.",
    "Threads: every figure except the threads section uses intra_op_num_threads=1 (one vCPU, "
    "as a Lambda function gets below 1,769 MB); PyTorch gets torch.set_num_threads(1).",
    "Tiers: floor = session.run on prepared int64 tensors; pre-processing + run = the serving "
    "pipeline's run (tokenizer + session.run); V2 = ModelService.infer + json.dumps; handler = "
    "the real Lambda handler (the contract's router, powertools' Logger and Metrics flushed to "
    "stdout, here /dev/null; tracing off) on the API Gateway proxy event the local gateway "
    "builds; HTTP = one "
    "keep-alive connection through the local gateway to a sandbox of the local Lambda service.",
    "Parity: min and mean cosine against sentence-transformers on PyTorch over the model's "
    "parity set (65 texts, one word to past 256 tokens), computed in this run (full mode) or "
    "taken from the build manifest (quick mode).",
    "Cold start: a new interpreter per run (onnxlift/bench/coldstart_probe.py), from spawn to "
    "the first answer read by the parent; ONNX kinds go through the serving runtime "
    "(sha256 check, session, pipeline); handler_int8 imports the Lambda handler as deployed "
    "(tracing on: LAMBDA_TASK_ROOT set, powertools' Tracer and the X-Ray SDK), "
    "handler_int8_untraced as with -c onnxlift.tracing=false, and each answers one API Gateway "
    "event, its init timed by phase by the handler itself; torch loads SentenceTransformer "
    "from the safetensors "
    "folder. The serving code runs from a task root laid out and bytecode-compiled as the "
    "Lambda image's (checked-hash). Files are in the page cache; a Lambda cold start also "
    "pulls its image.",
    "Op profile: onnxruntime's profiler (SessionOptions.enable_profiling through "
    "create_session), one thread, the served INT8 file and the fused FP32, their calls "
    "interleaved, on the batch-1 and "
    "batch-8 inputs; warm-up calls dropped, kernel time per node averaged over the profiled "
    "calls and summed by op type (session overhead between nodes is not in it).",
    "Throughput: `onnxlift up` started as a separate process on free loopback ports with its own "
    "state folder (or a running stack via --state); batch 1; limit = cores / bare session.run "
    "time at batch 1 with one thread. The client threads run on the same cores.",
    "SageMaker dynamic batching: for each SageMaker-target text model, a fresh `serve` "
    "(gunicorn, one worker, CPU provider, 2 onnxruntime threads) on 127.0.0.1 per mode: off "
    "as shipped (4 request threads), off with as many request threads as batching gets (the "
    "launcher's rule, 16 + 32 + 1), on (16 rows, delay 0), on (16 rows, delay 5 ms); 32 "
    "clients, one distinct text a request, to /invocations; every mode once a "
    "round, 2 rounds; the clients share the cores with the container.",
    "Only loopback traffic; nothing is fetched from a model hub. pip reaches PyPI for the size "
    "section in full mode only, cached under ~/.cache/onnxlift-bench.",
]


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
    batching_requests: int  # SageMaker dynamic batching: per mode and concurrency
    batching_max_s: float
    parity_in_run: bool
    download: bool


QUICK = Settings((1, 8), 2, 20, 1.0, 10, 2.0, 1, False, 30, 5.0, 64, 3.0, False, False)
FULL = Settings(BATCH_SIZES, 10, 300, 6.0, 150, 12.0, 5, True, 400, 20.0, 800, 25.0, True, True)


@dataclass(frozen=True)
class BenchConfig:
    root: Path
    out: Path
    models: tuple[str, ...] = ()
    quick: bool = False
    state: Path | None = None  # a running stack's local.json; None: start one
    command: str = "onnxlift bench"


@dataclass
class _Model:
    """One model under measurement; `out` is what results.json gets of it."""

    name: str
    report: Report
    out: dict[str, Any] = field(default_factory=dict)
    folder: Path = Path()  # the build
    manifest: dict[str, Any] = field(default_factory=dict)
    staged: dict[str, Path] = field(default_factory=dict)  # variant -> its artifact folder
    source: Any = None  # the model's PyTorch source module
    parity_file: Path = Path()
    sentences: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out |= {"name": self.name, "build": {}, "section_seconds": {}}

    @property
    def weights(self) -> Path | None:
        has = self.source is not None and hasattr(self.source, "weights_dir")
        return Path(self.source.weights_dir()) if has else None

    @contextlib.contextmanager
    def section(self, key: str, label: str | None = None) -> Iterator[None]:
        started = time.perf_counter()
        self.report(f"{self.name}: {label or key}")
        yield
        self.out["section_seconds"][key] = round(time.perf_counter() - started, 1)


def _build(config: BenchConfig, name: str, scratch: Path, report: Report) -> _Model:
    from onnxlift.builder.build import build_model, load_source_module
    from onnxlift.spec import load_spec

    m, spec = _Model(name, report), load_spec(config.root / "models" / name)
    with m.section("build (cached by fingerprint)"):
        build = build_model(spec, root=config.root, report=lambda line: report(f"  {line}"))
    m.folder, m.manifest = build.folder, build.manifest
    keys = {"fingerprint": "build_fingerprint", "parity": "parity", "bytes": "bytes"}
    m.out["build"] = {"folder": str(m.folder)} | {k: m.manifest.get(v) for k, v in keys.items()}
    m.parity_file = spec.folder / spec.parity.inputs
    m.sentences = bench_sentences(m.parity_file)
    try:
        m.source = load_source_module(spec)
    except Exception as exc:  # a model without a PyTorch source still gets its tiers
        report(f"  no source module for the alternatives: {exc}")
    for v in serving.onnx_variants(m.folder):
        m.staged[v.key] = serving.stage_artifact(m.folder, v.path, scratch / name / v.key)
    return m


def _warm(m: _Model, config: BenchConfig, s: Settings, info: dict[str, Any]) -> None:
    """Tiers, alternatives, threads and throughput, while the local stack runs."""
    plan = Plan(m.sentences, s.batch_sizes, s.warmup, s.repeat, s.budget_s, m.report)
    fewer = dataclasses.replace(plan, warmup=max(2, s.warmup // 3), repeat=s.alt_repeat)
    with m.section("tiers"):
        gateway = (info["url"], info["api_key"])
        m.out["tiers"] = run_tiers(plan, m.name, m.staged["int8"], config.root / HANDLER, gateway)
    with m.section("alternatives"):
        texts = read_lines(m.parity_file) if s.parity_in_run else None
        alt = dataclasses.replace(fewer, budget_s=s.alt_budget_s)
        m.out["alternatives"] = alternatives.run_alternatives(
            alt, m.folder, m.manifest, m.source, texts
        )
    with m.section("op_profile", "per-op profile, INT8 vs FP32"):
        batches = [b for b in op_profile.PROFILED_BATCHES if b in s.batch_sizes]
        m.out["op_profile"] = op_profile.bench_op_profile(
            m.folder, m.staged["int8"], m.sentences, batches, max(5, s.alt_repeat // 3)
        )
    with m.section("threads"):
        m.out["threads"] = alternatives.run_threads(fewer, m.folder)
    with m.section("throughput"):
        floor = m.out["tiers"]["batches"]["1"]["floor"]["p50"]
        args = (m.sentences[0], floor, s.requests, s.throughput_max_s, m.report)
        m.out["throughput"] = throughput.run_throughput(info, m.name, *args)


def _cold(m: _Model, config: BenchConfig, s: Settings) -> None:
    """Cold start and size, after the stack is down, so nothing else competes for the cores."""
    with m.section("cold start"), tempfile.TemporaryDirectory(prefix="onnxlift-task-") as task:
        # the serving code as the Lambda image holds it: copied, its bytecode compiled
        runtime, handler = coldstart.stage_task_root(
            config.root / HANDLER, config.root / RUNTIME, Path(task)
        )
        targets = coldstart.cold_targets(
            m.name, m.staged, handler, m.weights, m.sentences[0], s.cold_fp32_plain
        )
        m.out["coldstart"] = coldstart.run_coldstart(targets, runtime, s.cold_runs, m.report)
    with m.section("size", "deployable size"):
        # the staged INT8 folder: model.onnx, manifest, assets, not the build's work/
        m.out["size"] = size.run_size(
            config.root, m.staged["int8"], m.weights, s.download, m.report
        )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _meta(config: BenchConfig, settings: Settings, started: float) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(config.root), *args], capture_output=True, text=True
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench")
    facts = cpu_facts()
    return {
        "command": config.command,
        "mode": "quick" if config.quick else "full",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git": {
            "commit": git("rev-parse", "--short=12", "HEAD") or "unknown",
            "dirty": bool(dirty),
        },
        "machine": {
            "cpu": facts["model"],
            "cpu_flags": facts["flags"],  # integer kernels differ by these
            "cores": throughput.cores(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "versions": {package: _version(package) for package in PACKAGES.split()},
        "settings": vars(settings),
        "duration_s": round(time.perf_counter() - started, 1),
    }


def _sagemaker_batching(config: BenchConfig, s: Settings, report: Report) -> dict[str, Any]:
    """Dynamic batching on and off for each SageMaker-target text model (all of them unless
    models were named), after everything else, so nothing competes for the cores."""
    from onnxlift.builder.build import build_model
    from onnxlift.spec import discover_specs

    out: dict[str, Any] = {}
    for spec in discover_specs(config.root / "models"):
        wanted = not config.models or spec.name in config.models
        if spec.serving.target != "sagemaker" or spec.task != "text-embedding" or not wanted:
            continue
        report(f"{spec.name}: SageMaker dynamic batching on and off")
        build = build_model(spec, root=config.root, report=lambda line: report(f"  {line}"))
        texts = sagemaker_batching.distinct_sentences(spec.folder / spec.parity.inputs)
        out[spec.name] = sagemaker_batching.run_batching(
            build.folder,
            spec.name,
            texts,
            s.batching_requests,
            s.batching_max_s,
            report,
            rounds=1 if config.quick else 2,
        )
    return out


def _lambda_models(
    config: BenchConfig,
    settings: Settings,
    names: list[str],
    scratch: Path,
    models: list[_Model],
    report: Report,
) -> None:
    report("starting the local stack (onnxlift up) for the HTTP tier and throughput")
    with throughput.local_stack(config.root, names, config.state, report) as info:
        for name in names:
            models.append(_build(config, name, scratch, report))
            _warm(models[-1], config, settings, info)
    for m in models:
        _cold(m, config, settings)


def run(config: BenchConfig, report: Report = print) -> dict[str, Any]:
    from onnxlift.spec import discover_specs

    started, settings = time.perf_counter(), QUICK if config.quick else FULL
    specs = {spec.name: spec for spec in discover_specs(config.root / "models")}
    on_sagemaker = {name for name, spec in specs.items() if spec.serving.target == "sagemaker"}
    names = [name for name in config.models if name not in on_sagemaker] or [
        spec.name
        for spec in specs.values()
        if spec.serving.target == "lambda" and spec.task == "text-embedding"
        and not config.models
    ]  # fmt: skip
    config.out.mkdir(parents=True, exist_ok=True)
    models: list[_Model] = []
    with tempfile.TemporaryDirectory(prefix="onnxlift-bench-") as scratch:
        if names:  # none when only SageMaker models are named
            _lambda_models(config, settings, names, Path(scratch), models, report)
    batching = _sagemaker_batching(config, settings, report)
    for m in models:
        m.out["goals"] = outputs.goals(m.name, m.out)
        m.out["notes"] = outputs.notes(m.out)
    results: dict[str, Any] = {
        "schema": 1,
        "meta": _meta(config, settings, started),
        "goals": [goal for m in models for goal in m.out["goals"]],
        "headline": {m.name: outputs.figures(m.out) for m in models},
        "models": {m.name: m.out for m in models},
        "method": METHOD,
    }
    if batching:
        results["sagemaker_batching"] = batching
    results["plots"] = plots = outputs.write_plots(results, config.out)
    (config.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (config.out / "REPORT.md").write_text(outputs.render_markdown(results, plots))
    report(
        f"wrote {config.out / 'results.json'}, {config.out / 'REPORT.md'} and {len(plots)} plots"
    )
    return results
