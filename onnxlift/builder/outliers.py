"""Outlier-channel split for feed-forward and merged Q/K/V MatMuls (in the manner of LLM.int8()).

BERT-style encoders carry a few hidden channels whose activations are tens of times larger
than the rest (on all-MiniLM-L6-v2, hidden dim 99 reaches ~28 on [CLS] against a median of
~0.5). Dynamic INT8 uses one activation scale per tensor, so those channels flatten every
other channel to a handful of levels. The split zeroes them in the quantized MatMul and adds
them back through a tiny FP32 MatMul on the gathered channels: exact in FP32, and the
quantized path sees a tame range. The channels are chosen from calibration texts that are
disjoint from the parity set. The merged Q/K/V projections (projections.py) take their own,
usually lower, ratio: their input's peaks are milder, but attention scores amplify what is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxlift.builder.projections import QKV_MATMUL_SUFFIX
from onnxlift.errors import BuildError

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class SplitReport:
    fp32_nodes: list[str]  # helper nodes that must stay out of quantization
    channels: dict[str, list[int]]  # MatMul name -> split input channels


def _split_candidates(
    model: onnx.ModelProto, ratio: float, projection_ratio: float
) -> dict[str, tuple[onnx.NodeProto, float]]:
    """MatMul name -> (node, its ratio): the feed-forward MatMuls at `ratio`, the merged Q/K/V
    projections at `projection_ratio` (either 0 = those left whole)."""
    weights = {i.name for i in model.graph.initializer}
    chosen: dict[str, tuple[onnx.NodeProto, float]] = {}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in weights:
            continue
        feed_forward = "/intermediate/" in n.name or (
            "/output/dense" in n.name and "/attention/" not in n.name
        )
        if feed_forward and ratio:
            chosen[n.name] = (n, ratio)
        elif n.name.endswith(QKV_MATMUL_SUFFIX) and projection_ratio:
            chosen[n.name] = (n, projection_ratio)
    return chosen


def _channel_absmax(
    model: onnx.ModelProto, tensors: list[str], feeds: list[Feeds]
) -> dict[str, np.ndarray]:
    from onnxlift_serving.session import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in outputs:
            probe.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = create_session(probe.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    absmax: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = dict(zip(names, session.run(None, feed), strict=True))
        for name in tensors:
            row = np.abs(values[name].reshape(-1, values[name].shape[-1])).max(axis=0)
            absmax[name] = np.maximum(absmax.get(name, 0.0), row)
    return absmax


def split_outlier_channels(
    source: Path,
    target: Path,
    calibration: list[Feeds],
    *,
    ratio: float,
    max_channels: int,
    projection_ratio: float = 0.0,
) -> SplitReport:
    """Rewrite `source` into `target`; calibration feeds are batch-1 (no padding) graph inputs.
    A channel is split off where its peak exceeds the MatMul's ratio times the median peak."""
    model = onnx.load(str(source))
    initializers = {i.name: i for i in model.graph.initializer}
    candidates = _split_candidates(model, ratio, projection_ratio)
    if not candidates:
        raise BuildError(f"{source}: no feed-forward or Q/K/V MatMuls to split")
    inputs = sorted({n.input[0] for n, _ in candidates.values()})
    absmax = _channel_absmax(model, inputs, calibration)

    before: dict[str, list[onnx.NodeProto]] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    report = SplitReport(fp32_nodes=[], channels={})
    for node, node_ratio in candidates.values():
        x, amax = node.input[0], absmax[node.input[0]]
        peaks = np.argsort(amax)[::-1][:max_channels]
        index = np.sort(peaks[amax[peaks] > node_ratio * np.median(amax)]).astype(np.int64)
        if index.size == 0:
            continue
        tag = node.name.strip("/").replace("/", "_")
        weight = numpy_helper.to_array(initializers[node.input[1]]).copy()
        outlier_rows = weight[index, :].copy()
        weight[index, :] = 0.0
        initializers[node.input[1]].CopyFrom(numpy_helper.from_array(weight, node.input[1]))
        keep = np.ones(weight.shape[0], np.float32)
        keep[index] = 0.0
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(keep, f"{tag}_keep"),
                numpy_helper.from_array(index, f"{tag}_outlier_index"),
                numpy_helper.from_array(outlier_rows, f"{tag}_outlier_weight"),
            ]
        )
        y = node.output[0]
        mask = helper.make_node(
            "Mul", [x, f"{tag}_keep"], [f"{tag}_masked"], name=f"{tag}_keep_mul"
        )
        gather = helper.make_node(
            "Gather",
            [x, f"{tag}_outlier_index"],
            [f"{tag}_outliers"],
            name=f"{tag}_outlier_gather",
            axis=2,
        )
        small = helper.make_node(
            "MatMul",
            [f"{tag}_outliers", f"{tag}_outlier_weight"],
            [f"{tag}_outlier_out"],
            name=f"{tag}_outlier_matmul",
        )
        node.input[0], node.output[0] = f"{tag}_masked", f"{tag}_quantized_out"
        add = helper.make_node(
            "Add", [f"{tag}_quantized_out", f"{tag}_outlier_out"], [y], name=f"{tag}_outlier_add"
        )
        before[node.name], after[node.name] = [mask, gather, small], [add]
        report.fp32_nodes.extend([gather.name, small.name])
        report.channels[node.name] = index.tolist()

    ordered: list[onnx.NodeProto] = []
    for node in list(model.graph.node):
        ordered += [*before.get(node.name, []), node, *after.get(node.name, [])]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return report
