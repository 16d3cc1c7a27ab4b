"""Where things live in the registry; the one place both the toolkit and the runtime read it.

models/<name>/<version>/model.onnx
models/<name>/<version>/manifest.json
models/<name>/<version>/manifest.sig (signed registries)
models/<name>/<version>/assets/...
models/<name>/aliases/<alias>.json
"""

from __future__ import annotations

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # beside the manifest: onnxlift_serving.signing
ASSETS_DIR = "assets"


def model_prefix(name: str) -> str:
    return f"models/{name}/"


def version_prefix(name: str, version: str) -> str:
    return f"models/{name}/{version}/"


def object_key(name: str, version: str, relative: str) -> str:
    return f"{version_prefix(name, version)}{relative}"


def alias_key(name: str, alias: str) -> str:
    return f"models/{name}/aliases/{alias}.json"
