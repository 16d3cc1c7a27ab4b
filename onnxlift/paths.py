"""Where the toolkit keeps its local state, relative to the project root."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """ONNXLIFT_ROOT, else the nearest folder upwards holding models/ and pyproject.toml."""
    if root := os.environ.get("ONNXLIFT_ROOT"):
        return Path(root).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "models").is_dir() and (folder / "pyproject.toml").is_file():
            return folder
    return here


def state_dir(root: Path | None = None) -> Path:
    """Local stack state (local.json, logs, registry snapshot, API key): ONNXLIFT_STATE_DIR or
    `.onnxlift/`. Tests point it elsewhere to run a stack beside the user's."""
    if state := os.environ.get("ONNXLIFT_STATE_DIR"):
        return Path(state).resolve()
    return (root or project_root()) / ".onnxlift"


def cache_dir(root: Path | None = None) -> Path:
    """Build outputs, keyed by fingerprint, so they are shared by every state dir."""
    return (root or project_root()) / ".onnxlift"


def models_dir(root: Path | None = None) -> Path:
    return (root or project_root()) / "models"


def build_dir(name: str, fingerprint: str, root: Path | None = None) -> Path:
    return cache_dir(root) / "build" / name / fingerprint
