"""Model sources: what a model folder's `source.py` hands the build pipeline.

`source.py` defines `load(spec) -> ModelSource`. The exporters here turn each framework's
model into an FP32 ONNX file with the served names on its inputs and outputs; the source also
carries the framework's own answers on the parity inputs, which the gate compares against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnxlift_serving.protocol import TensorSpec

Exporter = Callable[[Path, int], None]  # (path, opset) -> writes the FP32 ONNX file
Feeds = dict[str, np.ndarray]


@dataclass(kw_only=True)
class ModelSource:
    framework: str  # pytorch | keras | sklearn | onnx
    framework_version: str
    export: Exporter
    inputs: list[TensorSpec]  # the V2 signature clients see
    outputs: list[TensorSpec]
    parity_inputs: Feeds  # V2 inputs, by served name
    reference: Feeds  # the source framework's outputs on them, by served name
    truth: np.ndarray | None = None  # ground-truth labels, for accuracy next to agreement
    calibration: list[Feeds] = field(default_factory=list)  # graph feeds for static INT8
    assets: dict[str, Path] = field(default_factory=dict)  # files shipped under assets/
    labels: list[str] | None = None  # class names, when the graph gives probabilities only


def rename_io(path: Path, renames: dict[str, str]) -> None:
    """Rename graph inputs/outputs (and every use of them) in place."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
    onnx.save(model, str(path))
