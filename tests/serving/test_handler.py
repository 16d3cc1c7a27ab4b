"""The real Lambda handler on API Gateway REST events, its model fetched from a moto registry."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest
from onnxlift_serving import contract

from tests.conftest import call, texts_body

pytestmark = pytest.mark.slow


@pytest.fixture
def handler(load_handler: Any) -> Any:
    return load_handler()


def test_infer_returns_normalised_embeddings_matching_pytorch(
    handler: Any, lambda_context: Any, reference_embeddings: Any, published: str
) -> None:
    status, body, headers = call(handler, lambda_context)
    assert status == 200, body
    assert headers["Content-Type"] == "application/json"
    assert body["model_name"] == "minilm" and body["model_version"] == published
    assert body["id"] == "req-1"
    (output,) = body["outputs"]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    assert output["shape"] == [2, 384]
    served = np.asarray(output["data"], dtype=np.float32).reshape(2, 384)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)
    reference = reference_embeddings(["first sentence", "second one"])
    cosines = (served * reference).sum(axis=1)
    assert cosines.min() >= 0.99, cosines


def test_versioned_route_serves_the_published_version(
    handler: Any, lambda_context: Any, published: str
) -> None:
    status, body, _ = call(
        handler,
        lambda_context,
        texts_body(["hi"]),
        path=f"/v2/models/minilm/versions/{published}/infer",
    )
    assert status == 200 and body["model_version"] == published
    status, body, _ = call(
        handler, lambda_context, texts_body(["hi"]), path="/v2/models/minilm/versions/999/infer"
    )
    assert status == 404 and "999" in body["error"]


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ("{not json", 400, "not valid JSON"),
        ("[1, 2]", 400, "JSON object"),
        ("", 400, "empty"),
        ({"inputs": []}, 400, "non-empty list"),
        ({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES"}]}, 400, "missing 'data'"),
        (
            {"inputs": [{"name": "text", "shape": ["1"], "datatype": "BYTES", "data": ["a"]}]},
            400,
            "non-negative integers",
        ),
        (
            {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
            422,
            "no input 'txt'",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
            422,
            "must be BYTES",
        ),
        (
            {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]},
            422,
            "holds 3 elements",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1, 1, 1], "datatype": "BYTES", "data": ["a"]}]},
            422,
            "expects [-1]",
        ),
        (
            {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]},
            422,
            "must be strings",
        ),
        (
            {
                "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
                "outputs": [{"name": "logits"}],
            },
            422,
            "no output(s) logits",
        ),
        (
            {"inputs": [{"name": "text", "shape": [65], "datatype": "BYTES", "data": ["a"] * 65}]},
            413,
            "maximum of 64",
        ),
    ],
)
def test_client_mistakes_get_clear_errors_never_500(
    handler: Any, lambda_context: Any, body: Any, status: int, fragment: str
) -> None:
    got, answer, _ = call(handler, lambda_context, body)
    assert got == status, answer
    assert fragment in answer["error"]


def test_unknown_model_is_404(handler: Any, lambda_context: Any) -> None:
    status, body, _ = call(handler, lambda_context, texts_body(["a"]), path="/v2/models/nope/infer")
    assert status == 404 and "nope" in body["error"]


def test_payload_over_the_limit_is_413(load_handler: Any, lambda_context: Any) -> None:
    module = load_handler(MAX_PAYLOAD_BYTES="1000")
    status, body, _ = call(module, lambda_context, texts_body(["x" * 2000]))
    assert status == 413 and "limit is 1000" in body["error"]


def test_base64_body_is_decoded(handler: Any, lambda_context: Any) -> None:
    raw = base64.b64encode(json.dumps(texts_body(["hello"])).encode()).decode()
    status, body, _ = call(handler, lambda_context, raw, isBase64Encoded=True)
    assert status == 200 and body["outputs"][0]["shape"] == [1, 384]


def test_metadata_ready_and_health(handler: Any, lambda_context: Any, published: str) -> None:
    status, meta, _ = call(handler, lambda_context, path="/v2/models/minilm", method="GET")
    assert status == 200
    assert meta["name"] == "minilm" and meta["versions"] == [published]
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert meta["parameters"]["intra_op_num_threads"] == 1
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]
    assert meta["parameters"]["session_config"] == {"session.x64quantprecision": "1"}
    assert meta["parameters"]["serving_cpu"]["machine"]
    assert meta["parameters"]["quantization"]["integer_kernels"]["weights_cannot_saturate"]
    assert "flags" in meta["parameters"]["parity"]["measured_on"]
    for path in (
        "/v2/models/minilm/ready",
        f"/v2/models/minilm/versions/{published}/ready",
        "/v2/health/live",
        "/v2/health/ready",
    ):
        status, _, _ = call(handler, lambda_context, path=path, method="GET")
        assert status == 200, path
    status, body, _ = call(handler, lambda_context, path="/v2/nothing", method="GET")
    assert status == 404 and "no route" in body["error"]
    # API Gateway REST routes /x/ to the resource /x and passes the path as sent.
    for path in ("/v2/health/live/", "/v2/", "/v2/models/minilm/"):
        status, _, _ = call(handler, lambda_context, path=path, method="GET")
        assert status == 200, path
    status, body, _ = call(
        handler, lambda_context, texts_body(["slash"]), path="/v2/models/minilm/infer/"
    )
    assert status == 200 and body["outputs"][0]["shape"] == [1, 384]
    status, body, headers = call(handler, lambda_context, path="/v2/health/live/", method="PUT")
    assert status == 405 and headers["Allow"] == "GET"


def test_init_phases_are_timed_and_logged(handler: Any) -> None:
    """The init phase by part: what `onnxlift bench` reads and the "model loaded" line logs."""
    phases = handler.INIT_PHASES
    parts = ("imports_s", "tracer_s", "verify_s", "session_s", "pipeline_s")
    assert set(phases) == {*parts, "init_s"}
    assert all(value > 0 for value in phases.values()), phases
    assert sum(phases[part] for part in parts) <= phases["init_s"]


def test_metrics_are_emitted_as_emf(handler: Any, lambda_context: Any, capsys: Any) -> None:
    call(handler, lambda_context, texts_body(["metrics"]))
    emitted = [
        json.loads(line)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("{") and "_aws" in line
    ]
    names = {
        m["Name"] for doc in emitted for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    assert "InferLatency" in names
    dimension_sets = {
        tuple(sorted(dims))
        for doc in emitted
        for d in doc["_aws"]["CloudWatchMetrics"]
        if any(m["Name"] == "InferLatency" for m in d["Metrics"])
        for dims in d["Dimensions"]
    }  # what the dashboard's InferLatency widget asks for (infra/dashboard.py)
    expected = (contract.METRIC_MODEL_DIMENSION, contract.METRIC_SERVICE_DIMENSION)
    assert dimension_sets == {tuple(sorted(expected))}


def test_corrupt_artifact_is_refused_and_answers_503(
    load_handler: Any, lambda_context: Any, s3: Any, published: str
) -> None:
    key = f"models/minilm/{published}/model.onnx"
    s3.put_object(Bucket="onnxlift-test-registry", Key=key, Body=b"not the model")  # tamper
    module = load_handler()
    assert not module.service.ready
    assert "sha256" in module.service.load_error
    status, body, headers = call(module, lambda_context, texts_body(["a"]))
    assert status == 503 and headers["Retry-After"] and "not loaded" in body["error"]
    for path in ("/v2/health/ready", f"/v2/models/minilm/versions/{published}/ready"):
        status, _, headers = call(module, lambda_context, path=path, method="GET")
        assert status == 503 and headers["Retry-After"] == "5", path  # every 503 says when


def test_alias_decides_the_default_version_and_rollback_moves_it_back(
    load_handler: Any, lambda_context: Any, registry: Any, minilm_build: Any, published: str
) -> None:
    second = registry.publish(minilm_build.folder, name="minilm")
    module = load_handler(MODEL_VERSION="", ALIAS_TTL_S="0")
    assert not module.service.ready  # no alias yet and nothing baked in: 503, not a guess
    status, body, _ = call(module, lambda_context, texts_body(["a"]))
    assert status == 503 and "alias 'prod' is not set" in body["error"]

    registry.promote("minilm", published, "prod")
    assert call(module, lambda_context, texts_body(["a"]))[1]["model_version"] == published
    registry.promote("minilm", second, "prod")
    assert call(module, lambda_context, texts_body(["a"]))[1]["model_version"] == second
    status, meta, _ = call(module, lambda_context, path="/v2/models/minilm", method="GET")
    assert meta["versions"] == [second] and meta["parameters"]["alias"] == "prod"
    registry.rollback("minilm", "prod")
    assert call(module, lambda_context, texts_body(["a"]))[1]["model_version"] == published
    # the version route still reaches any published version, whatever the alias says
    path = f"/v2/models/minilm/versions/{second}/infer"
    assert call(module, lambda_context, texts_body(["a"]), path=path)[1]["model_version"] == second
