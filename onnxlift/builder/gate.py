"""The parity gate: a build whose served model disagrees with its source stops here, with one
line that says which model, which figure, the worst input and what to try next."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from onnxlift.errors import BuildError
from onnxlift.spec import ModelSpec

__all__ = ["check_parity_gate", "describe_input", "remedies"]

EXAMPLE_CHARS = 80


def describe_input(parity_inputs: Mapping[str, Any], index: int) -> str:
    """One parity input, readable on one line: text as text, tensors as shape and values."""
    parts = []
    for name, values in parity_inputs.items():
        value = values[index]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, str):
            text = " ".join(value.split())  # newlines would break the one line
            if len(text) > EXAMPLE_CHARS:
                text = text[: EXAMPLE_CHARS - 3] + "..."
            parts.append(f"{name}={text!r}")
            continue
        array = np.asarray(value)
        if array.dtype.kind in "OSU":
            parts.append(f"{name}={describe_input({name: array.ravel()}, 0).split('=', 1)[1]}")
            continue
        head = np.array2string(array.ravel()[:4], precision=4, separator=", ")
        more = ", ..." if array.size > 4 else ""
        parts.append(f"{name}[{'x'.join(map(str, array.shape)) or 'scalar'}]={head[:-1]}{more}]")
    return ", ".join(parts)


def remedies(spec: ModelSpec) -> str:
    """What usually moves the figure, by the spec's quantization mode."""
    mode = spec.quantization.mode
    if mode == "dynamic":
        return (
            "keep sensitive nodes in FP32 ([quantization] exclude_nodes / exclude_op_types, "
            "e.g. Attention), set per_channel = true, split outlier channels (outlier_ratio)"
        )
    if mode == "static":
        return (
            "give more or more typical calibration inputs, set per_channel = true, keep "
            "sensitive nodes in FP32 ([quantization] exclude_nodes / exclude_op_types)"
        )
    return "the FP32 export itself disagrees with the source: check the exporter, opset and inputs"


def check_parity_gate(
    spec: ModelSpec, figure: Mapping[str, Any], parity_inputs: Mapping[str, Any], label: str
) -> None:
    """Raise BuildError (one line, no traceback in the CLI) when `figure` misses the threshold."""
    value = float(figure["value"])
    if spec.parity.passes(value):
        return
    worst = int(figure.get("worst_index", 0))
    relation = "<" if spec.parity.higher_is_better else ">"
    raise BuildError(
        f"{spec.name}: parity gate failed: {label} {spec.parity.metric} {value:.4f} {relation} "
        f"threshold {spec.parity.threshold}; worst input #{worst}: "
        f"{describe_input(parity_inputs, worst)}; try: {remedies(spec)}. "
        "The artifact was not written."
    )
