"""onnxruntime's transformer optimizer: fuse attention, embedding and layer norms before quantizing.

Fused graphs are faster on CPU. A fused Attention holds its Q/K/V weights (kept FP32 or a
QAttention); the multihead form leaves them as MatMuls to quantize (projections.py).
It needs the legacy (TorchScript) export: on the dynamo export its shape inference fails and
it fuses no attention.
"""

from __future__ import annotations

from pathlib import Path

from onnxlift.errors import BuildError


def optimize_transformer(
    source: Path,
    target: Path,
    *,
    model_type: str,
    num_heads: int,
    hidden_size: int,
    multihead: bool = False,
) -> dict[str, int]:
    """`multihead`: MultiHeadAttention after the plain Q/K/V MatMuls instead of an Attention
    that holds their weights (see onnxlift/builder/projections.py)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(model_type)
    options.use_multi_head_attention = multihead
    model = optimizer.optimize_model(
        str(source),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,  # graph fusions only; onnxruntime applies its own level at session creation
        optimization_options=options,
    )
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    if not fused.get("MultiHeadAttention" if multihead else "Attention"):
        raise BuildError(f"{source}: the transformer optimizer fused no attention ({fused})")
    model.save_model_to_file(str(target))
    return fused
