"""Attention smoothing (onnxlift/builder/smooth.py): the same FP32 function, a narrower input
range for QAttention's per-call scale, and the spec's checks."""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving.session import create_session

from onnxlift.builder.smooth import SMOOTH_SUFFIX, smooth_attention
from onnxlift.errors import BuildError
from onnxlift.spec import SpecError, parse_spec

HIDDEN, HEADS, TOKENS = 8, 2, 5


def _attention_model(layers: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, initializers, current = [], [], "x"
    for i in range(layers):
        weight = rng.standard_normal((HIDDEN, 3 * HIDDEN)).astype(np.float32)
        bias = rng.standard_normal(3 * HIDDEN).astype(np.float32)
        initializers += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(bias, f"b{i}"),
        ]
        nodes.append(
            helper.make_node(
                "Attention",
                [current, f"w{i}", f"b{i}"],
                [f"y{i}"],
                name=f"Attention_{i}",
                domain="com.microsoft",
                num_heads=HEADS,
            )
        )
        current = f"y{i}"
    graph = helper.make_graph(
        nodes,
        "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, TOKENS, HIDDEN])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, TOKENS, HIDDEN])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _inputs(seed: int) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((1, TOKENS, HIDDEN)).astype(np.float32)
    x[..., 3] *= 40  # one outlier channel, as BERT layers have
    return {"x": x}


def test_smoothing_keeps_the_function_and_narrows_the_input(tmp_path: Path) -> None:
    source, target = tmp_path / "fp32.onnx", tmp_path / "smooth.onnx"
    onnx.save(_attention_model(2), str(source))
    feeds = [_inputs(seed) for seed in range(4)]
    muls = smooth_attention(source, target, feeds, [0.5, 0.8])
    assert muls == [f"Attention_0{SMOOTH_SUFFIX}", f"Attention_1{SMOOTH_SUFFIX}"]
    smoothed = onnx.load(str(target))
    ops = [n.op_type for n in smoothed.graph.node]
    assert ops == ["Mul", "Attention", "Mul", "Attention"]
    before, after = create_session(source), create_session(target)
    for seed in range(4, 8):  # inputs the statistics never saw
        np.testing.assert_allclose(
            after.run(None, _inputs(seed))[0],
            before.run(None, _inputs(seed))[0],
            rtol=1e-4,
            atol=1e-4,
        )
    inverse = numpy_helper.to_array(
        next(i for i in smoothed.graph.initializer if i.name == muls[0])
    )
    # the outlier channel is divided most: what the per-call u8 scale has to span shrinks
    peaks = np.max([np.abs(f["x"]).reshape(-1, HIDDEN).max(0) for f in feeds], axis=0)
    assert int(np.argmin(inverse)) == 3
    assert (peaks * inverse).max() / (peaks * inverse).min() < peaks.max() / peaks.min()


def test_one_alpha_per_attention_and_calibration_needed(tmp_path: Path) -> None:
    source = tmp_path / "fp32.onnx"
    onnx.save(_attention_model(2), str(source))
    with pytest.raises(BuildError, match="2 Attention nodes"):
        smooth_attention(source, tmp_path / "s.onnx", [_inputs(0)], [0.5])
    with pytest.raises(BuildError, match="calibration"):
        smooth_attention(source, tmp_path / "s.onnx", [], [0.5, 0.5])


def _spec(tmp_path: Path, **quantization: object) -> None:
    (tmp_path / "calibration.txt").write_text("a text\n")
    (tmp_path / "parity.txt").write_text("a text\n")
    raw = {
        "name": "m",
        "task": "text-embedding",
        "source": {"framework": "pytorch"},
        "quantization": {"mode": "dynamic", "calibration": "calibration.txt", **quantization},
        "parity": {"inputs": "parity.txt"},
    }
    parse_spec(raw, tmp_path)


@pytest.mark.parametrize(
    ("quantization", "message"),
    [
        ({"attention_smoothing": [0.5, 1.5]}, "within 0..1"),
        ({"attention_smoothing": [True]}, "within 0..1"),
        ({"attention_smoothing": [0.5], "exclude_op_types": ["Attention"]}, "keeps them FP32"),
        ({"attention_smoothing": [0.5], "calibration": None}, "needs a calibration file"),
        ({"attention_smoothing": [0.5], "mode": "static"}, "dynamic quantization"),
    ],
)
def test_spec_refuses_smoothing_that_cannot_apply(
    tmp_path: Path, quantization: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, **quantization)
    _spec(tmp_path, attention_smoothing=[0.5, 0.0, 1])  # what it accepts


@pytest.mark.slow
def test_a_smoothed_build_serves_qattention(minilm_spec: Any, tmp_path: Path) -> None:
    """minilm built with every Attention quantized behind the smoothing (the calibration-chosen
    alphas of onnxlift.bench.schemes), its gate lowered to what that scheme reaches."""
    from onnxlift.bench.schemes import SMOOTH_ALPHAS
    from onnxlift.builder.build import build_model

    quantization = dataclasses.replace(
        minilm_spec.quantization,
        exclude_op_types=(),
        attention_smoothing=SMOOTH_ALPHAS,
        projection_outlier_ratio=0.0,  # off: it applies to attention = 'multihead' only
        mask_padding=False,
    )
    optimizer = dataclasses.replace(minilm_spec.optimizer, attention="fused")
    parity = dataclasses.replace(minilm_spec.parity, threshold=0.985)
    spec = dataclasses.replace(
        minilm_spec, quantization=quantization, optimizer=optimizer, parity=parity
    )
    built = build_model(spec, root=tmp_path, report=lambda _: None)
    manifest = built.manifest
    assert manifest["quantization"]["attention_smoothing"] == list(SMOOTH_ALPHAS)
    quantized = onnx.load(str(built.folder / "work" / "model.int8.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in quantized.graph.node)
    assert ops["QAttention"] == len(SMOOTH_ALPHAS) and ops["Attention"] == 0
    smoothing = [n for n in quantized.graph.node if n.name.endswith(SMOOTH_SUFFIX)]
    assert [n.op_type for n in smoothing] == ["Mul"] * len(SMOOTH_ALPHAS)  # left FP32
    assert 0.985 <= manifest["parity"]["value"] < 1.0
    assert manifest["quantization"]["integer_kernels"]["weights_cannot_saturate"] is True


def test_lists_must_be_lists(tmp_path: Path) -> None:
    for key in ("attention_smoothing", "exclude_nodes"):
        with pytest.raises(SpecError, match=f"quantization.{key} must be a list"):
            _spec(tmp_path, **{key: 0.5})
