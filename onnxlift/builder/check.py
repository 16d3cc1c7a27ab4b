"""Structural checks on an exported graph before anything else trusts it."""

from __future__ import annotations

from pathlib import Path

import onnx

from onnxlift.errors import BuildError


def check_model(
    path: Path,
    *,
    expected_inputs: list[str],
    expected_outputs: list[str],
    optional_outputs: tuple[str, ...] = (),
) -> onnx.ModelProto:
    """onnx.checker, the I/O signature, and no external data outside the model's own folder."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise BuildError(f"{path}: onnx.checker failed: {exc}") from exc
    model = onnx.load(str(path), load_external_data=False)

    folder = path.parent.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if folder not in target.parents:
                raise BuildError(
                    f"{path}: initializer {tensor.name} points outside its folder: {location}"
                )

    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if sorted(inputs) != sorted(expected_inputs):
        raise BuildError(f"{path}: graph inputs {inputs}, expected {expected_inputs}")
    if not set(expected_outputs) <= set(outputs) <= set(expected_outputs) | set(optional_outputs):
        raise BuildError(f"{path}: graph outputs {outputs}, expected {expected_outputs}")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def external_data_files(model: onnx.ModelProto) -> set[str]:
    """The files (relative to the .onnx file) that the model's tensors are stored in."""
    return {
        entry.value
        for tensor in external_tensors(model)
        for entry in tensor.external_data
        if entry.key == "location"
    }


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor kept outside the .onnx file: initializers and attribute tensors (a
    Constant's value), in the main graph and in every subgraph (If, Loop, Scan bodies)."""
    from onnx.external_data_helper import _get_all_tensors

    return [t for t in _get_all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]
