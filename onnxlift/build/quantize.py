"""INT8 quantization with onnxruntime.quantization, driven by the model's spec."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxlift.spec import QuantizationSpec


def nodes_of_types(path: Path, op_types: tuple[str, ...]) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in op_types]


def quantize_dynamic_int8(
    source: Path, target: Path, spec: QuantizationSpec, *, extra_fp32_nodes: list[str] = ()
) -> Path:
    """Dynamic INT8 (weights INT8 ahead of time, activations quantized per call): the fit for
    transformer graphs, whose activation ranges vary too much per input for static scales."""
    excluded = [
        *spec.exclude_nodes,
        *nodes_of_types(source, spec.exclude_op_types),
        *extra_fp32_nodes,
    ]
    quantize_dynamic(
        model_input=str(source),
        model_output=str(target),
        weight_type=QuantType.QInt8,
        per_channel=spec.per_channel,
        reduce_range=spec.reduce_range,
        nodes_to_exclude=excluded,
        # After the transformer optimizer, contrib ops defeat ONNX shape inference; without a
        # default the quantizer fails with "Unable to find data type for weight_name=...".
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target
