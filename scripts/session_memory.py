"""Measure how much resident memory an onnxruntime session takes, per byte of ONNX file.

Each model runs in a fresh process: RSS after importing the runtime (the baseline), then
after creating the session and running one inference (batch 8, 64 tokens). Prints JSON.

    python scripts/session_memory.py model.fp32.onnx model.int8.onnx
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RUNTIME = Path(__file__).resolve().parents[1] / "layers" / "runtime"

CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[2])  # layers/runtime
from onnxlift_serving.session import create_session

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

path = sys.argv[1]
before = rss()
session = create_session(path, threads=1)
after_session = rss()
ids = np.random.default_rng(0).integers(1000, 2000, size=(8, 64), dtype=np.int64)
feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
feed = {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}}
session.run(None, feed)
after_run = rss()
print(json.dumps({"baseline": before, "session": after_session - before,
                  "session_and_run": after_run - before}))
"""


def measure(path: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(RUNTIME)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    size = path.stat().st_size
    return {
        "model": str(path),
        "file_mb": round(size / 2**20, 1),
        "baseline_mb": round(figures["baseline"] / 2**20, 1),
        "session_mb": round(figures["session"] / 2**20, 1),
        "session_and_run_mb": round(figures["session_and_run"] / 2**20, 1),
        "k": round(figures["session_and_run"] / size, 2),
    }


if __name__ == "__main__":
    print(json.dumps([measure(Path(p)) for p in sys.argv[1:]], indent=2))
