"""onnxruntime's transformer optimizer: fuse attention, embedding and layer norms before quantizing.

Fused graphs are faster on CPU and give the quantizer whole Attention nodes to keep in FP32.
It needs the legacy (TorchScript) export: on the dynamo export its shape inference fails and
it fuses no attention.
"""

from __future__ import annotations

from pathlib import Path

from onnxlift.errors import BuildError


def optimize_transformer(
    source: Path, target: Path, *, model_type: str, num_heads: int, hidden_size: int
) -> dict[str, int]:
    from onnxruntime.transformers import optimizer

    model = optimizer.optimize_model(
        str(source),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,  # graph fusions only; onnxruntime applies its own level at session creation
    )
    fused = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):
        raise BuildError(f"{source}: the transformer optimizer fused no attention ({fused})")
    model.save_model_to_file(str(target))
    return fused
