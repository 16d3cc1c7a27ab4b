"""Remove what serving never loads from the image's installed packages: numpy's and
onnxruntime's tests, C headers, stubs and build-time tools, onnxruntime's Python tooling
(transformers optimizer, quantizer, converters).

The Dockerfile runs it once after `pip install` (`python prune.py`: the interpreter's
site-packages), and `onnxlift bench` prunes its measured install with the same patterns, so the
size it reports is the image's. tests/serving/test_serving_image.py serves a request from a
pruned copy of these packages.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

__all__ = ["PRUNED", "prune"]

# Globs relative to site-packages. Each is either never imported by `import numpy` /
# `import onnxruntime` and an InferenceSession, or imported only on request (numpy.f2py).
PRUNED = (
    "numpy/**/tests",
    "numpy/_core/include",
    "numpy/_core/lib",
    "numpy/_core/_*_tests.*.so",
    "numpy/_core/_simd.*.so",
    "numpy/f2py",
    "numpy/_pyinstaller",
    "numpy/**/*.pyi",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
    "onnxruntime/backend",
    "onnxruntime/**/*.pyi",
    "tokenizers/**/*.pyi",
)


def prune(site: Path) -> int:
    """Delete every PRUNED match under `site`; the bytes removed."""
    removed = 0
    for pattern in PRUNED:
        for path in sorted(site.glob(pattern), reverse=True):  # deepest first
            if path.is_dir() and not path.is_symlink():
                removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                shutil.rmtree(path)
            elif path.exists():
                removed += path.stat().st_size
                path.unlink()
    return removed


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    print(f"pruned {prune(target) / 1e6:.1f} MB from {target}")
