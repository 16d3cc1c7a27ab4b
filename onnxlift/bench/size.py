"""Deployable size: the function's dependencies installed for the Lambda platform plus the
model, against the same for a PyTorch-based function. Installed bytes are apparent sizes of the
files pip wrote (RECORD), not wheel sizes. Cached under ~/.cache/onnxlift-bench by requirement
set; --quick never downloads: the cache answers, or else the running environment's installed
files stand in for both sides, and the method says so.

- pip install --target for manylinux_2_28 and manylinux2014 x86_64, Python 3.12, wheels only:
  onnxruntime 1.32 ships only manylinux_2_28 wheels, which the Lambda Python 3.12 image
  (Amazon Linux 2023, glibc 2.34) takes.
- onnxlift: the function's hashed lock, pruned as its Dockerfile prunes it
  (functions/inference/prune.py), + the artifact folder + handler and serving code, with the
  bytecode the image compiles.
- PyTorch: sentence-transformers' closure at the versions that produced the parity reference,
  pinned, --no-deps, except torch: PyPI's Linux torch is a CUDA build pulling GBs of nvidia-*
  wheels and the CPU build lives on the PyTorch index, which the bench does not reach; it
  counts the CPU build installed here, the wheel a careful user picks. + the weights folder.
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

from onnxlift.bench.coldstart import stage_task_root
from onnxlift.lockfile import canonical, read_pins

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
PYTHON_VERSION = "3.12"
TARGET_ENV = {  # markers as on the Lambda platform
    "python_version": PYTHON_VERSION,
    "python_full_version": f"{PYTHON_VERSION}.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
SEPARATE = "torch"  # counted from the CPU build, never downloaded from PyPI
NEVER = re.compile(r"^(nvidia-.*|triton)$")
FUNCTION = Path("functions/inference")
RUNTIME = Path("layers/runtime")
Report = Callable[[str], None]


def _bytes(files: Iterable[Path]) -> int:
    return sum(f.stat().st_size for f in files if f.is_file())


def dir_bytes(path: Path) -> int:
    """Apparent size of every regular file under path (or of path itself)."""
    return _bytes(
        [path] if path.is_file() else (Path(d) / n for d, _, ns in os.walk(path) for n in ns)
    )


def _installed(name: str) -> tuple[int, str]:
    """Bytes and version of an installed distribution, (0, "missing") if none."""
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return 0, "missing"
    return _bytes(Path(str(dist.locate_file(f))) for f in dist.files or []), dist.version


def local_closure(roots: Iterable[str]) -> dict[str, str]:
    """Name -> version of the roots and everything they require, from installed metadata,
    markers evaluated for the Lambda platform."""
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
        contexts = [TARGET_ENV | {"extra": e} for e in extras or {""}]
        for child in map(Requirement, dist.requires or []):
            if child.marker is None or any(child.marker.evaluate(c) for c in contexts):
                queue.append(child)
    return found


def _by_size(packages: dict[str, int]) -> dict[str, int]:
    return dict(sorted(packages.items(), key=lambda kv: -kv[1]))


def pip_target(
    requirements: list[str],
    download: bool,
    report: Report,
    prune: Callable[[Path], int] | None = None,
    prune_patterns: Iterable[str] = (),
) -> dict[str, Any] | None:
    """Install requirements (--no-deps) for the Lambda platform into a scratch folder, `prune`
    it as the image does, and measure it; cached by the requirement set and the prune
    patterns; without download only the cache answers."""
    key = json.dumps(
        [sorted(requirements), True, PLATFORMS, PYTHON_VERSION, list(prune_patterns)]
    ).encode()  # True: no-deps
    cache = Path(os.environ.get("ONNXLIFT_BENCH_CACHE") or Path.home() / ".cache/onnxlift-bench")
    cached = cache / "size" / f"{hashlib.sha256(key).hexdigest()[:16]}.json"
    if cached.is_file():
        return json.loads(cached.read_text()) | {"cached": True}
    if not download:
        return None
    with tempfile.TemporaryDirectory(prefix="onnxlift-size-") as scratch:
        target = Path(scratch) / "target"
        command = ["install", "--quiet", "--target", str(target)]
        command += [arg for p in PLATFORMS for arg in ("--platform", p)]
        command += ["--python-version", PYTHON_VERSION, "--only-binary=:all:", "--no-deps"]
        report(f"  size: pip install --target ({len(requirements)} requirements) ...")
        pip = [sys.executable, "-m", "pip", *command, "--cache-dir", str(cache / "pip")]
        done = subprocess.run([*pip, *requirements], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"pip failed ({done.returncode}): {done.stderr[-1500:]}")
        pruned = prune(target) if prune is not None else 0
        packages = {}
        for info in target.glob("*.dist-info"):
            rows = (info / "RECORD").read_text().splitlines() if (info / "RECORD").is_file() else []
            name = canonical(info.name.removesuffix(".dist-info").rsplit("-", 1)[0])
            packages[name] = _bytes(target / f for row in rows if (f := row.split(",", 1)[0]))
        result = {"bytes": dir_bytes(target), "packages": _by_size(packages)}
        result["pruned_bytes"] = pruned
        result |= {
            "requirements": requirements,
            "command": " ".join(["pip", *command, "<requirements>"]),
        }
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(result, indent=2))
    return result | {"cached": False}


def local_estimate(names: Iterable[str]) -> dict[str, Any]:
    """Installed bytes of these distributions in the running environment, a stand-in for the
    Lambda platform's when nothing may be downloaded."""
    packages = {canonical(name): _installed(name)[0] for name in names}
    return {"bytes": sum(packages.values()), "packages": _by_size(packages)}


def run_size(
    root: Path, artifact: Path, weights: Path | None, download: bool, report: Report
) -> dict[str, Any]:
    lock = read_pins(root / FUNCTION / "requirements.txt").values()
    requirements = [pin.requirement for pin in lock]
    closure = local_closure(["sentence-transformers"]) if weights is not None else {}
    pins = [
        f"{name}=={version}"
        for name, version in sorted(closure.items())
        if name != SEPARATE and not NEVER.match(name) and version != "missing"
    ]
    results: dict[str, Any] = {"platforms": list(PLATFORMS), "python_version": PYTHON_VERSION}
    serving = torch = None
    image_prune = load_image_prune(root)
    try:
        serving = pip_target(requirements, download, report, image_prune.prune, image_prune.PRUNED)
        torch = pip_target(pins, download, report) if weights is not None else None
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        report(f"  size: pip install failed, falling back to the local estimate: {exc}")
        serving, results["pip_error"] = None, str(exc)[-500:]
    if serving is None or (weights is not None and torch is None):
        results["method"] = (
            "local environment estimate (no download in this mode, nothing cached; unpruned)"
        )
        # The lock is the image's whole install (--no-deps): its names, not their closure.
        serving = local_estimate(r.split("==", 1)[0] for r in requirements)
        torch = local_estimate(n for n in closure if n != SEPARATE)
    else:
        results["method"] = (
            "pip install --target for the Lambda platform; code: the handler and serving "
            "package with the bytecode the image compiles"
        )
    with tempfile.TemporaryDirectory(prefix="onnxlift-task-") as task:
        # handler and serving package with their bytecode, as the image's task root holds them
        staged, _ = stage_task_root(root / FUNCTION / "handler.py", root / RUNTIME, Path(task))
        code = dir_bytes(staged)
    model = dir_bytes(artifact)
    results["onnxlift"] = {
        "dependencies_bytes": serving["bytes"],
        "model_bytes": model,
        "code_bytes": code,
        "total_bytes": serving["bytes"] + model + code,
        "packages": serving["packages"],
        "requirements": requirements,
        "cached": serving.get("cached"),
        "command": serving.get("command"),
        "pruned_bytes": serving.get("pruned_bytes", 0),
    }
    if weights is not None and torch is not None:
        results["pytorch"] = _pytorch(torch, weights, pins)
        totals = [results[k]["total_bytes"] / 1e6 for k in ("onnxlift", "pytorch")]
        method = results["method"]
        report(f"  size: onnxlift {totals[0]:.0f} MB, PyTorch {totals[1]:.0f} MB ({method})")
    return results


def load_image_prune(root: Path) -> Any:
    """functions/inference/prune.py: what the image's Dockerfile deletes after pip install."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_prune", root / FUNCTION / "prune.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pytorch(deps: dict[str, Any], weights: Path, pins: list[str]) -> dict[str, Any]:
    """The PyTorch function: its dependencies plus torch's CPU build from this environment."""
    torch, version = _installed(SEPARATE)
    dependencies, model = deps["bytes"] + torch, dir_bytes(weights)
    return {
        "dependencies_bytes": dependencies,
        "torch_bytes": torch,
        "torch_version": version,
        "torch_source": "the CPU build installed in this environment (RECORD)",
        "model_bytes": model,
        "total_bytes": dependencies + model,
        "packages": {"torch": torch, **deps["packages"]},
        "requirements": [*pins, f"torch=={version} (CPU build)"],
        "cached": deps.get("cached"),
        "command": deps.get("command"),
    }
