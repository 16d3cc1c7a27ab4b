"""The Lambda handler's overhead over pre-processing + run, batch 1, interleaved in one loop.

    .venv/bin/python scripts/handler_overhead.py [--baseline /tmp/old/handler.py] [--rounds N]

Each round times the pipeline's `run` (tokenizer + session.run), then the real handler on an
API Gateway event (and a baseline handler, a file named handler.py in a folder of its own,
e.g. `git show REV:functions/inference/handler.py > /tmp/old/handler.py`), so machine noise
hits every variant alike; medians are printed.
Needs the minilm build (`onnxlift build minilm`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from onnxlift.bench import serving

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["A man is riding a white horse on the beach."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another handler file to time beside")
    parser.add_argument("--rounds", type=int, default=1500)
    args = parser.parse_args()
    (build,) = [p.parent for p in (ROOT / ".onnxlift/build/minilm").glob("*/manifest.json")]
    with tempfile.TemporaryDirectory(prefix="onnxlift-overhead-") as scratch:
        artifact = serving.stage_artifact(build, build / "model.onnx", Path(scratch) / "art")
        pipeline = serving.load_pipeline(artifact, threads=1)
        handlers = {"handler": ROOT / "functions/inference/handler.py"}
        if args.baseline:
            handlers["baseline"] = args.baseline
        calls: dict[str, Callable[[], object]] = {"prep_run": serving.run_call(pipeline, TEXTS)}
        for key, path in handlers.items():
            module = serving.load_handler_module(path, artifact)
            calls[key] = serving.handler_call(module, "minilm", TEXTS)
        samples: dict[str, list[float]] = {key: [] for key in calls}
        with contextlib.redirect_stdout(serving.devnull()):  # the handlers' EMF lines
            for call in calls.values():
                for _ in range(50):
                    call()
            for _ in range(args.rounds):
                for key, call in calls.items():
                    started = time.perf_counter()
                    call()
                    samples[key].append(time.perf_counter() - started)
    medians = {key: statistics.median(s) * 1000 for key, s in samples.items()}
    floor = medians["prep_run"]
    for key, ms in medians.items():
        extra = "" if key == "prep_run" else f"  (+{(ms - floor) / floor:.1%} over prep_run)"
        print(f"{key:9s} p50 {ms:.3f} ms{extra}")


if __name__ == "__main__":
    main()
