"""An ONNX file the user already has: checked, optionally quantized, served as it is.

Checks before anything runs it: onnx.checker (full), a supported opset, external data only
inside the file's own folder, and no pickle anywhere in what would ship. Parity compares the
served graph with the original file on the user's sample inputs (`samples.npz`, loaded with
allow_pickle=False) or, without them, on seeded random inputs shaped like the signature.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxlift_serving.protocol import NUMPY_TO_DATATYPE, TensorSpec

from onnxlift.errors import BuildError
from onnxlift.sources import ModelSource

MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()
PICKLE_PROTOCOLS = {2, 3, 4, 5}
SAMPLE_BATCH, SAMPLE_DIM, SAMPLE_COUNT = 4, 8, 16


def is_pickle(path: Path) -> bool:
    """A pickle stream, or a zip holding one (torch.save's format)."""
    with path.open("rb") as handle:
        head = handle.read(2)
    if len(head) == 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return True
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith((".pkl", "data.pkl")) for n in archive.namelist())
    return path.suffix in (".pkl", ".pickle", ".joblib")


def check_onnx_file(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    if is_pickle(path):
        raise BuildError(f"{path} is a pickle, not ONNX: onnxlift never unpickles anything")
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BuildError(f"{path}: not a valid ONNX model: {exc}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BuildError(f"{path}: opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}")
    folder = path.parent.resolve()
    for location in external_data_files(model):
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise BuildError(f"{path}: external data '{location}' lies outside the model's folder")
        if not target.is_file():
            raise BuildError(f"{path}: external data file '{location}' is missing")
        if is_pickle(target):
            raise BuildError(f"{path}: external data '{location}' is a pickle")
    return model


def external_data_files(model: onnx.ModelProto) -> set[str]:
    return {
        entry.value
        for tensor in model.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }


def signature(values: Any) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        numpy_type = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        datatype = "BYTES" if numpy_type.kind in "OSU" else NUMPY_TO_DATATYPE[numpy_type.name]
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, datatype, shape))
    return specs


def sample_inputs(
    inputs: list[TensorSpec], model: onnx.ModelProto, seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    samples = {}
    for spec in inputs:
        shape = [SAMPLE_COUNT] + [d if d > 0 else SAMPLE_DIM for d in spec.shape[1:]]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(types[spec.name])
        if dtype.kind == "f":
            samples[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            samples[spec.name] = rng.integers(0, 10, size=shape).astype(dtype)
        elif dtype.kind == "b":
            samples[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise BuildError(f"input '{spec.name}': give samples.npz for {dtype} inputs")
    return samples


def onnx_file_source(spec: Any) -> ModelSource:
    path = spec.folder / spec.raw.get("source", {}).get("file", "model.onnx")
    model = check_onnx_file(path)
    inputs, outputs = signature(model.graph.input), signature(model.graph.output)
    samples_file = spec.folder / "samples.npz"
    if samples_file.is_file():
        with np.load(samples_file, allow_pickle=False) as data:
            parity_inputs = {k: data[k] for k in data.files}
    else:
        parity_inputs = sample_inputs(inputs, model)
    from onnxlift_serving.session import create_session

    session = create_session(path)
    names = [o.name for o in outputs]
    reference = dict(zip(names, session.run(names, parity_inputs), strict=True))

    def export(target: Path, opset: int) -> None:
        del opset  # the file is served at its own opset
        shutil.copyfile(path, target)
        for location in external_data_files(model):
            (target.parent / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / location, target.parent / location)

    return ModelSource(
        framework="onnx",
        framework_version=f"onnx {onnx.__version__}",
        export=export,
        inputs=inputs,
        outputs=outputs,
        parity_inputs=parity_inputs,
        reference=reference,
        calibration=[
            {k: v[i : i + 1] for k, v in parity_inputs.items()} for i in range(SAMPLE_COUNT)
        ],
    )
