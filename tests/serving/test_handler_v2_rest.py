"""The Lambda handler's rest of V2: GET /v2, model config, gzip/deflate bodies and the binary
tensor data extension, on proxy events as API Gateway sends them (binary bodies base64)."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest
from onnxlift_serving import __version__

from tests.conftest import load_event, texts_body

pytestmark = pytest.mark.slow
TEXTS = ["first sentence", "second one"]


@pytest.fixture
def handler(load_handler: Any) -> Any:
    return load_handler()


def invoke(
    handler: Any,
    context: Any,
    path: str,
    *,
    method: str = "POST",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    event = load_event("infer", path=path, httpMethod=method, resource=path)
    event["headers"] = {"x-api-key": "k", **(headers or {})}
    event["multiValueHeaders"] = {k: [v] for k, v in event["headers"].items()}
    event["body"] = base64.b64encode(body).decode() if body is not None else None
    event["isBase64Encoded"] = body is not None
    result = handler.lambda_handler(event, context)
    raw = result["body"] or ""
    data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
    headers = dict(result.get("headers") or {})
    for key, values in (result.get("multiValueHeaders") or {}).items():
        headers[key] = ", ".join(values)
    return result["statusCode"], headers, data


def test_server_metadata_and_model_config(
    handler: Any, lambda_context: Any, published: str
) -> None:
    status, _, body = invoke(handler, lambda_context, "/v2", method="GET")
    assert status == 200
    assert json.loads(body) == {
        "name": "onnxlift",
        "version": __version__,
        "extensions": ["binary_tensor_data", "model_configuration"],
    }
    for path in ("/v2/models/minilm/config", f"/v2/models/minilm/versions/{published}/config"):
        status, _, body = invoke(handler, lambda_context, path, method="GET")
        config = json.loads(body)
        assert status == 200, config
        assert (config["name"], config["platform"], config["versions"]) == (
            "minilm",
            "onnxruntime_onnx",
            [published],
        )
        assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": []}]
        assert config["output"][0]["data_type"] == "TYPE_FP32"
        assert config["max_batch_size"] > 0
    status, _, body = invoke(
        handler, lambda_context, "/v2/models/minilm/versions/99/config", method="GET"
    )
    assert status == 404 and "99" in json.loads(body)["error"]


def test_compressed_bodies_answer_like_plain_ones(handler: Any, lambda_context: Any) -> None:
    plain = json.dumps(texts_body(TEXTS)).encode()
    path = "/v2/models/minilm/infer"
    status, _, expected = invoke(handler, lambda_context, path, body=plain)
    assert status == 200
    for coding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        status, headers, body = invoke(
            handler,
            lambda_context,
            path,
            body=compress(plain),
            headers={"Content-Encoding": coding},
        )
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == json.loads(expected)


@pytest.mark.parametrize(
    ("body", "headers", "status", "fragment"),
    [
        (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "gzip data"),
        (gzip.compress(b"{}"), {"Content-Encoding": "br"}, 415, "'br' is not supported"),
        (gzip.compress(b" " * (7 * 1024 * 1024)), {"content-encoding": "gzip"}, 413, "limit"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "x"}, 400, "non-negative"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, 400, "only 14 bytes"),
        (b"\xff\xfe", {}, 400, "not valid UTF-8"),
    ],
)
def test_client_mistakes_in_codings_and_framing_are_4xx(
    handler: Any,
    lambda_context: Any,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    got, answer_headers, answer = invoke(
        handler, lambda_context, "/v2/models/minilm/infer", body=body, headers=headers
    )
    assert got == status, answer
    assert answer_headers["Content-Type"] == "application/json"
    assert fragment in json.loads(answer)["error"]


def test_binary_extension_round_trip_with_tritonclient(handler: Any, lambda_context: Any) -> None:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=True)
    plain = json.dumps(texts_body(TEXTS)).encode()
    _, _, expected = invoke(handler, lambda_context, "/v2/models/minilm/infer", body=plain)
    reference = np.asarray(json.loads(expected)["outputs"][0]["data"], np.float32).reshape(2, -1)
    for binary_out in (True, False):
        body, length = httpclient.InferenceServerClient.generate_request_body(
            [tensor],
            outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary_out)],
            request_id="b1",
        )
        status, headers, answer = invoke(
            handler,
            lambda_context,
            "/v2/models/minilm/infer",
            body=gzip.compress(body),
            headers={"Inference-Header-Content-Length": str(length), "Content-Encoding": "gzip"},
        )
        assert status == 200, answer
        header_length = headers.get("Inference-Header-Content-Length")
        assert (header_length is not None) == binary_out
        if binary_out:
            assert headers["Content-Type"] == "application/octet-stream"
        result = httpclient.InferResult.from_response_body(
            answer, header_length=int(header_length) if header_length else None
        )
        assert result.get_response()["id"] == "b1"
        np.testing.assert_allclose(result.as_numpy("embedding"), reference, atol=1e-6)
