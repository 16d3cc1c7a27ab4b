"""The local gateway serves the API's OpenAPI document at /openapi.json, with no key; every
other path stays behind the key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from onnxlift_serving.contract import ROUTES

from onnxlift.local.gateway import FunctionTarget, GatewayConfig
from onnxlift.local.processes import free_port
from tests.local.conftest import running_gateway


@pytest.fixture(scope="module")
def gateway() -> Iterator[str]:
    config = GatewayConfig(
        api_key="k",
        functions={"secret-model": FunctionTarget("secret-model", "127.0.0.1", free_port())},
        default_function="secret-model",
        timeout_s=0.5,
    )
    with running_gateway(config) as url:
        yield url


def test_openapi_json_needs_no_key_and_names_no_model(gateway: str) -> None:
    from openapi_spec_validator import validate

    response = requests.get(f"{gateway}/openapi.json", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    validate(doc)
    assert doc["servers"] == [{"url": gateway}]
    assert set(doc["paths"]) == {route.template for route in ROUTES}
    assert "secret-model" not in response.text
    head = requests.head(f"{gateway}/openapi.json", timeout=5)
    assert head.status_code == 200 and head.content == b""


def test_everything_else_still_needs_the_key(gateway: str) -> None:
    assert requests.get(f"{gateway}/v2", timeout=5).status_code == 403
    # only GET and HEAD of the document are keyless; the rest is 403 first, then routed
    for method, path in (("POST", "/openapi.json"), ("GET", "/openapi.yaml")):
        assert requests.request(method, f"{gateway}{path}", timeout=5).status_code == 403
        keyed = requests.request(method, f"{gateway}{path}", headers={"x-api-key": "k"}, timeout=5)
        assert keyed.status_code == 404 and "error" in keyed.json()
