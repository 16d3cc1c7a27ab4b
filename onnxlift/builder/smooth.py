"""SmoothQuant-style migration in front of each fused Attention, so that it can be quantized
(QAttention) within the parity gate.

A QAttention quantizes its input per call with one u8 scale over the whole tensor; a few input
channels of BERT-like layers run 10-100x wider than the rest and take most of that range.
For each Attention, channel k of its input is divided by

    s_k = max|x_k| ** alpha / max|W_k| ** (1 - alpha)

(a Mul kept in FP32, max|x_k| over the calibration inputs) and row k of its Q/K/V weight is
multiplied by s_k: the same FP32 function, a narrower activation range, the difficulty moved
into the weights, which are quantized per output column (Xiao et al., SmoothQuant, 2023).
`alpha` is per Attention (`[quantization] attention_smoothing` in model.toml); s is normalised
to a geometric mean of 1 so the weights' overall scale does not move.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxlift_serving.session import create_session

from onnxlift.errors import BuildError

__all__ = ["SMOOTH_SUFFIX", "smooth_attention"]

SMOOTH_SUFFIX = "_smooth_inverse"  # the Mul in front of each Attention (kept FP32)
_FLOOR = 1e-5  # no division by a channel that never fired


def _input_peaks(
    model: onnx.ModelProto, attention: list[onnx.NodeProto], feeds: Sequence[dict[str, np.ndarray]]
) -> list[np.ndarray]:
    """max|x_k| per channel of each Attention's input over `feeds`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n.input[0]) for n in attention)
    session = create_session(probe.SerializeToString())
    peaks: list[np.ndarray | None] = [None] * len(attention)
    for feed in feeds:
        for i, x in enumerate(session.run(None, feed)):
            flat = np.abs(x).reshape(-1, x.shape[-1]).max(0)
            previous = peaks[i]
            peaks[i] = flat if previous is None else np.maximum(previous, flat)
    return [p if p is not None else np.zeros(0) for p in peaks]


def smooth_attention(
    source: Path, target: Path, feeds: Sequence[dict[str, np.ndarray]], alphas: Sequence[float]
) -> list[str]:
    """Write `target`, `source` with each Attention's input smoothed by its alpha; return the
    Muls' names (to keep in FP32 when quantizing)."""
    model = onnx.load(str(source))
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    if len(alphas) != len(attention):
        raise BuildError(
            f"quantization.attention_smoothing has {len(alphas)} alphas; the fused graph has "
            f"{len(attention)} Attention nodes (one alpha each)"
        )
    if not feeds:
        raise BuildError("quantization.attention_smoothing needs calibration inputs")
    peaks = _input_peaks(model, attention, feeds)
    initializers = {i.name: i for i in model.graph.initializer}
    muls = []
    for index, (node, peak, alpha) in enumerate(zip(attention, peaks, alphas, strict=True)):
        if node.input[1] not in initializers:
            raise BuildError(
                f"Attention '{node.name}': its Q/K/V weight is computed, not stored; the "
                "smoothing can only rescale a weight the graph holds"
            )
        weight = numpy_helper.to_array(initializers[node.input[1]])
        scale = np.maximum(peak, _FLOOR) ** alpha / np.maximum(np.abs(weight).max(1), _FLOOR) ** (
            1 - alpha
        )
        scale = (scale / np.exp(np.log(scale).mean())).astype(np.float32)
        initializers[node.input[1]].CopyFrom(
            numpy_helper.from_array(weight * scale[:, None], node.input[1])
        )
        base = node.name or f"Attention_{index}_unnamed"
        inverse, smoothed = f"{base}{SMOOTH_SUFFIX}", f"{base}_smooth_input"
        model.graph.initializer.append(numpy_helper.from_array(1 / scale, inverse))
        muls.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=inverse))
        node.input[0] = smoothed
    nodes = list(model.graph.node)
    for mul, node in zip(muls, attention, strict=True):
        nodes.insert(nodes.index(node), mul)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(target))
    return [m.name for m in muls]
