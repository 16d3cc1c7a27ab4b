"""Small ONNX files a careless user or an attacker might hand `onnxlift add`, built with onnx's
helpers so every test makes exactly the file it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "constant_of_huge_shape",
    "external_data_model",
    "point_external_data",
    "runaway_loop",
    "save",
    "unknown_domain",
]

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])


def save(model: onnx.ModelProto, path: Path, *, ir_version: int = 8) -> Path:
    model.ir_version = ir_version
    onnx.save(model, str(path))
    return path


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def runaway_loop(trips: int = 10**12) -> onnx.ModelProto:
    """Valid, and its reference run adds 1 to x `trips` times: hours of work for 200 bytes."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, ["N", 4]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 4]),
        ],
        initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)],
        "spin",
        [X],
        [Y],
        initializer=[
            numpy_helper.from_array(np.array(trips, np.int64), "trips"),
            numpy_helper.from_array(np.array(True), "cond"),
        ],
    )
    return _model(graph)


def constant_of_huge_shape(rows: int = 100_000, cols: int = 100_000) -> onnx.ModelProto:
    """A constant shape whose ConstantOfShape is rows x cols floats (40 GB by default)."""
    shape = numpy_helper.from_array(np.array([rows, cols], np.int64))
    fill = helper.make_tensor("fill", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["shape"], value=shape),
            helper.make_node("ConstantOfShape", ["shape"], ["big"], value=fill),
            helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ],
        "huge",
        [X],
        [Y],
    )
    return _model(graph)


def unknown_domain() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mystery", ["x"], ["y"], domain="com.nobody")], "g", [X], [Y]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.nobody", 1)]
    )


def external_data_model(folder: Path, location: str = "weights.bin") -> tuple[Path, np.ndarray]:
    """model.onnx in `folder` with its weight (4 x 8) in the file `location` beside it."""
    weight = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [X],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = _model(graph)
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path, weight


def point_external_data(path: Path, **entries: str) -> Path:
    """Rewrite the external data entries (location, offset, length) of every initializer."""
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key in entries:
                entry.value = entries[entry.key]
        present = {entry.key for entry in tensor.external_data}
        for key, value in entries.items():
            if key not in present:
                tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path
