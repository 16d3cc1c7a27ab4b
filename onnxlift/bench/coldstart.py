"""Cold start: a fresh process from nothing to the first answer, median of several runs.

Each run is a new interpreter (coldstart_probe.py) that imports its runtime, creates the
session (or loads the PyTorch model) and answers one sentence. `wall_s` is measured here, from
just before the process is spawned to the moment its answer is read, so it includes the
interpreter's own start. The kinds are run round-robin. Files come from the page cache after
the first run (a real Lambda cold start also pulls the image, which this does not measure).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("coldstart_probe.py")
TEXT = "A man is riding a white horse on the beach."


def probe_env(runtime_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(runtime_dir), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return env | (extra or {})


def probe_once(
    kind: str, where: Path, *, threads: int, env: dict[str, str], timeout: float = 120
) -> dict[str, Any]:
    """Spawn one probe; its timings plus wall_s, from spawn to the answer read."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, str(PROBE), kind, str(where), str(threads), TEXT],
            stdout=subprocess.PIPE,
            stderr=errors,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        result: dict[str, Any] | None = None
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("COLDSTART "):
                wall = time.perf_counter() - started
                result = json.loads(line.removeprefix("COLDSTART ")) | {"wall_s": wall}
                break
        process.stdout.close()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if result is None:
            errors.seek(0)
            tail = errors.read().decode(errors="replace")[-2000:]
            raise RuntimeError(
                f"cold-start probe {kind} gave no answer (rc {process.returncode}):\n{tail}"
            )
        return result


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall_s", "imports_s", "load_s", "first_inference_s", "in_process_s")
    return {
        "runs": len(runs),
        **{f"median_{k}": statistics.median(r[k] for r in runs) for k in keys},
        "min_wall_s": min(r["wall_s"] for r in runs),
        "max_wall_s": max(r["wall_s"] for r in runs),
        "samples": runs,
    }


def run_coldstart(
    *,
    targets: dict[str, tuple[str, Path, dict[str, str]]],
    runtime_dir: Path,
    runs: int,
    threads: int = 1,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """targets: key -> (probe kind, where, extra env). Round-robin, `runs` rounds."""
    samples: dict[str, list[dict[str, Any]]] = {key: [] for key in targets}
    for _ in range(runs):
        for key, (kind, where, extra) in targets.items():
            samples[key].append(
                probe_once(kind, where, threads=threads, env=probe_env(runtime_dir, extra))
            )
    results = {"runs": runs, "threads": threads, "kinds": {}}
    for key, runs_of_key in samples.items():
        results["kinds"][key] = summarize_runs(runs_of_key)
        report(f"  cold start {key}: median {results['kinds'][key]['median_wall_s']:.2f} s")
    return results


def handler_env(artifact_folder: Path, event: dict[str, Any], threads: int) -> dict[str, str]:
    from onnxlift.bench.serving import sandbox_env

    return sandbox_env(artifact_folder, threads=threads) | {
        "ONNXLIFT_BENCH_EVENT": json.dumps(event)
    }
