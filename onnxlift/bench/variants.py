"""Which model files a build holds, and artifact folders for them that the serving code loads.

INT8 is the served artifact (<build>/model.onnx). The build keeps its FP32 export
(<build>/work/model.fp32.onnx) and the FP32 graph after the same transformer optimizer that
precedes quantization (<build>/work/model.fp32.fused.onnx): the fair FP32 to compare with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxlift_serving import layout
from onnxlift_serving.artifact import sha256_file


@dataclass(frozen=True)
class Variant:
    key: str  # int8 | fp32_fused | fp32
    label: str
    path: Path
    parity_key: str | None  # the build manifest's parity entry measured on this very file


def onnx_variants(build_folder: Path) -> list[Variant]:
    """The ONNX files of a build that exist, served INT8 first."""
    candidates = [
        Variant("int8", "INT8 ONNX (served)", build_folder / layout.MODEL_FILE, "int8"),
        Variant(
            "fp32_fused",
            "FP32 ONNX, fused (same optimizer)",
            build_folder / "work" / "model.fp32.fused.onnx",
            None,
        ),
        Variant(
            "fp32", "FP32 ONNX, plain export", build_folder / "work" / "model.fp32.onnx", "fp32"
        ),
    ]
    return [v for v in candidates if v.path.is_file()]


def stage_artifact(build_folder: Path, model: Path, dest: Path, version: str = "bench") -> Path:
    """An artifact folder around `model` (linked, not copied) that load_artifact accepts.

    The manifest is the build's, with the version set and sha256/bytes of `model`; the
    assets are copied (load_artifact refuses assets that resolve outside the folder).
    """
    manifest: dict[str, Any] = json.loads((build_folder / layout.MANIFEST_FILE).read_text())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / layout.MODEL_FILE).symlink_to(model.resolve())
    shutil.copytree(build_folder / layout.ASSETS_DIR, dest / layout.ASSETS_DIR)
    manifest["version"] = version
    manifest["sha256"] = sha256_file(model)
    manifest["bytes"] = model.stat().st_size
    (dest / layout.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return dest
