"""INT8 quantization with onnxruntime.quantization, driven by the model's spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxlift.errors import BuildError
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


class _FeedsReader:
    """onnxruntime's CalibrationDataReader over a list of graph feeds."""

    def __init__(self, feeds: list[dict[str, Any]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, Any] | None:
        return next(self._feeds, None)


def quantize_static_qdq(
    source: Path, target: Path, spec: QuantizationSpec, calibration: list[dict[str, Any]]
) -> Path:
    """Static INT8 in QDQ format: activation scales fixed from calibration data. The fit for
    MLPs and CNNs, whose activation ranges are stable; QDQ keeps the graph portable."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if not calibration:
        raise BuildError("static quantization needs calibration data from the model's source")
    excluded = [*spec.exclude_nodes, *nodes_of_types(source, spec.exclude_op_types)]
    quantize_static(
        model_input=str(source),
        model_output=str(target),
        calibration_data_reader=_FeedsReader(calibration),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=spec.per_channel,
        reduce_range=spec.reduce_range,
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return target
