"""The served MiniLM INT8 equals an exact integer reference, on this CPU and by construction.

Measured on an AVX2-only AMD EPYC (no VNNI), the 65 parity texts: every MatMulInteger equals
numpy's int64 sum exactly (no quantized activation rounded differently either), and the
served embeddings equal the float64-integer graph's bit for bit (max abs 0.0). With 8-bit
weights and without the session setting the same comparison gives max abs 0.046 and min cosine
0.971: the tolerances below leave room for float reordering on other CPUs, not for saturation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnxlift_serving.pipelines import load_tokenizer
from onnxlift_serving.session import create_session, optimization_for

from onnxlift.builder.integer_audit import SAFE_S8_WEIGHT, audit_integer_kernels, integer_weights
from onnxlift.builder.integer_reference import (
    dynamic_quantize_linear,
    exact_integer_model,
    matmul_checks,
    matmul_integer,
)

E2E_MAX_ABS = 1e-5
E2E_MIN_COSINE = 0.99999


def quantized_graph(build: Any) -> Path:
    """The graph as quantized, before onnxruntime's optimizer fused its integer MatMuls (the
    artifact holds the optimized copy the build proved to answer identically)."""
    return build.folder / "work" / "model.int8.onnx"


@pytest.fixture(scope="module")
def served(minilm_build: Any) -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    folder = minilm_build.folder
    model = onnx.load(str(quantized_graph(minilm_build)))
    tokenizer = load_tokenizer(str(folder / "assets" / "tokenizer.json"), 256)
    spec = minilm_build.spec
    texts = [t for t in (spec.folder / spec.parity.inputs).read_text().splitlines() if t.strip()]
    assert len(texts) == minilm_build.manifest["parity"]["inputs"]
    feeds = []
    for text in texts:  # the whole parity set, one text per call as a client sends it
        encoding = tokenizer.encode(text)
        feeds.append(
            {
                "input_ids": np.array([encoding.ids], np.int64),
                "attention_mask": np.array([encoding.attention_mask], np.int64),
                "token_type_ids": np.array([encoding.type_ids], np.int64),
            }
        )
    return model, feeds


def test_numpy_reference_ops_follow_onnx_semantics() -> None:
    x = np.array([[-1.0, 0.0, 0.5, 2.0]], np.float32)
    q, scale, zero = dynamic_quantize_linear(x)
    assert scale == np.float32(3.0 / 255) and zero == 85
    assert q.tolist() == [[0, 85, 127, 255]]  # 0.5 / scale = 42.5 rounds half to even
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])],
        "dql",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, None])],
        [onnx.helper.make_empty_tensor_value_info(n) for n in ("q", "s", "z")],
    )
    session = create_session(onnx.helper.make_model(graph).SerializeToString())
    for seed in range(5):
        sample = np.random.default_rng(seed).standard_normal((16, 384)).astype(np.float32)
        ort_q, ort_s, ort_z = session.run(None, {"x": sample})
        np_q, np_s, np_z = dynamic_quantize_linear(sample)
        assert (ort_s, ort_z) == (np_s, np_z)
        np.testing.assert_array_equal(ort_q, np_q)
    a, b = np.full((1, 2), 255, np.uint8), np.full((2, 1), 127, np.int8)
    assert matmul_integer(a, b).item() == 64_770  # past int16: a saturating kernel gives 32,767


def test_minilm_weights_cannot_saturate_any_cpu(minilm_build: Any) -> None:
    recorded = minilm_build.manifest["quantization"]["integer_kernels"]
    audit = audit_integer_kernels(quantized_graph(minilm_build))
    assert recorded == audit
    weights = integer_weights(onnx.load(str(quantized_graph(minilm_build))))
    assert len(weights) == audit["integer_weights"] >= 18
    assert all(int(np.abs(w.astype(np.int32)).max()) <= SAFE_S8_WEIGHT for w in weights.values())
    assert audit["weights_cannot_saturate"] is True
    assert minilm_build.manifest["parity"]["measured_on"]["machine"]


def test_every_integer_matmul_equals_numpy_exact_sum(served: Any) -> None:
    model, feeds = served
    checks = matmul_checks(model, feeds)
    assert len(checks) >= 18
    assert sum(c.elements for c in checks) > 100_000
    assert max(c.max_abs_value for c in checks) > 32_767  # sums that a 16-bit pair could not hold
    assert [c for c in checks if c.max_abs_error != 0] == []
    assert [c for c in checks if c.quantize_mismatches != 0] == []


def test_served_embeddings_equal_the_exact_integer_graph(served: Any, minilm_build: Any) -> None:
    model, feeds = served
    # the served file as served: saved after onnxruntime's optimizer, not optimized again
    served_file = minilm_build.folder / "model.onnx"
    level = optimization_for(minilm_build.manifest, [])
    session = create_session(served_file, optimization=level)
    reference = create_session(exact_integer_model(model).SerializeToString())
    assert "MatMulInteger" not in {n.op_type for n in exact_integer_model(model).graph.node}
    for feed in feeds:
        got, want = session.run(None, feed)[0], reference.run(None, feed)[0]
        cosine = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        assert float(np.abs(got - want).max()) <= E2E_MAX_ABS
        assert cosine >= E2E_MIN_COSINE
