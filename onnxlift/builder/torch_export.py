"""Export any `torch.nn.Module` to ONNX with named inputs and dynamic axes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def export_module(
    module: torch.nn.Module,
    *,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    path: Path,
    opset: int,
) -> Path:
    """Export `module` (called with keyword arguments named like `example_inputs`) to `path`.

    Uses the TorchScript-based exporter with `dynamic_axes`: for encoder graphs it gives the
    plain MatMul/Gemm structure that onnxruntime's transformer optimizer and quantizer expect.
    Weights are kept inside the file (models under 2 GB), so the artifact is one object.
    """
    module.eval()
    names = list(example_inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            module,
            tuple(example_inputs[n] for n in names),
            str(path),
            input_names=names,
            output_names=output_names,
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return path
