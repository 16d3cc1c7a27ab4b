"""Figures for the serving arena cap (onnxlift_serving.session.arena_bytes) on a built model.

    python scripts/arena_cap_figures.py .onnxlift/build/minilm/<fingerprint>/model.onnx [runs]

Each figure in a fresh process (the cap is process-wide): RSS at start, after a 64 x 256-token
batch and its peak, with and without the cap (2048 MiB function, run_options' arena
shrinkage on); then, in one process, both sessions side by side: median latency of batch 1 and
8 (64 tokens), runs interleaved, and whether their outputs are the same bit for bit. Prints JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "layers" / "runtime"

CHILD = r"""
import json, resource, statistics, sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from onnxlift_serving.session import create_session, run_options

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024

def feed(session, rows, tokens, seed=0):
    ids = np.random.default_rng(seed).integers(1000, 2000, size=(rows, tokens), dtype=np.int64)
    names = {i.name for i in session.get_inputs()}
    full = {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in full.items() if k in names}

path, mode, runs = sys.argv[1], sys.argv[3], int(sys.argv[4])
if mode in ("capped", "uncapped"):
    session = create_session(path, threads=1, memory_mb=2048 if mode == "capped" else None)
    start = rss()
    session.run(None, feed(session, 64, 256), run_options())
    after = rss()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"mode": mode, "start_mib": start, "after_64x256_mib": after,
                      "peak_mib": peak}))
    sys.exit()
plain = create_session(path, threads=1)
capped = create_session(path, threads=1, memory_mb=2048)
latency = {}
for rows in (1, 8):
    inputs = feed(plain, rows, 64)
    times = {"uncapped": [], "capped": []}
    for _ in range(runs):
        for name, session in (("uncapped", plain), ("capped", capped)):
            started = time.perf_counter()
            session.run(None, inputs, run_options())
            times[name].append((time.perf_counter() - started) * 1000)
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    ratio = round(medians["capped"] / medians["uncapped"], 3)
    latency[f"batch {rows} x 64"] = medians | {"ratio": ratio}
same = []
for seed, (rows, tokens) in enumerate([(1, 8), (2, 37), (8, 64), (16, 128)]):
    a = plain.run(None, feed(plain, rows, tokens, seed), run_options())
    b = capped.run(None, feed(capped, rows, tokens, seed), run_options())
    same.append(all(np.array_equal(x, y) and x.tobytes() == y.tobytes() for x, y in zip(a, b)))
print(json.dumps({"mode": "side by side", "runs": runs, "latency_ms": latency,
                  "bit_identical": same}))
"""


def child(path: str, mode: str, runs: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(RUNTIME), mode, str(runs)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    model, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30
    print(json.dumps([child(model, m, runs) for m in ("uncapped", "capped", "both")], indent=2))
