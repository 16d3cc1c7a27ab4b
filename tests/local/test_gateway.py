"""The local gateway builds the same proxy events and routes as the deployed API."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from onnxlift_serving.contract import allowed_methods

from onnxlift.local.gateway import (
    FunctionTarget,
    GatewayConfig,
    build_event,
    resolve_route,
)
from onnxlift.local.lambda_runtime import make_server
from onnxlift.local.processes import free_port
from tests.local.conftest import running_gateway

CONFIG = GatewayConfig(
    api_key="k",
    functions={"minilm": FunctionTarget("minilm", "127.0.0.1", 1)},
    default_function="minilm",
)


def test_routes_mirror_the_api_resources() -> None:
    assert resolve_route("/v2/models/minilm/infer", CONFIG) == (
        "minilm",
        "/v2/models/minilm/infer",
        {},
    )
    assert resolve_route("/v2/models/minilm/versions/3/infer", CONFIG) == (
        "minilm",
        "/v2/models/minilm/versions/{version}/infer",
        {"version": "3"},
    )
    assert resolve_route("/v2/models/minilm", CONFIG) == ("minilm", "/v2/models/minilm", {})
    assert resolve_route("/v2/health/ready", CONFIG)[0] == "minilm"
    assert resolve_route("/v2/models/other/infer", CONFIG) == (
        "",
        "/v2/models/{name}/{proxy+}",
        {"name": "other"},
    )
    assert resolve_route("/v2/models/other/any/depth", CONFIG) == (
        "",
        "/v2/models/{name}/{proxy+}",
        {"name": "other"},
    )
    assert resolve_route("/metrics", CONFIG) is None
    assert resolve_route("/v2/models/minilm/nothing-here", CONFIG) is None
    assert allowed_methods("/v2/models/minilm/infer") == ("POST",)
    assert allowed_methods("/v2/health/live") == ("GET",)


def test_event_is_a_rest_v1_proxy_event() -> None:
    event = build_event(
        method="POST",
        path="/v2/models/minilm/infer",
        query="a=1&a=2",
        headers={"content-type": "application/json", "x-api-key": "k"},
        body=b'{"x": 1}',
        resource="/v2/models/minilm/infer",
        path_parameters=None,
        config=CONFIG,
        source_ip="127.0.0.1",
        api_key="k",
    )
    assert event["httpMethod"] == "POST" and event["body"] == '{"x": 1}'
    assert event["isBase64Encoded"] is False
    assert event["queryStringParameters"] == {"a": "2"}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"]}
    context = event["requestContext"]
    assert context["stage"] == "v1" and context["path"] == "/v1/v2/models/minilm/infer"
    assert context["identity"]["apiKey"] == "k" and context["requestId"]


def test_binary_bodies_travel_base64() -> None:
    event = build_event(
        method="POST",
        path="/x",
        query="",
        headers={"content-type": "application/octet-stream"},
        body=b"\x00\xff",
        resource="/x",
        path_parameters=None,
        config=CONFIG,
        source_ip="127.0.0.1",
        api_key=None,
    )
    assert event["isBase64Encoded"] is True and event["body"] == "AP8="


# -- over HTTP: the gateway in front of a local Lambda runtime, both on 127.0.0.1 -------------


def fake_function(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A proxy-integration function: echoes the method, answers binary, fails on request
    (the version says how)."""
    version = (event["pathParameters"] or {}).get("version")
    if version == "boom":
        raise RuntimeError("boom")
    if version == "slow":
        time.sleep(0.6)
    return {
        "statusCode": 201,
        "headers": {"X-Method": event["httpMethod"], "Content-Length": "999"},
        "multiValueHeaders": {"X-Multi": ["a", "b"]},
        "body": base64.b64encode(b"\x00\x01").decode(),
        "isBase64Encoded": True,
    }


@pytest.fixture(scope="module")
def api() -> Iterator[str]:
    function = make_server(
        fake_function,
        host="127.0.0.1",
        port=0,
        function_name="minilm",
        memory_mb=128,
        timeout_s=3,
    )
    function.start()
    port = function.port
    config = GatewayConfig(
        api_key="k",
        functions={
            "minilm": FunctionTarget("minilm", "127.0.0.1", port),
            "gone": FunctionTarget("gone", "127.0.0.1", free_port()),
        },
        default_function="minilm",
        max_body=64,
        timeout_s=0.3,
    )
    try:
        with running_gateway(config) as url:
            yield url
    finally:
        function.stop()


def call(
    api: str, path: str, *, key: str | None = "k", method: str = "POST", body: bytes = b"{}"
) -> requests.Response:
    headers = {} if key is None else {"x-api-key": key}
    return requests.request(method, api + path, data=body, headers=headers, timeout=5)


def test_the_functions_reply_comes_back_as_it_made_it(api: str) -> None:
    response = call(api, "/v2/models/minilm/infer")
    assert response.status_code == 201 and response.content == b"\x00\x01"
    assert response.headers["X-Method"] == "POST" and response.headers["X-Multi"] == "a, b"
    assert response.headers["Content-Type"] == "application/json"  # the gateway's default
    assert response.headers["Content-Length"] == "2"  # the function's own is not copied
    assert response.headers["x-amzn-RequestId"] and response.headers["x-onnxlift-gateway-ms"]
    get = call(api, "/v2/models/minilm", method="GET", body=b"")
    assert get.status_code == 201 and get.headers["X-Method"] == "GET"


METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "BREW")
PATHS = ("/", "/metrics", "/v2/health/live", "/v2/models/minilm/infer", "/v2/models/nope/x")


def test_without_the_key_every_path_and_method_is_403(api: str) -> None:
    for method in METHODS:
        for path in PATHS:
            for key, reason in ((None, "missing"), ("wrong", "invalid")):
                response = call(api, path, key=key, method=method)
                assert response.status_code == 403, (method, path, response.text)
                if method != "HEAD":
                    assert response.json() == {"error": f"Forbidden: {reason} API key"}
                assert response.headers["Content-Type"] == "application/json"


def test_with_the_key_unknown_paths_are_404_and_other_methods_405(api: str) -> None:
    cases = [
        (call(api, "/metrics"), 404, "no route for POST /metrics"),
        (call(api, "/v2/models/minilm/boom"), 404, "no route for POST /v2/models/minilm/boom"),
        (call(api, "/v2/models/nope/infer"), 404, "model 'nope' not found"),
        (call(api, "/v2/models/nope", method="DELETE"), 404, "model 'nope' not found"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, response.text
        assert response.json() == {"error": message}
        assert response.headers["Content-Type"] == "application/json"
    for method, path, allow in [
        ("GET", "/v2/models/minilm/infer", "POST"),
        ("OPTIONS", "/v2/models/minilm/versions/3/infer", "POST"),
        ("POST", "/v2/health/ready", "GET"),
        ("TRACE", "/v2/models/minilm", "GET"),
        ("BREW", "/v2/models/minilm/ready", "GET"),
    ]:
        response = call(api, path, method=method)
        assert response.status_code == 405, (method, path, response.text)
        assert response.headers["Allow"] == allow
        assert response.json() == {"error": f"method {method} is not allowed on {path}"}


def test_a_body_over_the_limit_is_413_before_anything_else(api: str) -> None:
    response = call(api, "/v2/models/minilm/infer", key=None, body=b"x" * 65)
    assert response.status_code == 413
    assert response.json() == {"error": "Request too large: 65 bytes; the limit is 64"}


def test_function_failures_are_api_gateway_errors(api: str) -> None:
    boom = call(api, "/v2/models/minilm/versions/boom/infer")
    assert boom.status_code == 502 and "unhandled error" in boom.json()["error"]
    gone = call(api, "/v2/models/gone/infer")
    assert gone.status_code == 503 and gone.headers["Retry-After"] == "5"
    assert gone.json() == {"error": "function 'gone' is not reachable"}
    slow = call(api, "/v2/models/minilm/versions/slow/infer")
    assert slow.status_code == 504 and slow.json() == {"error": "Endpoint request timed out"}
    time.sleep(0.4)  # the sandbox ends the timed-out event first: one event at a time
    assert call(api, "/v2/models/minilm/infer").status_code == 201  # and it recovers


def test_a_function_s_own_connection_and_date_headers_are_remapped() -> None:
    from onnxlift.local.gateway import proxy_reply

    raw = b'{"statusCode": 200, "headers": {"Connection": "close", "Date": "x", "X-A": "1"}}'
    status, headers, _ = proxy_reply(raw)
    assert status == 200
    assert headers == {
        "x-amzn-Remapped-Connection": "close",
        "x-amzn-Remapped-Date": "x",
        "X-A": "1",
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"statusCode": "x"}',
        b'{"statusCode": 200, "body": 5}',
        b'{"statusCode": 200, "body": "***", "isBase64Encoded": true}',
        b'{"statusCode": 200, "headers": [1]}',
        b'{"statusCode": 200, "multiValueHeaders": {"a": 3}}',
    ],
)
def test_a_malformed_function_result_is_a_502_not_a_dropped_reply(raw: bytes) -> None:
    from onnxlift.local.gateway import proxy_reply

    status, _, body = proxy_reply(raw)
    assert status == 502 and json.loads(body) == {"error": "Malformed Lambda proxy response"}
