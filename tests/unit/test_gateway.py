"""The local gateway builds the same proxy events and routes as the deployed API."""

from __future__ import annotations

from onnxlift.local.gateway import FunctionTarget, GatewayConfig, build_event, resolve_route

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
    assert resolve_route("/metrics", CONFIG) is None


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
