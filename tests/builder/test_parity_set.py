"""The parity set a build keeps with each version, and the one metric math behind the build's
gate, `onnxlift verify` and the PreTraffic hook (onnxlift_serving.verify, plain Python)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnxlift_serving import verify
from onnxlift_serving.artifact import sha256_file
from onnxlift_serving.contract import infer_path, sandbox_environment, serving_environment

from onnxlift.builder import parity
from tests.conftest import HANDLER, ROOT, FakeLambdaContext, load_event, published_copy

RNG = np.random.default_rng(7)


def test_cosine_is_numpys_figure() -> None:
    served = RNG.standard_normal((20, 384)).astype(np.float32)
    reference = served + 0.05 * RNG.standard_normal((20, 384)).astype(np.float32)
    a = served / np.linalg.norm(served, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    expected = (a * b).sum(axis=1)
    figure = parity.cosine(served, reference)
    assert figure["value"] == pytest.approx(float(expected.min()), abs=1e-6)
    assert figure["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert figure["worst_index"] == int(expected.argmin())


def test_top1_and_max_abs_error_are_numpys_figures() -> None:
    reference = {"label": np.array(["a", "b", "a", "c"], dtype=object), "p": RNG.random((4, 3))}
    served = {"label": np.array(["a", "b", "c", "c"], dtype=object), "p": reference["p"] + 0.01}
    served["p"][2, 1] += 0.3
    top1 = parity.top1_agreement(
        served["label"], reference["label"], np.array(["a", "b", "a", "b"])
    )
    assert (top1["value"], top1["worst_index"], top1["accuracy"]) == (0.75, 2, 0.5)
    figure = parity.max_abs_error(served, reference)  # the labels are not numeric: skipped
    assert figure["value"] == pytest.approx(0.31) and figure["worst_index"] == 2


def test_a_nan_answer_never_passes() -> None:
    figure = verify.max_abs_error_rows({"y": [[1.0, float("nan")]]}, {"y": [[1.0, 2.0]]})
    assert not verify.passes("max_abs_error", figure["value"], 1e3)
    cos = verify.cosine_rows([[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]])
    assert cos["worst_index"] == 0 and not verify.passes("min_cosine", cos["value"], 0.5)


def parity_set_of(count: int, width: int) -> dict[str, Any] | None:
    x = RNG.standard_normal((count, width)).astype(np.float32)
    return parity.parity_set(
        metric="max_abs_error",
        threshold=1e-4,
        datatypes={"x": "FP32"},
        parity_inputs={"x": x},
        reference={"y": x * 2},
        truth=None,
    )


def test_the_set_keeps_at_most_16_inputs_and_fits_its_byte_cap() -> None:
    small = parity_set_of(40, 4)
    assert small is not None and len(small["requests"]) == verify.MAX_PARITY_INPUTS
    big = parity_set_of(16, 20_000)  # 16 x 2 x 20,000 floats is over 1 MiB as JSON
    assert big is not None and 1 <= len(big["requests"]) < 16
    assert len(json.dumps(big)) <= verify.MAX_PARITY_SET_BYTES
    assert verify.read_parity_set(json.dumps(big)) == big


def test_rows_json_cannot_spell_are_left_out() -> None:
    x = np.ones((3, 2), dtype=np.float32)
    x[1, 0] = np.nan
    doc = parity.parity_set(
        metric="max_abs_error",
        threshold=0.1,
        datatypes={"x": "FP32"},
        parity_inputs={"x": x},
        reference={"y": x},
        truth=None,
    )
    assert doc is not None and len(doc["requests"]) == 2
    json.dumps(doc, allow_nan=False)


@pytest.fixture(scope="module")
def textclf(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from onnxlift.builder.build import build_model
    from onnxlift.spec import load_spec

    root = tmp_path_factory.mktemp("root")
    return build_model(load_spec(ROOT / "models" / "textclf"), root=root, report=lambda _: None)


def test_a_text_classifier_keeps_raw_strings_and_passes_through_the_handler(
    textclf: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxlift.local.lambda_runtime import load_handler

    path = textclf.folder / "assets" / "parity.json"
    assert textclf.manifest["assets"]["parity.json"] == sha256_file(path)
    doc = verify.read_parity_set(path.read_bytes())
    assert doc["outputs"] == ["label", "probabilities"] and doc["truth"]
    (tensor,) = doc["requests"][0]["inputs"]
    assert tensor["datatype"] == "BYTES" and isinstance(tensor["data"][0], str)

    baked = published_copy(textclf.folder, tmp_path / "baked", "1")
    env = serving_environment(name="textclf", source="image", model_dir=str(baked), threads=1)
    for key, value in (env | sandbox_environment("textclf", 512)).items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("handler", None)
    lambda_handler = load_handler(HANDLER)
    route = infer_path("textclf", "1")

    def send(body: dict[str, Any]) -> dict[str, Any]:
        event = load_event("infer", path=route, resource=route, body=json.dumps(body))
        result = lambda_handler(event, FakeLambdaContext())
        assert result["statusCode"] == 200, result
        return json.loads(result["body"])

    try:
        result = verify.verify(doc, send)
    finally:
        sys.modules.pop("handler", None)
    assert result.passed and result.value == 1.0 and result.count == len(doc["requests"])
