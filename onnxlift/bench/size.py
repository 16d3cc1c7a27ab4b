"""Deployable size: the function's dependencies installed for the Lambda platform plus the model,
against the same for a PyTorch-based function.

Method (stated in the report):
- pip install --target DIR --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64
  --python-version 3.12 --only-binary=:all:. Both platform tags: onnxruntime 1.32 ships only
  manylinux_2_28 wheels, so a manylinux2014-only install finds none. The Lambda Python 3.12
  base image (Amazon Linux 2023, glibc 2.34) takes manylinux_2_28 wheels.
- onnxlift: functions/inference/requirements.txt, the image's hashed lock, + the artifact folder
  (model.onnx, manifest, tokenizer) + the handler and onnxlift_serving sources.
- PyTorch: sentence-transformers and its dependency closure at the versions that produced the
  parity reference, each pinned and installed --no-deps, except torch itself: PyPI's Linux
  torch wheel is a CUDA build that pulls several GB of nvidia-* wheels, and the CPU build lives
  on the PyTorch index, which this bench does not reach. It counts torch as the CPU build
  installed in the running environment (files from its RECORD), which is the wheel a careful
  user would pick. + the safetensors weights folder. No Lambda handler library on this side.
- Installed bytes are apparent file sizes of what pip wrote (RECORD), not wheel sizes.
Results are cached under ~/.cache/onnxlift-bench (keyed by the requirement set); --quick never
downloads: it uses the cache, or else estimates both sides from the running environment's
installed files and says so.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from onnxlift.lockfile import read_pins

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
PYTHON_VERSION = "3.12"
TARGET_ENV = {
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
TORCH_ROOTS = ("sentence-transformers",)
SEPARATE = {"torch"}  # counted from the CPU build, never downloaded from PyPI
NEVER = re.compile(r"^(nvidia-.*|triton)$")


def cache_root() -> Path:
    base = os.environ.get("ONNXLIFT_BENCH_CACHE") or os.path.expanduser("~/.cache/onnxlift-bench")
    return Path(base)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dir_bytes(path: Path) -> int:
    """Apparent size of every regular file under path (symlinks followed for the files only)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder) / name
            if file.is_file():
                total += file.stat().st_size
    return total


def dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        located = Path(str(dist.locate_file(file)))
        if located.is_file():
            total += located.stat().st_size
    return total


def local_closure(roots: Iterable[str]) -> dict[str, str]:
    """Name -> version of the roots and everything they require, from installed metadata,
    markers evaluated for the Lambda platform (Python 3.12, Linux x86_64)."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [Requirement(r) for r in roots]
    while queue:
        req = queue.pop()
        name, extras = canonical(req.name), frozenset(req.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            found.setdefault(name, "missing")
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            child = Requirement(line)
            contexts = [TARGET_ENV | {"extra": e} for e in extras or {""}]
            if child.marker is None or any(child.marker.evaluate(c) for c in contexts):
                queue.append(child)
    return found


def _pip_base(target: Path) -> list[str]:
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += ["--python-version", PYTHON_VERSION, "--only-binary=:all:"]
    command += ["--cache-dir", str(cache_root() / "pip")]
    return command


def _record_sizes(target: Path) -> dict[str, int]:
    """Installed bytes per distribution, from the RECORD files pip wrote into target."""
    sizes: dict[str, int] = {}
    for info in target.glob("*.dist-info"):
        name = canonical(info.name.removesuffix(".dist-info").rsplit("-", 1)[0])
        total = 0
        record = info / "RECORD"
        if record.is_file():
            for row in record.read_text().splitlines():
                relative = row.split(",", 1)[0]
                file = target / relative
                if relative and file.is_file():
                    total += file.stat().st_size
        sizes[name] = total
    return sizes


def pip_target(
    requirements: list[str], *, no_deps: bool, download: bool, report: Callable[[str], None]
) -> dict[str, Any] | None:
    """Install requirements for the Lambda platform into a scratch folder and measure it.

    Cached by the requirement set; with download=False only the cache answers (None if empty).
    """
    key_text = json.dumps([sorted(requirements), no_deps, PLATFORMS, PYTHON_VERSION])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cached = cache_root() / "size" / f"{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text()) | {"cached": True}
    if not download:
        return None
    with tempfile.TemporaryDirectory(prefix="onnxlift-size-") as scratch:
        target = Path(scratch) / "target"
        command = _pip_base(target) + (["--no-deps"] if no_deps else []) + requirements
        report(f"  size: pip install --target ({len(requirements)} requirements) ...")
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"pip failed ({done.returncode}): {done.stderr[-1500:]}")
        packages = _record_sizes(target)
        result = {
            "bytes": dir_bytes(target),
            "packages": dict(sorted(packages.items(), key=lambda kv: -kv[1])),
            "requirements": requirements,
            "command": " ".join(
                ["pip", *command[3 : command.index("--cache-dir")]]
                + (["--no-deps"] if no_deps else [])
                + ["<requirements>"]
            ),
        }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result | {"cached": False}


def local_estimate(names: Iterable[str]) -> dict[str, Any]:
    """Installed bytes of these distributions in the running environment (not the Lambda
    platform: a stand-in when no download is allowed)."""
    packages: dict[str, int] = {}
    for name in names:
        try:
            packages[canonical(name)] = dist_bytes(md.distribution(name))
        except md.PackageNotFoundError:
            packages[canonical(name)] = 0
    return {
        "bytes": sum(packages.values()),
        "packages": dict(sorted(packages.items(), key=lambda kv: -kv[1])),
    }


def run_size(
    *,
    root: Path,
    artifact_folder: Path,
    weights_dir: Path | None,
    download: bool,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    requirements = [
        pin.requirement
        for pin in read_pins(root / "functions" / "inference" / "requirements.txt").values()
    ]
    code = dir_bytes(root / "functions" / "inference" / "handler.py") + sum(
        p.stat().st_size for p in (root / "layers" / "runtime" / "onnxlift_serving").glob("*.py")
    )
    model_bytes = dir_bytes(artifact_folder)
    results: dict[str, Any] = {"platforms": list(PLATFORMS), "python_version": PYTHON_VERSION}

    torch_closure = local_closure(TORCH_ROOTS) if weights_dir is not None else {}
    torch_pins = [
        f"{name}=={version}"
        for name, version in sorted(torch_closure.items())
        if name not in SEPARATE and not NEVER.match(name) and version != "missing"
    ]
    try:
        serving_deps = pip_target(requirements, no_deps=True, download=download, report=report)
        torch_deps = (
            pip_target(torch_pins, no_deps=True, download=download, report=report)
            if weights_dir is not None
            else None
        )
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        report(f"  size: pip install failed, falling back to the local estimate: {exc}")
        serving_deps = torch_deps = None
        results["pip_error"] = str(exc)[-500:]

    if serving_deps is None or (weights_dir is not None and torch_deps is None):
        method = "local environment estimate (no download in this mode, nothing cached)"
        serving_deps = local_estimate(local_closure(requirements))
        torch_deps = local_estimate(n for n in torch_closure if n not in SEPARATE)
    else:
        method = "pip install --target for the Lambda platform"
    results["method"] = method

    results["onnxlift"] = {
        "dependencies_bytes": serving_deps["bytes"],
        "model_bytes": model_bytes,
        "code_bytes": code,
        "total_bytes": serving_deps["bytes"] + model_bytes + code,
        "packages": serving_deps["packages"],
        "requirements": requirements,
        "cached": serving_deps.get("cached"),
        "command": serving_deps.get("command"),
    }
    if weights_dir is not None and torch_deps is not None:
        try:
            torch_dist = md.distribution("torch")
            torch_bytes, torch_version = dist_bytes(torch_dist), torch_dist.version
        except md.PackageNotFoundError:
            torch_bytes, torch_version = 0, "missing"
        weights = dir_bytes(weights_dir)
        results["pytorch"] = {
            "dependencies_bytes": torch_deps["bytes"] + torch_bytes,
            "torch_bytes": torch_bytes,
            "torch_version": torch_version,
            "torch_source": "the CPU build installed in this environment (RECORD)",
            "model_bytes": weights,
            "total_bytes": torch_deps["bytes"] + torch_bytes + weights,
            "packages": {"torch": torch_bytes, **torch_deps["packages"]},
            "requirements": [*torch_pins, f"torch=={torch_version} (CPU build)"],
            "cached": torch_deps.get("cached"),
            "command": torch_deps.get("command"),
        }
        report(
            f"  size: onnxlift {results['onnxlift']['total_bytes'] / 1e6:.0f} MB, "
            f"PyTorch {results['pytorch']['total_bytes'] / 1e6:.0f} MB ({method})"
        )
    return results
