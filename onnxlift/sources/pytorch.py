"""Any `torch.nn.Module` -> ONNX, with named inputs and dynamic axes (the Python API's core)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from onnxlift.builder.torch_export import export_module
from onnxlift.sources import Exporter, Feeds


def torch_exporter(
    module: torch.nn.Module,
    *,
    example_inputs: Mapping[str, torch.Tensor],
    output_names: list[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Exporter:
    def export(path: Path, opset: int) -> None:
        export_module(
            module,
            example_inputs=example_inputs,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            path=path,
            opset=opset,
        )

    return export


def torch_reference(module: torch.nn.Module, inputs: Feeds, output_names: list[str]) -> Feeds:
    """Eager outputs of `module` on numpy inputs, by output name."""
    module.eval()
    with torch.inference_mode():
        result = module(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})
    results = result if isinstance(result, tuple | list) else (result,)
    return {name: r.numpy() for name, r in zip(output_names, results, strict=True)}
