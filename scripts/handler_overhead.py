"""The Lambda handler's overhead over pre-processing + run, batch 1, interleaved in one loop.

    .venv/bin/python scripts/handler_overhead.py [--baseline /tmp/old/handler.py] [--rounds N]
    .venv/bin/python scripts/handler_overhead.py --parts [--rounds N]

Each round times the pipeline's `run` (tokenizer + session.run) and the real handler on an
API Gateway event (and a baseline handler, a file named handler.py in a folder of its own,
e.g. `git show REV:functions/inference/handler.py > /tmp/old/handler.py`), each taking each
place in the round in turn, so machine noise and cache state hit every variant alike; medians
are printed.

--parts: where the overhead goes. A second copy of the handler answers from a fixed output
instead of running the model, and each of its parts is timed right after a real run of the
first copy: the caches as a request finds them (onnxruntime's run evicts the interpreter's
code and data, so the same Python takes several times longer than in a tight loop, which
is printed beside it).
Needs the minilm build (`onnxlift build minilm`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxlift.bench import serving

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["A man is riding a white horse on the beach."]
MODEL = "minilm"


def _overhead(artifact: Path, pipeline: Any, baseline: Path | None, rounds: int) -> None:
    handlers = {"handler": ROOT / "functions/inference/handler.py"}
    if baseline:
        handlers["baseline"] = baseline
    calls: dict[str, Callable[[], object]] = {"prep_run": serving.run_call(pipeline, TEXTS)}
    for key, path in handlers.items():
        module = serving.load_handler_module(path, artifact)
        calls[key] = serving.handler_call(module, MODEL, TEXTS)
    medians = _interleaved(calls, rounds)
    floor = medians["prep_run"]
    for key, ms in medians.items():
        extra = "" if key == "prep_run" else f"  (+{(ms - floor) / floor:.1%} over prep_run)"
        print(f"{key:9s} p50 {ms:.3f} ms{extra}")


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {key: [] for key in calls}
    with contextlib.redirect_stdout(serving.devnull()):  # the handlers' EMF lines
        for call in calls.values():
            for _ in range(50):
                call()
        order = list(calls.items())
        for round_ in range(rounds):
            # each variant takes each place in the round in turn: the one right after
            # prep_run finds the handler's code colder than one after another handler
            shift = round_ % len(order)
            for key, call in order[shift:] + order[:shift]:
                started = time.perf_counter()
                call()
                samples[key].append(time.perf_counter() - started)
    return {key: statistics.median(s) * 1000 for key, s in samples.items()}


def _parts(artifact: Path, pipeline: Any, rounds: int, scratch: Path) -> None:
    from onnxlift_serving import binary

    from onnxlift.local.lambda_runtime import LocalContext

    run = serving.run_call(pipeline, TEXTS)
    fixed = run()
    copy = serving.stage_artifact(artifact, artifact / "model.onnx", scratch / "fixed")
    module = serving.load_handler_module(ROOT / "functions/inference/handler.py", copy)
    loaded = module.service.resolve(MODEL)
    # the copy's pipeline answers `fixed` at once: what is left is the handler's own work
    object.__setattr__(loaded, "pipeline", _Fixed(pipeline, fixed))
    event = serving.api_event(MODEL, TEXTS)
    body = event["body"].encode()
    contexts = itertools.cycle([LocalContext(MODEL, 2048, 29) for _ in range(64)])
    metrics = module.metrics
    parts: dict[str, Callable[[], object]] = {
        "whole handler": lambda: module.lambda_handler(event, next(contexts)),
        "route + infer + proxy result": lambda: module.resolve(event),
        "V2 decode, validate, encode": lambda: binary.serve_infer(
            module.service, body, name=MODEL, version=None
        ),
        "powertools Metrics add + EMF flush": lambda: (
            metrics.add_metric(name="InferLatency", unit="Milliseconds", value=1.0),
            metrics.flush_metrics(),
        ),
        "nothing (the timer)": lambda: None,
    }
    after_run: dict[str, list[float]] = {key: [] for key in parts}
    with contextlib.redirect_stdout(serving.devnull()):
        for _ in range(rounds):
            for key, part in parts.items():
                run()
                started = time.perf_counter()
                part()
                after_run[key].append(time.perf_counter() - started)
        warm = {
            key: min(timeit.repeat(part, number=200, repeat=5)) / 200 for key, part in parts.items()
        }
    floor = statistics.median(_interleaved({"prep_run": run}, 200).values())
    print(f"pre-processing + run p50 {floor:.3f} ms; each part in microseconds:")
    print(f"{'part':38s} {'after a run':>12s} {'tight loop':>11s} {'of the run':>11s}")
    for key, samples in after_run.items():
        cold = statistics.median(samples) * 1e6
        print(f"{key:38s} {cold:12.1f} {warm[key] * 1e6:11.1f} {cold / 1000 / floor:11.1%}")


class _Fixed:
    """A pipeline stand-in with the real signature that answers one fixed output."""

    def __init__(self, real: Any, outputs: dict[str, np.ndarray]) -> None:
        self.inputs, self.outputs, self._answer = real.inputs, real.outputs, outputs

    def run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another handler file to time beside")
    parser.add_argument("--parts", action="store_true", help="where the overhead goes")
    parser.add_argument("--rounds", type=int, default=1500)
    args = parser.parse_args()
    from onnxlift.builder.build import latest_build
    from onnxlift.spec import load_spec

    build = latest_build(load_spec(ROOT / "models" / MODEL), ROOT)
    if build is None:  # the build code changed since: time the serving code on the last build
        finished = sorted(
            (ROOT / ".onnxlift/build" / MODEL).glob("*/build.json"), key=lambda p: p.stat().st_mtime
        )
        if not finished:
            raise SystemExit(f"no build of {MODEL}: run `onnxlift build {MODEL}` first")
        build = finished[-1].parent
        print(f"(no build of {MODEL} for this code; timing the newest, {build.name})")
    with tempfile.TemporaryDirectory(prefix="onnxlift-overhead-") as scratch:
        artifact = serving.stage_artifact(build, build / "model.onnx", Path(scratch) / "art")
        pipeline = serving.load_pipeline(artifact, threads=1)
        if args.parts:
            _parts(artifact, pipeline, args.rounds, Path(scratch))
        else:
            _overhead(artifact, pipeline, args.baseline, args.rounds)


if __name__ == "__main__":
    main()
