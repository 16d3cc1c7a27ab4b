"""INT8 quantization with onnxruntime.quantization, driven by the model's spec."""

from __future__ import annotations

from pathlib import Path

from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxlift.spec import QuantizationSpec


def quantize_dynamic_int8(source: Path, target: Path, spec: QuantizationSpec) -> Path:
    """Dynamic INT8 (weights INT8 ahead of time, activations quantized per call): the fit for
    transformer graphs, whose activation ranges vary too much per input for static scales."""
    quantize_dynamic(
        model_input=str(source),
        model_output=str(target),
        weight_type=QuantType.QInt8,
        per_channel=spec.per_channel,
        reduce_range=spec.reduce_range,
        op_types_to_quantize=["MatMul", "Gemm"],
        nodes_to_exclude=list(spec.exclude_nodes),
        extra_options={"MatMulConstBOnly": True},
    )
    return target
