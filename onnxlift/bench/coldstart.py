"""Cold start: a fresh process from nothing to the first answer, median of several runs.

Each run is a new interpreter (coldstart_probe.py) that imports its runtime, creates the
session (or loads the PyTorch model) and answers one sentence. `wall_s` is measured here, from
just before the spawn to the moment the answer is read, so it includes the interpreter's own
start. The kinds run round-robin. Files come from the page cache after the first run (a real
Lambda cold start also pulls the image, which this does not measure). The serving code runs
from a task root laid out and compiled as the Lambda image's (stage_task_root): its bytecode
is built at image build time, so a cold start there compiles nothing.
"""

from __future__ import annotations

import compileall
import json
import os
import py_compile
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxlift_serving.contract import Env

from onnxlift.bench.serving import api_event, sandbox_env

PROBE = Path(__file__).with_name("coldstart_probe.py")
TEXT = "A man is riding a white horse on the beach."
EVENT_ENV = "ONNXLIFT_BENCH_EVENT"  # the handler probe's API Gateway event, built here
Target = tuple[str, Path, dict[str, str]]  # probe kind, where, extra environment
KEYS = ("wall_s", "imports_s", "load_s", "first_inference_s", "in_process_s")


def stage_task_root(handler: Path, runtime: Path, task_root: Path) -> tuple[Path, Path]:
    """The Lambda image's task root (functions/inference/Dockerfile): the serving package and
    the handler, their bytecode compiled as the image compiles it. Returns (runtime folder for
    PYTHONPATH, handler file)."""
    task_root.mkdir(parents=True, exist_ok=True)
    package = task_root / "onnxlift_serving"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(runtime / "onnxlift_serving", package, ignore=ignore, dirs_exist_ok=True)
    staged = Path(shutil.copy2(handler, task_root / handler.name))
    checked = py_compile.PycInvalidationMode.CHECKED_HASH  # as the Dockerfile compiles
    if not compileall.compile_dir(package, quiet=1, invalidation_mode=checked):
        raise RuntimeError(f"the serving package in {package} does not compile")
    if not compileall.compile_file(staged, quiet=1, invalidation_mode=checked):
        raise RuntimeError(f"{staged} does not compile")
    return task_root, staged


def cold_targets(
    name: str, staged: dict[str, Path], handler: Path, weights: Path | None, text: str, fp32: bool
) -> dict[str, Target]:
    """The ONNX variants through the serving runtime (plain FP32 if `fp32`), the Lambda handler
    on INT8 answering an API Gateway event of `text`, and PyTorch."""
    keys = ["int8", "fp32_fused"] + (["fp32"] if fp32 else [])
    targets: dict[str, Target] = {k: ("onnx", staged[k], {}) for k in keys if k in staged}
    env = sandbox_env(staged["int8"], threads=1) | {EVENT_ENV: json.dumps(api_event(name, [text]))}
    # As deployed by default (active tracing: powertools' Tracer, the X-Ray SDK imported), and
    # with `-c onnxlift.tracing=false` (no Tracer built).
    traced = {str(Env.LAMBDA_TASK_ROOT): str(handler.parent), str(Env.TRACE_DISABLED): "false"}
    targets["handler_int8"] = ("handler", handler, env | traced)
    targets["handler_int8_untraced"] = ("handler", handler, env)
    if weights is not None:
        targets["torch"] = ("torch", weights, {})
    return targets


def probe_once(kind: str, where: Path, env: dict[str, str], timeout: float = 120) -> dict[str, Any]:
    """Spawn one probe; its timings plus wall_s, from spawn to the answer read."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, str(PROBE), kind, str(where), "1", TEXT],
            stdout=subprocess.PIPE,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert process.stdout is not None
        answers = (line for line in process.stdout if line.startswith("COLDSTART "))
        answer = next(answers, None)
        wall = time.perf_counter() - started
        process.stdout.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if answer is None:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise RuntimeError(
                f"cold-start probe {kind}: no answer (rc {process.returncode}):\n{tail}"
            )
        return json.loads(answer.removeprefix("COLDSTART ")) | {"wall_s": wall}


def run_coldstart(
    targets: dict[str, Target], runtime: Path, runs: int, report: Callable[[str], None]
) -> dict[str, Any]:
    """`runs` rounds over the targets, one thread each; the probes find the serving runtime
    first on PYTHONPATH and fetch nothing from a model hub."""
    paths = [str(runtime), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env = os.environ | {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))} | offline
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key in targets}
    for _ in range(runs):
        for key, (kind, where, extra) in targets.items():
            samples[key].append(probe_once(kind, where, env | extra))
    kinds = {}
    for key, found in samples.items():
        kinds[key] = {"runs": len(found)} | {
            f"median_{k}": statistics.median(r[k] for r in found) for k in KEYS
        }
        walls = [r["wall_s"] for r in found]
        kinds[key] |= {"min_wall_s": min(walls), "max_wall_s": max(walls), "samples": found}
        phases = [r["phases"] for r in found if r.get("phases")]
        if phases:  # the handler's own init by phase (those every run reported)
            names = [n for n in phases[0] if all(n in p for p in phases)]
            kinds[key]["median_phases"] = {
                name: statistics.median(p[name] for p in phases) for name in names
            }
        report(f"  cold start {key}: median {kinds[key]['median_wall_s']:.2f} s")
    return {"runs": runs, "threads": 1, "kinds": kinds}
