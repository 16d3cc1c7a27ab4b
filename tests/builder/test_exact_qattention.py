"""The float64 integer reference covers QAttention: its Q/K/V projection summed exactly, then
the same FP32 attention, on a tiny fused graph quantized by onnxruntime's quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving.session import create_session
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxlift.builder.integer_audit import SAFE_S8_WEIGHT, audit_integer_kernels
from onnxlift.builder.integer_reference import exact_integer_model

HIDDEN, HEADS = 16, 2


def qattention_model(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(HIDDEN, 3 * HIDDEN)).astype(np.float32)
    bias = rng.normal(size=(3 * HIDDEN,)).astype(np.float32)
    node = helper.make_node(
        "Attention",
        ["x", "weight", "bias", "mask"],
        ["y"],
        name="Attention_0",
        domain="com.microsoft",
        num_heads=HEADS,
    )
    graph = helper.make_graph(
        [node],
        "attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN]),
            helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", HIDDEN])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    fp32, int8 = folder / "attention.onnx", folder / "attention.int8.onnx"
    onnx.save(model, fp32)
    quantize_dynamic(
        str(fp32),
        str(int8),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,  # as minilm's spec: 7-bit weights
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    return int8


def test_qattention_equals_its_exact_integer_graph(tmp_path: Path) -> None:
    path = qattention_model(tmp_path)
    model = onnx.load(str(path))
    assert "QAttention" in {n.op_type for n in model.graph.node}
    audit = audit_integer_kernels(path)
    assert audit["integer_weights"] == 1
    assert audit["s8_weight_max_abs"] <= SAFE_S8_WEIGHT  # reduce_range reaches QAttention too
    exact = exact_integer_model(model)
    assert not {"QAttention", "MatMulInteger"} & {n.op_type for n in exact.graph.node}
    served, reference = create_session(path), create_session(exact.SerializeToString())
    rng = np.random.default_rng(0)
    for batch, seq in ((1, 5), (3, 7)):
        x = (rng.normal(size=(batch, seq, HIDDEN)) * 4).astype(np.float32)
        mask = np.ones((batch, seq), np.int32)
        mask[-1, seq - 2 :] = 0  # padding in the last row
        got = served.run(None, {"x": x, "mask": mask})[0]
        want = reference.run(None, {"x": x, "mask": mask})[0]
        assert float(np.abs(got - want).max()) <= 1e-5
        # not trivially equal: the integer projection differs from the FP32 one
        fp32 = create_session(tmp_path / "attention.onnx").run(None, {"x": x, "mask": mask})[0]
        assert float(np.abs(got - fp32).max()) > 1e-4
