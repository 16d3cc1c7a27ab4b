"""The graph rewrites in front of minilm's quantization: Q/K/V merged into one MatMul
(projections.py) and padded rows zeroed before layer-norm-fed MatMuls (padding.py). Each must
leave every real token's FP32 answer as it was; the minilm check runs the whole chain on the
real build with padded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving.pipelines import load_tokenizer
from onnxlift_serving.session import create_session

from onnxlift.builder.outliers import split_outlier_channels
from onnxlift.builder.padding import PAD_MASK_SUFFIX, mask_padded_rows
from onnxlift.builder.projections import QKV_MATMUL_SUFFIX, merge_qkv_projections
from onnxlift.errors import BuildError, SpecError
from onnxlift.spec import parse_spec

HIDDEN, HEADS = 8, 2


def _weight(name: str, rng: np.random.Generator, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _attention_graph(path: Path, *, same_input: bool = True, mask: bool = True) -> None:
    """x -> LayerNorm -> Q/K/V MatMuls -> MultiHeadAttention -> MatMul; a mask input."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        helper.make_node("Identity", ["h"], ["h2"], name="other_input"),
    ]
    inits = [
        numpy_helper.from_array(np.ones(HIDDEN, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(HIDDEN, np.float32), "beta"),
        _weight("bias", rng, (3 * HIDDEN,)),
        _weight("w_out", rng, (HIDDEN, HIDDEN)),
    ]
    for i, part in enumerate(("q", "k", "v")):
        source = "h2" if (part == "v" and not same_input) else "h"
        nodes.append(
            helper.make_node("MatMul", [source, f"w_{part}"], [part], name=f"/{part}/MatMul")
        )
        inits.append(_weight(f"w_{part}", rng, (HIDDEN, HIDDEN)))
        del i
    nodes += [
        helper.make_node(
            "Cast", ["attention_mask"], ["mask_index"], name="mask_cast", to=TensorProto.INT32
        ),
        helper.make_node(
            "MultiHeadAttention",
            ["q", "k", "v", "bias", "mask_index" if mask else ""],
            ["attn"],
            name="Attention_0",
            domain="com.microsoft",
            num_heads=HEADS,
        ),
        # named as a BERT feed-forward output, so the outlier split counts it as one
        helper.make_node("MatMul", ["attn", "w_out"], ["y"], name="/layer.0/output/dense/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    onnx.save(model, str(path))


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64)  # second row padded
    return {"x": rng.standard_normal((2, 5, HIDDEN)).astype(np.float32) * 3, "attention_mask": mask}


def _run(path: Path, feeds: dict[str, np.ndarray], output: str = "y") -> np.ndarray:
    return create_session(path).run([output], feeds)[0]


def test_merged_projections_answer_as_the_three_matmuls(tmp_path: Path) -> None:
    _attention_graph(tmp_path / "a.onnx")
    merged = merge_qkv_projections(tmp_path / "a.onnx", tmp_path / "b.onnx")

    model = onnx.load(str(tmp_path / "b.onnx"))
    assert merged == [f"/Attention_0{QKV_MATMUL_SUFFIX}"]
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Split") == 1  # merged Q/K/V and the output
    assert {"w_q", "w_k", "w_v"}.isdisjoint(i.name for i in model.graph.initializer)
    feeds = _feeds()
    np.testing.assert_allclose(
        _run(tmp_path / "b.onnx", feeds), _run(tmp_path / "a.onnx", feeds), rtol=1e-5, atol=1e-5
    )


def test_projections_of_different_inputs_are_refused(tmp_path: Path) -> None:
    _attention_graph(tmp_path / "a.onnx", same_input=False)
    with pytest.raises(BuildError, match="not MatMuls of one input"):
        merge_qkv_projections(tmp_path / "a.onnx", tmp_path / "b.onnx")


def test_padded_rows_are_zeroed_and_real_rows_answer_as_before(tmp_path: Path) -> None:
    _attention_graph(tmp_path / "a.onnx")
    merge_qkv_projections(tmp_path / "a.onnx", tmp_path / "b.onnx")
    added = mask_padded_rows(tmp_path / "b.onnx", tmp_path / "c.onnx")

    model = onnx.load(str(tmp_path / "c.onnx"))
    masked = [
        n for n in model.graph.node if n.op_type == "MatMul" and PAD_MASK_SUFFIX in n.input[0]
    ]
    # only the layer-norm-fed projection: the output MatMul reads attention, not a norm
    assert [n.name for n in masked] == [f"/Attention_0{QKV_MATMUL_SUFFIX}"]
    assert all(name.endswith(PAD_MASK_SUFFIX) for name in added) and len(added) == 3
    feeds = _feeds()
    qkv_in = masked[0].input[0]
    probe = onnx.load(str(tmp_path / "c.onnx"))
    probe.graph.output.append(helper.make_tensor_value_info(qkv_in, TensorProto.FLOAT, None))
    onnx.save(probe, str(tmp_path / "probe.onnx"))
    rows = _run(tmp_path / "probe.onnx", feeds, qkv_in)
    assert np.all(rows[1, 3:] == 0) and np.all(np.abs(rows[1, :3]).sum(axis=-1) > 0)
    before, after = _run(tmp_path / "b.onnx", feeds), _run(tmp_path / "c.onnx", feeds)
    real = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(after[real], before[real], rtol=1e-5, atol=1e-5)
    assert not np.allclose(after[~real], before[~real])  # the pads did change: a real rewrite


def test_attention_without_a_padding_mask_is_refused(tmp_path: Path) -> None:
    _attention_graph(tmp_path / "a.onnx", mask=False)
    with pytest.raises(BuildError, match="without a key padding mask"):
        merge_qkv_projections(tmp_path / "a.onnx", tmp_path / "b.onnx")
    with pytest.raises(BuildError, match="attention without a padding mask"):
        mask_padded_rows(tmp_path / "a.onnx", tmp_path / "b.onnx")


@pytest.mark.parametrize(
    ("ratio", "projection_ratio", "split"),
    [
        (0.0, 1.0, f"/Attention_0{QKV_MATMUL_SUFFIX}"),
        (1.0, 0.0, "/layer.0/output/dense/MatMul"),
    ],
)
def test_each_outlier_ratio_splits_its_own_matmuls_only(
    tmp_path: Path, ratio: float, projection_ratio: float, split: str
) -> None:
    _attention_graph(tmp_path / "a.onnx")
    merge_qkv_projections(tmp_path / "a.onnx", tmp_path / "b.onnx")
    report = split_outlier_channels(
        tmp_path / "b.onnx",
        tmp_path / "c.onnx",
        [_feeds()],
        ratio=ratio,
        max_channels=2,
        projection_ratio=projection_ratio,
    )
    assert list(report.channels) == [split]  # 0 leaves the other kind whole
    assert len(report.channels[split]) == 2  # ratio 1: the two largest peaks


def test_masking_needs_the_mask_input(tmp_path: Path) -> None:
    _attention_graph(tmp_path / "a.onnx")
    with pytest.raises(BuildError, match="no graph input 'input_mask'"):
        mask_padded_rows(tmp_path / "a.onnx", tmp_path / "b.onnx", mask_input="input_mask")


def test_minilm_rewritten_fp32_graph_keeps_every_real_token(minilm_build: Any) -> None:
    """The build's FP32 chain (MultiHeadAttention, Q/K/V merged, pads masked, outliers split)
    answers padded batches as the plain export does: the rewrites are exact up to float
    rounding, so the parity gate measures quantization alone."""
    work = minilm_build.folder / "work"
    tokenizer = load_tokenizer(str(minilm_build.folder / "assets" / "tokenizer.json"), 256)
    spec = minilm_build.spec
    texts = [t for t in (spec.folder / spec.parity.inputs).read_text().splitlines() if t.strip()]
    batch = [min(texts, key=len), max(texts, key=len), *texts[:6]]  # wide padding
    encodings = tokenizer.encode_batch(batch)
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
    assert feeds["attention_mask"].sum(axis=1).min() < feeds["attention_mask"].shape[1] // 4
    plain = create_session(work / "model.fp32.onnx").run(None, feeds)[0]
    split = create_session(work / "model.fp32.split.onnx").run(None, feeds)[0]
    nodes = onnx.load(str(work / "model.fp32.split.onnx")).graph.node
    assert {"MultiHeadAttention"} <= {n.op_type for n in nodes} and "Attention" not in {
        n.op_type for n in nodes
    }
    assert sum(n.name.endswith(QKV_MATMUL_SUFFIX) for n in nodes) == 6  # one a layer
    assert sum(n.op_type == "Mul" and n.name.endswith(PAD_MASK_SUFFIX) for n in nodes) == 12
    np.testing.assert_allclose(split, plain, atol=2e-5)


def _spec(tmp_path: Path, optimizer: dict[str, object], **quantization: object) -> Any:
    (tmp_path / "calibration.txt").write_text("a text\n")
    (tmp_path / "parity.txt").write_text("a text\n")
    raw = {
        "name": "m",
        "task": "text-embedding",
        "export": {"optimizer": optimizer},
        "quantization": {"mode": "dynamic", "calibration": "calibration.txt", **quantization},
        "parity": {"inputs": "parity.txt"},
    }
    return parse_spec(raw, tmp_path)


BERT = {"model_type": "bert", "num_heads": 12, "hidden_size": 384}


@pytest.mark.parametrize(
    ("optimizer", "quantization", "message"),
    [
        ({**BERT, "attention": "flash"}, {}, "not in"),
        ({"attention": "multihead"}, {}, "needs a model_type"),
        ({**BERT, "attention": "multihead"}, {"attention_smoothing": [0.5]}, "projection_outlier"),
        (BERT, {"projection_outlier_ratio": 3.0}, "needs export.optimizer.attention"),
        (BERT, {"mask_padding": True, "mode": "static"}, "mask_padding is for dynamic"),
        (BERT, {"mask_padding": "false"}, "must be true or false"),
        ({**BERT, "attention": "multihead"}, {"mode": "static"}, "is for dynamic INT8"),
        ({**BERT, "attention": "multihead"}, {"projection_outlier_ratio": 0.5}, "or >= 1"),
        (
            {**BERT, "attention": "multihead"},
            {"projection_outlier_ratio": 3.0, "calibration": None},
            "needs a calibration file",
        ),
    ],
)
def test_spec_refuses_attention_settings_that_cannot_apply(
    tmp_path: Path, optimizer: dict[str, object], quantization: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        _spec(tmp_path, optimizer, **quantization)
    accepted = _spec(
        tmp_path,
        {**BERT, "attention": "multihead"},
        projection_outlier_ratio=3.0,
        mask_padding=True,
    )
    assert accepted.optimizer.attention == "multihead"
    assert accepted.quantization.mask_padding is True
