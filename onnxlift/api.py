"""The Python API: build any model through the same export, check, quantize and parity steps.

    import torch, onnxlift.api as lift
    result = lift.build_pytorch(
        my_module, name="ranker",
        example_inputs={"x": torch.randn(2, 16)},
        dynamic_axes={"x": {0: "batch"}, "score": {0: "batch"}},
        output_names=["score"],
        quantization="static",              # dynamic | static | none
        parity_inputs={"x": held_out},      # numpy; the module's own outputs are the reference
        threshold=0.05,                     # max abs error (or metric="top1_agreement", ...)
    )
    result.folder  # a publishable artifact: model.onnx, manifest.json

`onnxlift add PATH --name NAME` is the same for an ONNX file, from the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnxlift_serving.protocol import NUMPY_TO_DATATYPE, TensorSpec

from onnxlift import paths
from onnxlift.builder.build import BuildResult, Report, build_model
from onnxlift.sources import ModelSource
from onnxlift.spec import parse_spec


def _tensor_spec(name: str, array: np.ndarray, dynamic: Mapping[int, str]) -> TensorSpec:
    shape = tuple(-1 if axis in dynamic else size for axis, size in enumerate(array.shape))
    return TensorSpec(name, NUMPY_TO_DATATYPE[array.dtype.name], shape)


def build_pytorch(
    module: Any,
    *,
    name: str,
    example_inputs: Mapping[str, Any],
    output_names: list[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    parity_inputs: Mapping[str, np.ndarray],
    quantization: str = "dynamic",
    metric: str = "max_abs_error",
    threshold: float = 0.05,
    per_channel: bool = True,
    opset: int = 17,
    memory_mb: int = 1024,
    root: Path | None = None,
    report: Report = print,
) -> BuildResult:
    """Export `module`, quantize, gate on parity against the module itself, write an artifact."""
    import torch

    from onnxlift.sources.pytorch import torch_exporter, torch_reference

    raw = {
        "name": name,
        "task": "tensor",
        "source": {"framework": "pytorch"},
        "export": {"opset": opset},
        "quantization": {"mode": quantization, "per_channel": per_channel},
        "parity": {"metric": metric, "threshold": threshold},
        "serving": {"memory_mb": memory_mb},
    }
    folder = paths.cache_dir(root) / "api" / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = parse_spec(raw, folder, where=f"build_pytorch({name!r})")
    inputs = {k: np.asarray(v) for k, v in parity_inputs.items()}
    reference = torch_reference(module, inputs, output_names)
    source = ModelSource(
        framework="pytorch",
        framework_version=f"torch {torch.__version__}",
        export=torch_exporter(
            module,
            example_inputs=example_inputs,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
        ),
        inputs=[_tensor_spec(k, v, dynamic_axes.get(k, {})) for k, v in inputs.items()],
        outputs=[_tensor_spec(k, v, dynamic_axes.get(k, {})) for k, v in reference.items()],
        parity_inputs=inputs,
        reference=reference,
        calibration=[
            {k: v[i : i + 8] for k, v in inputs.items()}
            for i in range(0, len(next(iter(inputs.values()))), 8)
        ],
    )
    return build_model(spec, root=root, report=report, source=source)
