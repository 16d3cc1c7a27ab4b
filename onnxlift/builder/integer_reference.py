"""An exact integer reference for dynamically quantized graphs, to check onnxruntime against.

Two views of the same model:
* `matmul_checks`: every DynamicQuantizeLinear -> MatMulInteger pair, recomputed in numpy with
  the ONNX semantics (int64 sums cannot saturate) from the tensors the served graph saw;
* `exact_integer_model`: the graph with each MatMulInteger (and each QAttention's Q/K/V
  projection) replaced by the same arithmetic in float64 (exact for these magnitudes), so no
  integer kernel of any CPU is involved.
A served model whose integer kernels saturate fails both; one that sums exactly passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving.session import create_session

__all__ = [
    "MatMulCheck",
    "dynamic_quantize_linear",
    "exact_integer_model",
    "matmul_checks",
    "matmul_integer",
]


def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """ONNX DynamicQuantizeLinear: u8 with a range that includes 0, round half to even."""
    x = np.asarray(x, dtype=np.float32)
    x_min = np.float32(min(0.0, float(x.min())))
    x_max = np.float32(max(0.0, float(x.max())))
    scale = np.float32((x_max - x_min) / np.float32(255))
    if scale == 0:
        return np.zeros(x.shape, np.uint8), scale, np.uint8(0)
    zero_point = np.uint8(np.clip(np.rint(np.float32(0) - x_min / scale), 0, 255))
    q = np.clip(np.rint(x / scale) + zero_point, 0, 255).astype(np.uint8)
    return q, scale, zero_point


def matmul_integer(
    a: np.ndarray, b: np.ndarray, a_zero: np.ndarray | int = 0, b_zero: np.ndarray | int = 0
) -> np.ndarray:
    """ONNX MatMulInteger summed in int64: the answer no 16-bit intermediate may change."""
    wide_a = a.astype(np.int64) - np.asarray(a_zero, dtype=np.int64)
    wide_b = b.astype(np.int64) - np.asarray(b_zero, dtype=np.int64)
    return np.matmul(wide_a, wide_b)


@dataclass(frozen=True)
class MatMulCheck:
    node: str
    elements: int
    quantize_mismatches: int  # u8 activations where onnxruntime and numpy round differently
    max_abs_error: int  # |onnxruntime - numpy| over the int32 products, on onnxruntime's u8
    max_abs_value: int  # largest |product sum|, for scale


def _pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    producers = {o: n for n in model.graph.node for o in n.output}
    pairs = []
    for node in model.graph.node:
        quantize = producers.get(node.input[0]) if node.op_type == "MatMulInteger" else None
        if quantize is not None and quantize.op_type == "DynamicQuantizeLinear":
            pairs.append((quantize, node))
    return pairs


def matmul_checks(
    model: onnx.ModelProto, feeds: list[Mapping[str, np.ndarray]]
) -> list[MatMulCheck]:
    """Run `model` through the serving session factory with every quantize/matmul tensor
    exposed, and compare each MatMulInteger with numpy's exact sum."""
    pairs = _pairs(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    exposed = [out for q, m in pairs for out in (q.input[0], q.output[0], q.output[2], m.output[0])]
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in exposed)
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    session = create_session(probe.SerializeToString())
    totals: dict[str, list[int]] = {m.name: [0, 0, 0, 0] for _, m in pairs}
    for feed in feeds:
        values = dict(zip(exposed, session.run(exposed, dict(feed)), strict=True))
        for quantize, matmul in pairs:
            x, served_q = values[quantize.input[0]], values[quantize.output[0]]
            served_zero, served_y = values[quantize.output[2]], values[matmul.output[0]]
            numpy_q, _, _ = dynamic_quantize_linear(x)
            weight = initializers[matmul.input[1]]
            weight_zero = initializers[matmul.input[3]] if len(matmul.input) > 3 else 0
            exact = matmul_integer(served_q, weight, served_zero, weight_zero)
            row = totals[matmul.name]
            row[0] += exact.size
            row[1] += int((numpy_q != served_q).sum())
            row[2] = max(row[2], int(np.abs(served_y.astype(np.int64) - exact).max()))
            row[3] = max(row[3], int(np.abs(exact).max()))
    return [MatMulCheck(name, *row) for name, row in totals.items()]


def _exact_matmul_integer(
    node: onnx.NodeProto, initializers: Mapping[str, np.ndarray]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A MatMulInteger as a float64 MatMul of the same integers, cast back to int32."""
    tag = f"{node.name or node.output[0]}_exact"
    weight = initializers[node.input[1]].astype(np.float64)
    if len(node.input) > 3 and node.input[3]:
        weight = weight - initializers[node.input[3]].astype(np.float64)
    a, nodes = _centered(node.input[0], node.input[2] if len(node.input) > 2 else "", tag)
    nodes.append(helper.make_node("MatMul", [a, f"{tag}_weight"], [f"{tag}_y"]))
    nodes.append(helper.make_node("Cast", [f"{tag}_y"], [node.output[0]], to=TensorProto.INT32))
    return nodes, [numpy_helper.from_array(weight, f"{tag}_weight")]


def _centered(quantized: str, zero: str, tag: str) -> tuple[str, list[onnx.NodeProto]]:
    """float64 (quantized - zero): the u8 activations as exact numbers."""
    a = f"{tag}_a"
    nodes = [helper.make_node("Cast", [quantized], [a], to=TensorProto.DOUBLE)]
    if zero:
        nodes.append(helper.make_node("Cast", [zero], [f"{tag}_a_zero"], to=TensorProto.DOUBLE))
        nodes.append(helper.make_node("Sub", [a, f"{tag}_a_zero"], [f"{tag}_a_centered"]))
        a = f"{tag}_a_centered"
    return a, nodes


def _exact_qattention(
    node: onnx.NodeProto, initializers: Mapping[str, np.ndarray]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A QAttention as its integer Q/K/V projection summed in float64, scaled as onnxruntime
    scales it (float(sum) x input scale x weight scale), then FP32 Attention on those Q/K/V
    with an identity projection (one exact product per output) and the node's bias, mask and
    attributes: the attention arithmetic after the projection is FP32 in both."""
    # QAttention inputs: input, weight, bias, input_scale, weight_scale, mask_index,
    # input_zero_point, weight_zero_point, past
    inputs = [*node.input, *[""] * (9 - len(node.input))]
    tag = f"{node.name or node.output[0]}_exact"
    weight = initializers[inputs[1]].astype(np.float64)
    if inputs[7]:
        weight = weight - initializers[inputs[7]].astype(np.float64)
    a, nodes = _centered(inputs[0], inputs[6], tag)
    qkv = [f"{tag}_{n}" for n in ("sum", "sum32", "scale", "qkv")]
    nodes += [
        helper.make_node("MatMul", [a, f"{tag}_weight"], [qkv[0]]),
        helper.make_node("Cast", [qkv[0]], [qkv[1]], to=TensorProto.FLOAT),  # |sum| < 2**24
        helper.make_node("Mul", [inputs[3], inputs[4]], [qkv[2]]),
        helper.make_node("Mul", [qkv[1], qkv[2]], [qkv[3]]),
    ]
    width = weight.shape[1]
    identity = np.eye(width, dtype=np.float32)
    attention = helper.make_node(
        "Attention",
        [qkv[3], f"{tag}_identity", inputs[2], inputs[5]],
        list(node.output),
        name=f"{tag}_attention",
        domain="com.microsoft",
    )
    attention.attribute.extend(node.attribute)
    nodes.append(attention)
    added = [numpy_helper.from_array(weight, f"{tag}_weight")]
    return nodes, [*added, numpy_helper.from_array(identity, f"{tag}_identity")]


_EXACT = {"MatMulInteger": _exact_matmul_integer, "QAttention": _exact_qattention}


def exact_integer_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every MatMulInteger computed as a float64 MatMul of the same integers, and
    every QAttention's projection likewise (then FP32 attention, as onnxruntime does it)."""
    exact = onnx.ModelProto()
    exact.CopyFrom(model)
    initializers = {i.name: numpy_helper.to_array(i) for i in exact.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for node in exact.graph.node:
        replace = _EXACT.get(node.op_type)
        if replace is None or node.input[1] not in initializers:
            nodes.append(node)
            continue
        new_nodes, new_tensors = replace(node, initializers)
        nodes += new_nodes
        added += new_tensors
    del exact.graph.node[:]
    exact.graph.node.extend(nodes)
    used = {name for node in nodes for name in node.input}
    kept = [i for i in exact.graph.initializer if i.name in used]
    del exact.graph.initializer[:]
    exact.graph.initializer.extend([*kept, *added])
    return exact
