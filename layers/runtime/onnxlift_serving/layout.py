"""Where things live in the registry; the one place both the toolkit and the runtime read it.

models/<name>/<version>/model.onnx
models/<name>/<version>/manifest.json
models/<name>/<version>/manifest.sig (signed registries)
models/<name>/<version>/assets/...
models/<name>/<version>/assets/external/... (a model's external data, found from model.onnx)
models/<name>/aliases/<alias>.json
"""

from __future__ import annotations

from pathlib import Path

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # beside the manifest: onnxlift_serving.signing
ASSETS_DIR = "assets"
EXTERNAL_DATA_DIR = "external"  # under ASSETS_DIR: initializers kept outside model.onnx


def weights_bytes(model: Path) -> int:
    """model.onnx and its external data (if any) under assets/external/ beside it."""
    external = model.parent / ASSETS_DIR / EXTERNAL_DATA_DIR
    extra = sum(f.stat().st_size for f in external.rglob("*") if f.is_file())
    return model.stat().st_size + extra


def model_prefix(name: str) -> str:
    return f"models/{name}/"


def version_prefix(name: str, version: str) -> str:
    return f"models/{name}/{version}/"


def object_key(name: str, version: str, relative: str) -> str:
    return f"{version_prefix(name, version)}{relative}"


def alias_key(name: str, alias: str) -> str:
    return f"models/{name}/aliases/{alias}.json"
