"""A failed parity gate is one line: model, metric, value, threshold, worst input, what to try.

One case per source kind, with the parity inputs each kind's source really hands the gate
(tensors for PyTorch, Keras and ONNX files, raw strings for scikit-learn and text models).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from onnxlift.builder.gate import check_parity_gate, describe_input
from onnxlift.errors import BuildError
from onnxlift.spec import load_spec
from tests.conftest import ROOT


def _spec(model: str, **parity: Any) -> Any:
    spec = load_spec(ROOT / "models" / model)
    return dataclasses.replace(spec, parity=dataclasses.replace(spec.parity, **parity))


rng = np.random.default_rng(0)
CASES = {
    "pytorch-text": (
        _spec("minilm"),
        {"text": np.array(["fine", "a first line\nand a second " + "long " * 40], dtype=object)},
        {"metric": "min_cosine", "value": 0.9708, "worst_index": 1},
        ["min_cosine 0.9708 < threshold 0.99", "text='a first line and a second long", "..."],
        "exclude_op_types",
    ),
    "keras": (
        _spec("tabular"),
        {"features": rng.standard_normal((5, 30)).astype(np.float32)},
        {"metric": "top1_agreement", "value": 0.6, "worst_index": 3},
        ["top1_agreement 0.6000 < threshold 0.98", "features[30]=[", "worst input #3"],
        "calibration",
    ),
    "sklearn": (
        _spec("textclf"),
        {"text": np.array([["the match"], ["rain again"]], dtype=object)},
        {"metric": "top1_agreement", "value": 0.5, "worst_index": 1},
        ["top1_agreement 0.5000 < threshold 1.0", "text='rain again'"],
        "FP32 export itself",
    ),
    "onnx-file": (
        _spec("tabular", metric="max_abs_error", threshold=0.05),
        {"x": rng.integers(0, 10, (4, 2, 3)).astype(np.int64)},
        {"metric": "max_abs_error", "value": 0.31, "worst_index": 2},
        ["max_abs_error 0.3100 > threshold 0.05", "x[2x3]=["],
        "per_channel",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_failed_gate_says_everything_in_one_line(kind: str) -> None:
    spec, inputs, figure, fragments, remedy = CASES[kind]
    with pytest.raises(BuildError) as failure:
        check_parity_gate(spec, figure, inputs, "int8")
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith(f"{spec.name}: parity gate failed: int8 ")
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "try: " in message and remedy in message


def test_a_passing_gate_is_silent() -> None:
    spec = _spec("minilm")
    check_parity_gate(spec, {"value": 0.995, "worst_index": 0}, {"text": ["x"]}, "int8")


def test_inputs_are_described_by_kind() -> None:
    assert describe_input({"t": [b"caf\xc3\xa9"]}, 0) == "t='café'"
    assert describe_input({"x": np.zeros((2, 6), np.float32)}, 1) == "x[6]=[0., 0., 0., 0., ...]"
    assert describe_input({"n": np.arange(3)}, 2) == "n[scalar]=[2]"
