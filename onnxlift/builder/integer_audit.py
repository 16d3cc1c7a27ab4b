"""Which integer kernels a quantized graph will run, and whether they can saturate.

x86 CPUs without VNNI multiply u8 activations by s8 weights with vpmaddubsw, which adds each
pair of products in 16 bits with saturation. With every s8 weight in [-64, 64] (reduce_range,
7-bit weights) a pair is at most 2 x 255 x 64 = 32,640 < 32,767: the default kernel is exact
on every CPU, and onnxruntime's precision setting (onnxlift_serving.session) costs nothing.
Wider weights stay exact only through that setting, which moves them to the slower U8U8 path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper
from onnxlift_serving.session import integer_kernel_setting

__all__ = ["SAFE_S8_WEIGHT", "audit_integer_kernels", "integer_weights"]

SAFE_S8_WEIGHT = 64  # 2 * 255 * 64 = 32,640 fits a signed 16-bit pair sum
# op type -> input index of its integer weight
_WEIGHT_INPUT = {
    "MatMulInteger": 1,
    "DynamicQuantizeMatMul": 1,
    "QAttention": 1,  # its Q/K/V projection: the same u8 x s8 kernels
    "MatMulIntegerToFloat": 1,
    "ConvInteger": 1,
    "QLinearMatMul": 3,
    "QLinearConv": 3,
    "QGemm": 3,
    "DequantizeLinear": 0,  # QDQ: the weight's DequantizeLinear feeds a float MatMul/Conv
}


def integer_weights(model: onnx.ModelProto) -> dict[str, Any]:
    """node name -> its integer weight array, for every integer MatMul/Conv/Gemm in `model`."""
    initializers = {i.name: i for i in model.graph.initializer}
    weights = {}
    for node in model.graph.node:
        index = _WEIGHT_INPUT.get(node.op_type)
        if index is None or index >= len(node.input) or node.input[index] not in initializers:
            continue
        tensor = initializers[node.input[index]]
        if tensor.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            weights[node.name or node.output[0]] = numpy_helper.to_array(tensor)
    return weights


def audit_integer_kernels(path: Path) -> dict[str, Any]:
    """The manifest's record of how the integer kernels run this model."""
    model = onnx.load(str(path), load_external_data=False)
    weights = integer_weights(model)
    signed = [w for w in weights.values() if w.dtype.kind == "i"]
    max_abs = max((int(abs(w.astype("int32")).max()) for w in signed if w.size), default=0)
    return {
        "session_config": integer_kernel_setting(),
        "integer_weights": len(weights),
        "s8_weight_max_abs": max_abs,
        # True: exact on every CPU even without the setting; False: exact through it alone.
        "weights_cannot_saturate": max_abs <= SAFE_S8_WEIGHT,
    }
