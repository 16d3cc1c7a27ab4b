"""The SageMaker path takes the same broken requests as the Lambda path, and the same answers:
the container's WSGI app in-process (V2 routes, /invocations with custom attributes, /ping),
then the API's proxy function in front of it with InvokeEndpoint answered by that container."""

from __future__ import annotations

import base64
import collections
import io
import json
import random
import sys
import time
from typing import Any

import pytest
from onnxlift_serving.contract import VERSION_PATTERN

from tests.conftest import ROOT
from tests.sagemaker.conftest import wsgi_call
from tests.serving.test_fuzz import SEED, Generator

sys.path.insert(0, str(ROOT / "functions" / "sagemaker"))

import wsgi

pytestmark = pytest.mark.slow
REQUESTS = 2_000
ATTRIBUTES = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"


def as_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    return body.encode("utf-8", "surrogatepass")


def test_the_measured_cases_on_the_container(app: wsgi.ContainerApp) -> None:
    deep = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
    deep += b"[" * 1000 + b'"x"' + b"]" * 1000 + b"}]}"
    cases = [
        ("POST", "/invocations", b'{"inputs": "\xff"}', 400, "UTF-8"),
        ("POST", "/invocations", deep, 400, "deeper than 400"),
        ("POST", "/v2/models/minilm/versions/" + "a" * 300 + "/infer", b"{}", 404, "not exist"),
        ("GET", "/invocations", b"", 405, "use POST"),
        ("POST", "/ping", b"", 405, "use GET, HEAD"),
        ("OPTIONS", "/v2/models/minilm", b"", 405, "use GET"),
        ("TRACE", "/nowhere", b"", 404, "no route"),
    ]
    for method, path, body, status, fragment in cases:
        got, headers, payload = wsgi_call(app, method, path, body)
        assert got == status and fragment in json.loads(payload)["error"], (path[:60], payload)
        if status == 405:
            assert headers["Allow"]
    for declared in ("-1", "abc", "\u00b2", "1e3"):
        extra = {"CONTENT_LENGTH": declared, "wsgi.input": io.BytesIO(b"x" * 64)}
        status, _, payload = wsgi_call(app, "POST", "/invocations", b"{}", environ_overrides=extra)
        assert status == 400 and "Content-Length" in json.loads(payload)["error"], declared
    status, _, payload = wsgi_call(
        app,
        "POST",
        "/invocations",
        b"{}",
        {ATTRIBUTES: "onnxlift-route=infer; onnxlift-version=01"},
    )
    assert status == 404


def test_fuzz_the_container_never_answers_a_server_error(
    app: wsgi.ContainerApp, capsys: pytest.CaptureFixture[str]
) -> None:
    generator = Generator("minilm", "1", random.Random(f"{SEED}-container"))
    rng = random.Random(SEED)
    counts: collections.Counter[int] = collections.Counter()
    started = time.perf_counter()
    for index in range(REQUESTS):
        method, path, body, b64 = generator.request()
        raw = as_bytes(body)
        extra: dict[str, str] = {}
        if index % 4 == 0:  # the same operations through /invocations, as the proxy sends them
            route = rng.choice(("infer", "metadata", "ready", "health-ready", "health-live", "x"))
            version = rng.choice(("", "1", "2", "01", "a" * 300))
            extra[ATTRIBUTES] = f"onnxlift-route={route}; onnxlift-version={version}"
            method, path = "POST", "/invocations"
        elif index % 17 == 0:
            method, path = rng.choice((("GET", "/ping"), ("HEAD", "/ping"), ("PUT", "/ping")))
        if b64 and isinstance(body, str):
            raw = base64.b64encode(raw)
        status, headers, payload = wsgi_call(app, method, path, raw, environ_overrides=extra)
        assert status < 500 or (status == 503 and headers.get("Retry-After")), (path, payload)
        if status >= 400 and method != "HEAD":
            assert isinstance(json.loads(payload)["error"], str)
        counts[status] += 1
    with capsys.disabled():
        elapsed = time.perf_counter() - started
        histogram = dict(sorted(counts.items()))
        print(f"\ncontainer fuzz: {REQUESTS} requests in {elapsed:.1f}s: {histogram}")
    assert counts[200] >= 100 and not {s for s in counts if s >= 500}


def test_the_proxy_refuses_what_it_can_without_calling_the_endpoint(
    aws_credentials: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.stub import Stubber

    from onnxlift.local.lambda_runtime import load_handler

    monkeypatch.setenv("ENDPOINT_NAME", "onnxlift-minilm")
    monkeypatch.setenv("MODEL_NAME", "minilm")
    load_handler(ROOT / "functions" / "sagemaker" / "proxy" / "proxy_handler.py")
    proxy = sys.modules.pop("proxy_handler")

    def call(method: str, path: str, body: str | None = None, b64: bool = False) -> Any:
        event = {"httpMethod": method, "path": path, "body": body, "isBase64Encoded": b64}
        result = proxy.lambda_handler(event, None)
        return result["statusCode"], result["headers"], json.loads(result["body"])

    assert proxy.VERSION.pattern == f"^{VERSION_PATTERN}$"  # the contract's, in its own copy
    with Stubber(proxy.runtime) as stubber:
        infer = "/v2/models/minilm/infer"
        assert call("POST", infer, "not base64!", b64=True)[0] == 400
        for version in ("a" * 300, "01", "0", "1.0", "1\n"):
            status, _, doc = call("POST", f"/v2/models/minilm/versions/{version}/infer", "{}")
            assert status == 404 and len(doc["error"]) < 200
        status, headers, _ = call("OPTIONS", infer)
        assert status == 405 and headers["Allow"] == "POST"
        assert call("TRACE", "/v2/nothing")[0] == 404
        assert call("BREW", "/v2/models/minilm")[1]["Allow"] == "GET"
        stubber.assert_no_pending_responses()
    # a body with a lone surrogate goes on as bytes that are not UTF-8: the container says 400
    with Stubber(proxy.runtime) as stubber:
        stubber.add_response(
            "invoke_endpoint",
            {"Body": _body(b'{"ok": true}'), "ContentType": "application/json"},
            {
                "EndpointName": "onnxlift-minilm",
                "Body": '{"x": "\ud800"}'.encode("utf-8", "surrogatepass"),
                "ContentType": "application/json",
                "Accept": "application/json",
                "CustomAttributes": "onnxlift-route=infer; onnxlift-model=minilm",
            },
        )
        assert call("POST", infer, '{"x": "\ud800"}')[0] == 200


def _body(raw: bytes) -> Any:
    from botocore.response import StreamingBody

    return StreamingBody(io.BytesIO(raw), len(raw))
