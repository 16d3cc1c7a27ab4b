"""An ONNX file the user already has: checked, optionally quantized, served as it is.

Checks before anything runs it: onnx.checker (full), a supported opset, external data only
inside the file's own folder, and no pickle anywhere in what would ship. Parity compares the
served graph with the original file on the user's sample inputs (`samples.npz`, loaded with
allow_pickle=False) or, without them, on seeded random inputs shaped like the signature.
"""

from __future__ import annotations

import math
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxlift_serving.protocol import NUMPY_TO_DATATYPE, TensorSpec

from onnxlift.builder.check import external_data_files, external_tensors
from onnxlift.errors import BuildError
from onnxlift.sources import ModelSource

MIN_OPSET, MAX_OPSET = 7, onnx.defs.onnx_opset_version()
PICKLE_PROTOCOLS = {2, 3, 4, 5}
SAMPLE_BATCH, SAMPLE_DIM, SAMPLE_COUNT = 4, 8, 16
# What the parity inputs may cost before anything is read or generated: a samples.npz's
# members as they unpack (a zip bomb says so in its directory) and a generated input.
SAMPLES_MAX_BYTES = 256 * 1024 * 1024
GENERATED_MAX_ELEMENTS = 16 * 1024 * 1024


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


def check_onnx_file(path: Path, *, full: bool = True) -> onnx.ModelProto:
    """The file's checks. `full=False` is what `onnxlift add` runs in its own process before
    anything is copied: the protobuf, the opset, external data's place and extent. The full
    onnx.checker (shape inference, which a hostile graph can make slow) runs with the build,
    in the bounded child process."""
    if not path.is_file():
        raise BuildError(f"{path}: no such file")
    if is_pickle(path):
        raise BuildError(f"{path} is a pickle, not ONNX: onnxlift never unpickles anything")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise BuildError(f"{path}: not a valid ONNX model: {exc}") from exc
    if not model.HasField("graph"):
        raise BuildError(f"{path}: not a valid ONNX model: it has no graph (empty or not ONNX)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise BuildError(f"{path}: opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}")
    check_external_data(path, model)
    if full:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:
            raise BuildError(f"{path}: not a valid ONNX model: {exc}") from exc
    return model


def check_external_data(path: Path, model: onnx.ModelProto) -> None:
    """External data lies in the model's folder, in plain files, and every tensor's offset and
    length fall inside its file and match the tensor's size."""
    folder = path.parent.resolve()
    for location in external_data_files(model):
        target = (folder / location).resolve()
        if folder not in target.parents:
            raise BuildError(f"{path}: external data '{location}' lies outside the model's folder")
        if not target.is_file():
            raise BuildError(f"{path}: external data file '{location}' is missing")
        if is_pickle(target):
            raise BuildError(f"{path}: external data '{location}' is a pickle")
    for tensor in external_tensors(model):
        _check_extent(path, folder, tensor)


def _check_extent(path: Path, folder: Path, tensor: onnx.TensorProto) -> None:
    entries = {entry.key: entry.value for entry in tensor.external_data}
    size = (folder / entries.get("location", "")).stat().st_size
    try:
        offset = int(entries.get("offset", 0))
        length = int(entries["length"]) if "length" in entries else size - offset
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (TypeError, ValueError, KeyError):
        raise BuildError(f"{path}: tensor '{tensor.name}' has unreadable external data") from None
    expected = math.prod(tensor.dims) * itemsize  # exact: hostile dims must not wrap around
    if offset < 0 or length != expected or offset + length > size:
        raise BuildError(
            f"{path}: tensor '{tensor.name}' needs {expected:,} bytes of external data; its "
            f"entry points at {length:,} bytes from offset {offset:,} of a {size:,}-byte file"
        )


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
        if np.prod(shape, dtype=np.float64) > GENERATED_MAX_ELEMENTS:
            raise BuildError(
                f"input '{spec.name}' declares {list(spec.shape)}: {SAMPLE_COUNT} samples of it "
                f"are over {GENERATED_MAX_ELEMENTS:,} elements; give --samples"
            )
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


def read_samples(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The user's parity inputs: an .npz without pickles, its unpacked size bounded before any
    member is read, one array per model input with the input's rank and fixed dimensions."""
    if not zipfile.is_zipfile(path):
        raise BuildError("--samples must be an .npz file (numpy.savez)")
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    if unpacked > SAMPLES_MAX_BYTES:
        raise BuildError(
            f"--samples unpacks to {unpacked:,} bytes; the limit is {SAMPLES_MAX_BYTES:,}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:  # pickled objects, a broken member
        raise BuildError(f"--samples cannot be read without pickle: {exc}") from None
    expected = {spec.name: spec for spec in inputs}
    if set(arrays) != set(expected):
        raise BuildError(
            f"--samples holds {sorted(arrays)}; the model's inputs are {sorted(expected)}"
        )
    for name, array in arrays.items():
        shape = expected[name].shape
        same_rank = array.ndim == len(shape)
        if not same_rank or any(d not in (-1, a) for a, d in zip(array.shape, shape, strict=True)):
            raise BuildError(
                f"--samples '{name}' has shape {list(array.shape)}; the input is {list(shape)} "
                "(-1 is any size)"
            )
    return arrays


def onnx_file_source(spec: Any) -> ModelSource:
    path = spec.folder / spec.raw.get("source", {}).get("file", "model.onnx")
    model = check_onnx_file(path)
    inputs, outputs = signature(model.graph.input), signature(model.graph.output)
    samples_file = spec.folder / "samples.npz"
    if samples_file.is_file():
        parity_inputs = read_samples(samples_file, inputs)
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
