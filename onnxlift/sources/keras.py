"""Keras / TensorFlow -> ONNX through tf2onnx, from a `.keras` file or a SavedModel folder.

Both go the same way: a `.keras` model is exported as a SavedModel first (Keras 3's
`model.export`), then tf2onnx converts the SavedModel's serving signature.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from onnxlift.errors import BuildError
from onnxlift.sources import Exporter, rename_io


def savedmodel_to_onnx(saved_model: Path, path: Path, opset: int) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            str(saved_model),
            "--output",
            str(path),
            "--opset",
            str(opset),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    if result.returncode != 0:
        raise BuildError(f"tf2onnx failed on {saved_model}:\n{result.stderr[-2000:]}")


def keras_exporter(model_path: Path, *, renames: dict[str, str] | None = None) -> Exporter:
    """`model_path`: a `.keras` file or a SavedModel folder. `renames`: graph I/O -> served."""

    def export(path: Path, opset: int) -> None:
        if model_path.is_dir():
            savedmodel_to_onnx(model_path, path, opset)
        else:
            import keras

            model = keras.models.load_model(model_path)
            with tempfile.TemporaryDirectory() as tmp:
                model.export(str(Path(tmp) / "saved_model"), verbose=False)
                savedmodel_to_onnx(Path(tmp) / "saved_model", path, opset)
        if renames:
            rename_io(path, renames)

    return export
