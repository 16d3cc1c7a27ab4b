"""The Q/K/V projections in front of each MultiHeadAttention merged into one MatMul.

With `[export.optimizer] attention = "multihead"` the transformer optimizer leaves the three
projections as plain MatMuls (a fused Attention swallows them, and then they can only be
quantized as a QAttention with no outlier split). Merged, they take one activation
quantization, one integer MatMul and one outlier split per layer; a Split hands the three
parts to the attention under their old names, so the graph answers as before in FP32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxlift.errors import BuildError

__all__ = ["QKV_MATMUL_SUFFIX", "merge_qkv_projections"]

QKV_MATMUL_SUFFIX = "/qkv/MatMul"  # the merged MatMul's name ends so (the outlier split looks)


def _projections(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], weights: set[str]
) -> list[onnx.NodeProto]:
    if len(node.input) < 5 or not node.input[4]:
        # pads must stay out of every real token's attention for padding.py's masking
        raise BuildError(f"{node.name}: a MultiHeadAttention without a key padding mask")
    found = [producers.get(name) for name in node.input[:3]]
    projections = [
        n for n in found if n is not None and n.op_type == "MatMul" and n.input[1] in weights
    ]
    if len(projections) != 3 or len({p.input[0] for p in projections}) != 1:
        raise BuildError(f"{node.name}: its query, key and value are not MatMuls of one input")
    return projections


def merge_qkv_projections(source: Path, target: Path) -> list[str]:
    """Rewrite `source` into `target`; returns the merged MatMuls' names."""
    model = onnx.load(str(source))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    # keyed by first output (unique in a graph; node names need not be)
    replaced: dict[str, list[onnx.NodeProto]] = {}  # first projection -> its replacement
    dropped: set[str] = set()
    old_weights: set[str] = set()
    for node in graph.node:
        if node.op_type != "MultiHeadAttention":
            continue
        projections = _projections(node, producers, set(initializers))
        parts = [numpy_helper.to_array(initializers[p.input[1]]) for p in projections]
        tag = node.name.strip("/").replace("/", "_")
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate(parts, axis=1), f"{tag}_qkv_weight"),
                numpy_helper.from_array(
                    np.array([p.shape[1] for p in parts], np.int64), f"{tag}_qkv_split"
                ),
            ]
        )
        matmul = helper.make_node(
            "MatMul",
            [projections[0].input[0], f"{tag}_qkv_weight"],
            [f"{tag}_qkv"],
            name=f"/{tag}{QKV_MATMUL_SUFFIX}",
        )
        split = helper.make_node(
            "Split",
            [f"{tag}_qkv", f"{tag}_qkv_split"],
            [p.output[0] for p in projections],
            name=f"/{tag}/qkv/Split",
            axis=-1,
        )
        replaced[projections[0].output[0]] = [matmul, split]
        dropped.update(p.output[0] for p in projections)
        old_weights.update(p.input[1] for p in projections)
    if not replaced:
        raise BuildError(f"{source}: no MultiHeadAttention to merge projections for")

    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        first = node.output[0] if node.output else ""
        ordered += replaced.get(first, []) if first in dropped else [node]
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used or i.name not in old_weights]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return [nodes[0].name for nodes in replaced.values()]
