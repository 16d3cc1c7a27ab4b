"""The API's proxy to SageMaker: routes to custom attributes, SageMaker errors to V2 errors."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from onnxlift_serving.contract import API_BODY_BYTES

from onnxlift.local.lambda_runtime import load_handler
from tests.conftest import ROOT

PROXY = ROOT / "functions" / "sagemaker" / "proxy" / "proxy_handler.py"


@pytest.fixture
def proxy(aws_credentials: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ENDPOINT_NAME", "onnxlift-minilm")
    monkeypatch.setenv("MODEL_NAME", "minilm")
    load_handler(PROXY)  # as Lambda imports it (and as the local stack does)
    module = sys.modules["proxy_handler"]
    with Stubber(module.runtime) as stubber:
        module.stubber = stubber
        yield module
    sys.modules.pop("proxy_handler", None)


def event(method: str, path: str, body: str | None = None) -> dict[str, Any]:
    return {"httpMethod": method, "path": path, "body": body, "isBase64Encoded": False}


def ok(body: bytes) -> dict[str, Any]:
    return {"Body": StreamingBody(io.BytesIO(body), len(body)), "ContentType": "application/json"}


@pytest.mark.parametrize(
    ("method", "path", "attributes"),
    [
        ("POST", "/v2/models/minilm/infer", "onnxlift-route=infer; onnxlift-model=minilm"),
        (
            "POST",
            "/v2/models/minilm/versions/3/infer",
            "onnxlift-route=infer; onnxlift-model=minilm; onnxlift-version=3",
        ),
        ("GET", "/v2/models/minilm", "onnxlift-route=metadata; onnxlift-model=minilm"),
        ("GET", "/v2/models/minilm/ready", "onnxlift-route=ready; onnxlift-model=minilm"),
        ("GET", "/v2/health/ready", "onnxlift-route=health-ready"),
    ],
)
def test_routes_travel_as_custom_attributes(
    proxy: Any, method: str, path: str, attributes: str
) -> None:
    proxy.stubber.add_response(
        "invoke_endpoint",
        ok(b'{"ok": true}'),
        {
            "EndpointName": "onnxlift-minilm",
            "Body": ANY,
            "ContentType": "application/json",
            "Accept": "application/json",
            "CustomAttributes": attributes,
        },
    )
    result = proxy.lambda_handler(event(method, path, "{}" if method == "POST" else None), None)
    assert result["statusCode"] == 200 and json.loads(result["body"]) == {"ok": True}


@pytest.mark.parametrize(
    ("error", "status", "fragment", "retry_after"),
    [
        (
            {"service_error_code": "ThrottlingException", "http_status_code": 400},
            429,
            "too many requests",
            "1",
        ),
        (
            {"service_error_code": "ModelNotReadyException", "http_status_code": 429},
            429,
            "too many requests",
            "1",
        ),
        (
            {
                "service_error_code": "ModelError",
                "http_status_code": 424,
                "modeled_fields": {
                    "OriginalStatusCode": 422,
                    "OriginalMessage": '{"error": "input text: wrong shape"}',
                },
            },
            422,
            "wrong shape",
            None,
        ),
        (
            {
                "service_error_code": "ModelError",
                "http_status_code": 424,
                "modeled_fields": {
                    "OriginalStatusCode": 503,
                    "OriginalMessage": '{"error": "model is not loaded"}',
                },
            },
            503,
            "not loaded",
            "5",
        ),
        (
            {
                "service_error_code": "ModelError",
                "http_status_code": 424,
                "service_message": "Received server error (500) from primary",
                "modeled_fields": {"OriginalStatusCode": 500, "OriginalMessage": "Traceback..."},
            },
            502,
            "failed to answer",
            None,
        ),
        (
            {"service_error_code": "ServiceUnavailable", "http_status_code": 503},
            503,
            "unavailable",
            "5",
        ),
        (
            {
                "service_error_code": "ValidationError",
                "http_status_code": 400,
                "service_message": "Endpoint onnxlift-minilm of account 1 not found.",
            },
            503,
            "unavailable",
            "5",
        ),
        (
            {"service_error_code": "ValidationError", "http_status_code": 400},
            502,
            "refused",
            None,
        ),
    ],
)
def test_sagemaker_errors_become_v2_errors(
    proxy: Any, error: dict[str, Any], status: int, fragment: str, retry_after: str | None
) -> None:
    proxy.stubber.add_client_error("invoke_endpoint", **error)
    result = proxy.lambda_handler(event("POST", "/v2/models/minilm/infer", "{}"), None)
    assert result["statusCode"] == status
    assert fragment in json.loads(result["body"])["error"]
    assert result["headers"].get("Retry-After") == retry_after


def test_answers_without_calling_the_endpoint(proxy: Any) -> None:
    assert proxy.lambda_handler(event("GET", "/v2/health/live"), None)["statusCode"] == 200
    assert proxy.lambda_handler(event("GET", "/v2/models/other"), None)["statusCode"] == 404
    refused = proxy.lambda_handler(event("DELETE", "/v2/models/minilm"), None)
    assert refused["statusCode"] == 405 and refused["headers"]["Allow"] == "GET"
    big = "x" * (API_BODY_BYTES + 1)
    assert (
        proxy.lambda_handler(event("POST", "/v2/models/minilm/infer", big), None)["statusCode"]
        == 413
    )
    proxy.stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Inference-Header-Content-Length": "²"}, 400),
        ({"Inference-Header-Content-Length": "12; x"}, 400),
        ({"Content-Encoding": "br"}, 415),
        ({"Content-Encoding": "gzip, ü" * 300}, 415),
    ],
)
def test_headers_invoke_endpoint_would_refuse_are_the_clients_4xx(
    proxy: Any, headers: dict[str, str], status: int
) -> None:
    """Never passed on to InvokeEndpoint, whose ValidationError would be a 502."""
    request = event("POST", "/v2/models/minilm/infer", '{"inputs": []}') | {"headers": headers}
    answer = proxy.lambda_handler(request, None)
    assert answer["statusCode"] == status and "error" in json.loads(answer["body"])
    proxy.stubber.assert_no_pending_responses()


def test_the_proxy_knows_the_contracts_codings(proxy: Any) -> None:
    from onnxlift_serving.contract import ContentEncoding

    assert set(proxy.CODINGS) == {str(c) for c in ContentEncoding}  # its own copy, the same
