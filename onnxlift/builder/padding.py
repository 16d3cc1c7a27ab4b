"""Zero the padded rows in front of layer-norm-fed MatMuls, so padding sets no scale there.

Dynamic INT8 quantizes each MatMul's input with one scale per call, taken over the whole
tensor: in a padded batch the pad positions' hidden states count too, and on minilm they
lower the batch-16 parity figure well below the batch-1 one. Each row of a MatMul is its own
token, padded keys are masked out of attention and pooling skips them, so multiplying the
input by the attention mask changes no real token's answer in FP32; it only keeps the pads
out of the quantization range.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxlift.errors import BuildError

__all__ = ["PAD_MASK_SUFFIX", "mask_padded_rows"]

PAD_MASK_SUFFIX = "_pad_rows"  # every node this step adds ends so
# Only MatMuls fed by a layer norm are masked: it scales pad rows up to the real rows' range.
# Past a masked projection a pad row holds the bias alone (the feed-forward's second MatMul
# sees GELU of it), and attention gives pad queries a mix of real values: no new peaks.
MASK_SLOT = {"Attention": 3, "MultiHeadAttention": 4}  # their key padding mask input
RENORMALIZING = frozenset(
    {"LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization"}
)


def mask_padded_rows(source: Path, target: Path, mask_input: str = "attention_mask") -> list[str]:
    """Rewrite `source` into `target`; returns the added nodes' names (they stay FP32)."""
    model = onnx.load(str(source))
    graph = model.graph
    if mask_input not in {i.name for i in graph.input}:
        raise BuildError(f"{source}: no graph input '{mask_input}' to mask padded rows with")
    unmasked = [
        n.name
        for n in graph.node
        if n.op_type in MASK_SLOT
        and not (len(n.input) > MASK_SLOT[n.op_type] and n.input[MASK_SLOT[n.op_type]])
    ]
    if unmasked:  # real tokens would attend to pads, whose values the masking changes
        raise BuildError(f"{source}: attention without a padding mask: {unmasked}")
    weights = {i.name for i in graph.initializer}
    producers = {out: n.op_type for n in graph.node for out in n.output}
    matmuls = [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[1] in weights
        and producers.get(n.input[0], "") in RENORMALIZING
    ]
    if not matmuls:
        raise BuildError(f"{source}: no weight MatMul whose input padding could reach")
    mask3d = f"{mask_input}_rows{PAD_MASK_SUFFIX}"
    graph.initializer.append(
        numpy_helper.from_array(np.array([-1], np.int64), f"{mask_input}_axes{PAD_MASK_SUFFIX}")
    )
    front = [
        helper.make_node(
            "Cast",
            [mask_input],
            [f"{mask_input}_float{PAD_MASK_SUFFIX}"],
            name=f"{mask_input}_cast{PAD_MASK_SUFFIX}",
            to=onnx.TensorProto.FLOAT,
        ),
        helper.make_node(
            "Unsqueeze",  # (batch, seq) -> (batch, seq, 1): one factor per row
            [f"{mask_input}_float{PAD_MASK_SUFFIX}", f"{mask_input}_axes{PAD_MASK_SUFFIX}"],
            [mask3d],
            name=f"{mask_input}_unsqueeze{PAD_MASK_SUFFIX}",
        ),
    ]
    masks: dict[str, onnx.NodeProto] = {}  # MatMul input -> its masking Mul (shared)
    for node in matmuls:
        x = node.input[0]
        if x not in masks:
            tag = x.strip("/").replace("/", "_")
            masks[x] = helper.make_node(
                "Mul", [x, mask3d], [f"{tag}{PAD_MASK_SUFFIX}"], name=f"{tag}{PAD_MASK_SUFFIX}"
            )
        node.input[0] = masks[x].output[0]

    ordered = list(front)
    for node in graph.node:
        ordered.append(node)
        ordered += [masks.pop(out) for out in node.output if out in masks]
    del graph.node[:]
    graph.node.extend(ordered)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return [n.name for n in ordered if n.name.endswith(PAD_MASK_SUFFIX)]
