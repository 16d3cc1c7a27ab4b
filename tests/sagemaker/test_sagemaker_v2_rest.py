"""The SageMaker path's rest of V2: the container's GET /v2, model config, gzip/deflate bodies
and the binary tensor data extension (on its V2 routes and over /invocations, where the JSON
header's length rides in SageMaker's Triton content type), and the proxy carrying them."""

from __future__ import annotations

import base64
import gzip
import io
import json
import sys
import zlib
from typing import Any

import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY

from tests.conftest import ROOT
from tests.sagemaker.conftest import wsgi_call
from tests.sagemaker.test_sagemaker_proxy import proxy  # noqa: F401 (fixture)

sys.path.insert(0, str(ROOT / "functions" / "sagemaker"))

import wsgi

TEXTS = ["a cat", "a dog"]
PLAIN = json.dumps(
    {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]}
).encode()
BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"


call = wsgi_call


def triton_body(binary_output: bool) -> tuple[bytes, int]:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object))
    return httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary_output)]
    )


def embeddings(payload: bytes, header_length: int | None) -> np.ndarray:
    import tritonclient.http as httpclient

    result = httpclient.InferResult.from_response_body(payload, header_length=header_length)
    return result.as_numpy("embedding")


@pytest.mark.slow
def test_container_server_metadata_and_config(app: wsgi.ContainerApp) -> None:
    status, _, body = call(app, "GET", "/v2")
    assert status == 200 and json.loads(body)["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
    ]
    status, _, body = call(app, "GET", "/v2/models/minilm/config")
    assert status == 200 and json.loads(body)["platform"] == "onnxruntime_onnx"
    attributes = "onnxlift-route=config; onnxlift-model=minilm"
    status, _, body = call(
        app, "POST", "/invocations", b"{}", {"X-Amzn-SageMaker-Custom-Attributes": attributes}
    )
    assert status == 200 and json.loads(body)["input"][0]["data_type"] == "TYPE_STRING"


@pytest.mark.slow
def test_container_codings_on_both_doors(app: wsgi.ContainerApp) -> None:
    _, _, expected = call(app, "POST", "/invocations", PLAIN)
    for coding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        status, _, body = call(
            app, "POST", "/v2/models/minilm/infer", compress(PLAIN), {"Content-Encoding": coding}
        )
        assert status == 200 and json.loads(body) == json.loads(expected)
        attributes = f"onnxlift-content-encoding={coding}"
        status, _, body = call(
            app,
            "POST",
            "/invocations",
            compress(PLAIN),
            {"X-Amzn-SageMaker-Custom-Attributes": attributes},
        )
        assert status == 200 and json.loads(body) == json.loads(expected)
    status, headers, body = call(app, "POST", "/invocations", PLAIN, {"Content-Encoding": "br"})
    assert status == 415 and headers["Content-Type"] == "application/json"
    status, _, body = call(app, "POST", "/invocations", b"\x1f\x8bxx", {"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in json.loads(body)["error"]


@pytest.mark.slow
def test_container_binary_extension_on_both_doors(app: wsgi.ContainerApp) -> None:
    _, _, expected = call(app, "POST", "/invocations", PLAIN)
    reference = np.asarray(json.loads(expected)["outputs"][0]["data"], np.float32).reshape(2, -1)

    body, length = triton_body(binary_output=True)
    status, headers, payload = call(
        app,
        "POST",
        "/v2/models/minilm/infer",
        body,
        {"Inference-Header-Content-Length": str(length)},
    )
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    header_length = int(headers["Inference-Header-Content-Length"])
    np.testing.assert_allclose(embeddings(payload, header_length), reference, atol=1e-6)

    status, headers, payload = invocation(app, body, length)
    assert status == 200 and headers["Content-Type"].startswith(BINARY_TYPE)
    header_length = int(headers["Content-Type"].rsplit("=", 1)[1])
    np.testing.assert_allclose(embeddings(payload, header_length), reference, atol=1e-6)

    body, length = triton_body(binary_output=False)  # binary in, JSON out
    status, headers, payload = invocation(app, body, length)
    assert status == 200 and headers["Content-Type"] == "application/json"
    np.testing.assert_allclose(embeddings(payload, None), reference, atol=1e-6)


def invocation(app: wsgi.ContainerApp, body: bytes, length: int) -> tuple[int, dict, bytes]:
    """A binary body to /invocations, its header length in SageMaker's Triton content type."""
    content_type = f"{BINARY_TYPE};json-header-size={length}"
    return call(app, "POST", "/invocations", body, {"Content-Type": content_type})


def stream(body: bytes, content_type: str) -> dict[str, Any]:
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": content_type}


def test_proxy_carries_codings_and_binary_both_ways(proxy: Any) -> None:  # noqa: F811
    sent = b'{"inputs":[]}\x00\x01'
    proxy.stubber.add_response(
        "invoke_endpoint",
        stream(b"{}raw!", f"{BINARY_TYPE};json-header-size=2"),
        {
            "EndpointName": "onnxlift-minilm",
            "Body": sent,
            "ContentType": f"{BINARY_TYPE};json-header-size=13",
            "Accept": "application/json",
            "CustomAttributes": "onnxlift-route=infer; onnxlift-model=minilm; "
            "onnxlift-content-encoding=gzip",
        },
    )
    event = {
        "httpMethod": "POST",
        "path": "/v2/models/minilm/infer",
        "headers": {"Inference-Header-Content-Length": "13", "content-encoding": "gzip"},
        "body": base64.b64encode(sent).decode(),
        "isBase64Encoded": True,
    }
    result = proxy.lambda_handler(event, None)
    assert result["statusCode"] == 200 and result["isBase64Encoded"] is True
    assert base64.b64decode(result["body"]) == b"{}raw!"
    assert result["headers"] == {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": "2",
    }


@pytest.mark.parametrize(
    ("path", "attributes"),
    [
        ("/v2", "onnxlift-route=server-metadata"),
        ("/v2/models/minilm/config", "onnxlift-route=config; onnxlift-model=minilm"),
        (
            "/v2/models/minilm/versions/3/config",
            "onnxlift-route=config; onnxlift-model=minilm; onnxlift-version=3",
        ),
    ],
)
def test_proxy_routes_the_new_gets(proxy: Any, path: str, attributes: str) -> None:  # noqa: F811
    proxy.stubber.add_response(
        "invoke_endpoint",
        stream(b'{"ok": true}', "application/json"),
        {
            "EndpointName": "onnxlift-minilm",
            "Body": ANY,
            "ContentType": "application/json",
            "Accept": "application/json",
            "CustomAttributes": attributes,
        },
    )
    event = {"httpMethod": "GET", "path": path, "body": None, "isBase64Encoded": False}
    result = proxy.lambda_handler(event, None)
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"ok": True}
