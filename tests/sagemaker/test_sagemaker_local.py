"""The local SageMaker: the real container (gunicorn + the app) on loopback, InvokeEndpoint in
front of it for boto3, and the API path a client takes: gateway -> proxy function -> endpoint."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
import requests
from onnxlift_serving import protocol
from onnxlift_serving.service import ModelService, ServiceConfig

from onnxlift.local.gateway import FunctionTarget, Gateway, GatewayConfig
from onnxlift.local.lambda_runtime import HEALTH_PATH
from onnxlift.local.processes import base_env, free_port, start_child, wait_http
from onnxlift.local.sagemaker_server import LocalSageMaker, start_sagemaker_models
from tests.conftest import ROOT, published_copy

# Starts the local SageMaker runtime and container processes on loopback.
pytestmark = pytest.mark.e2e

PROXY = ROOT / "functions" / "sagemaker" / "proxy" / "proxy_handler.py"
API_KEY = "local-test-key"
BODY = {
    "id": "q-1",
    "inputs": [
        {
            "name": "text",
            "shape": [3],
            "datatype": "BYTES",
            "data": ["a sentence to embed", "another one", "ünïcödé ✓"],
        }
    ],
}
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def artifact(minilm_build: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return published_copy(minilm_build.folder, tmp_path_factory.mktemp("registry") / "minilm-1")


@pytest.fixture(scope="module")
def expected(artifact: Path) -> dict[str, Any]:
    service = ModelService(ServiceConfig(name="minilm", version="1", model_dir=artifact, threads=1))
    return json.loads(protocol.dumps(service.infer(json.dumps(BODY), "minilm")))


@pytest.fixture(scope="module")
def local(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSageMaker]:
    work = tmp_path_factory.mktemp("sagemaker")
    handle = start_sagemaker_models(
        {"minilm": artifact}, log_dir=work / "logs", work_dir=work / "work"
    )
    yield handle
    handle.stop()


@pytest.fixture
def runtime(local: LocalSageMaker, monkeypatch: pytest.MonkeyPatch) -> Any:
    """boto3's client, pointed at the local server the way the issue asks: by environment."""
    for key, value in FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", local.url)
    return boto3.client("sagemaker-runtime")


def test_ping_follows_the_contract(local: LocalSageMaker) -> None:
    container = local.containers["minilm"]
    started = time.perf_counter()
    response = requests.get(f"{container.url}/ping", timeout=2)
    assert response.status_code == 200
    assert time.perf_counter() - started < 0.5
    assert response.json() == {"status": "healthy", "model": "minilm"}


def test_info_lists_the_endpoint(local: LocalSageMaker) -> None:
    info = local.info()
    assert info["env"]["AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME"] == local.url
    assert info["endpoints"]["onnxlift-minilm"]["model"] == "minilm"
    assert local.endpoints == {"onnxlift-minilm": "minilm"}


def test_invoke_endpoint_equals_the_in_process_result(
    runtime: Any, expected: dict[str, Any]
) -> None:
    reply = runtime.invoke_endpoint(
        EndpointName="onnxlift-minilm",
        Body=json.dumps(BODY),
        ContentType="application/json",
        Accept="application/json",
    )
    assert reply["ContentType"] == "application/json"
    assert reply["InvokedProductionVariant"] == "AllTraffic"
    assert json.loads(reply["Body"].read()) == expected


def test_invoke_endpoint_metadata_through_custom_attributes(runtime: Any) -> None:
    reply = runtime.invoke_endpoint(
        EndpointName="onnxlift-minilm", Body=b"{}", CustomAttributes="onnxlift-route=metadata"
    )
    meta = json.loads(reply["Body"].read())
    assert meta["name"] == "minilm" and meta["versions"] == ["1"]
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]


def test_bad_json_is_a_model_error_carrying_the_containers_400(runtime: Any) -> None:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="onnxlift-minilm", Body=b"{not json")
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == 400
    assert "not valid JSON" in json.loads(response["OriginalMessage"])["error"]
    assert "Received client error (400)" in response["Error"]["Message"]
    assert type(caught.value).__name__ == "ModelError"  # boto3's modeled exception class


def test_unknown_endpoint_is_a_validation_error(runtime: Any) -> None:
    with pytest.raises(runtime.exceptions.ValidationError, match=r"Endpoint nope .* not found"):
        runtime.invoke_endpoint(EndpointName="nope", Body=b"{}")


# -- the API path: local gateway -> proxy function (local Lambda runtime) -> endpoint -------


@pytest.fixture(scope="module")
def gateway(local: LocalSageMaker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = (
        base_env()
        | FAKE_AWS
        | {
            "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": local.url,
            "ENDPOINT_NAME": "onnxlift-minilm",
            "MODEL_NAME": "minilm",
        }
    )
    proxy = start_child(
        "proxy minilm",
        [
            "-m",
            "onnxlift.local.lambda_runtime",
            "--handler",
            str(PROXY),
            "--function-name",
            "minilm",
            "--port",
            str(port),
            "--memory-mb",
            "256",
        ],
        log=tmp_path_factory.mktemp("proxy") / "proxy.log",
        env=env,
    )
    gw = None
    try:
        wait_http(proxy, f"http://127.0.0.1:{port}{HEALTH_PATH}", timeout=30)
        target = FunctionTarget("minilm", "127.0.0.1", port)
        gw = Gateway(
            GatewayConfig(api_key=API_KEY, functions={"minilm": target}, default_function="minilm"),
            port=free_port(),
        )
        gw.start()
        yield gw.url
    finally:
        if gw is not None:
            gw.stop()
        proxy.stop()


def _api(gateway: str, method: str, path: str, body: Any = None) -> requests.Response:
    return requests.request(
        method,
        f"{gateway}{path}",
        data=body if isinstance(body, (bytes, str)) or body is None else json.dumps(body),
        headers={"x-api-key": API_KEY, "content-type": "application/json"},
        timeout=30,
    )


def test_gateway_infer_equals_the_in_process_result(gateway: str, expected: dict) -> None:
    response = _api(gateway, "POST", "/v2/models/minilm/infer", BODY)
    assert response.status_code == 200, response.text
    assert response.json() == expected
    assert _api(gateway, "POST", "/v2/models/minilm/versions/1/infer", BODY).json() == expected


def test_gateway_metadata_and_readiness(gateway: str) -> None:
    meta = _api(gateway, "GET", "/v2/models/minilm")
    assert meta.status_code == 200 and meta.json()["versions"] == ["1"]
    assert _api(gateway, "GET", "/v2/models/minilm/ready").json() == {
        "name": "minilm",
        "ready": True,
    }
    assert _api(gateway, "GET", "/v2/health/ready").json() == {"ready": True}
    assert _api(gateway, "GET", "/v2/health/live").json() == {"live": True}


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v2/models/minilm/infer", b"{not json", 400, "not valid JSON"),
        ("POST", "/v2/models/minilm/infer", {"inputs": []}, 400, "inputs"),
        (
            "POST",
            "/v2/models/minilm/infer",
            {"inputs": [{"name": "text", "shape": [1, 1], "datatype": "BYTES", "data": ["x"]}]},
            422,
            "shape",
        ),
        ("GET", "/v2/models/minilm/versions/7/ready", None, 404, "version '7'"),
        ("GET", "/v2/models/minilm/versions/..%2F/ready", None, 404, "does not exist"),
    ],
)
def test_gateway_errors_match_the_lambda_path(
    gateway: str, method: str, path: str, body: Any, status: int, fragment: str
) -> None:
    response = _api(gateway, method, path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


# -- SIGTERM ---------------------------------------------------------------------------------


def test_sigterm_stops_the_container_gracefully(artifact: Path, tmp_path: Path) -> None:
    handle = start_sagemaker_models(
        {"minilm": artifact}, log_dir=tmp_path / "logs", work_dir=tmp_path / "work"
    )
    container = handle.containers["minilm"]
    (child,) = handle.children
    try:
        assert requests.get(f"{container.url}/ping", timeout=2).status_code == 200
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(timeout=15) == 0
        with socket.socket() as sock:
            assert sock.connect_ex((container.host, container.port)) != 0
        log = child.log.read_text()
        assert "Handling signal: term" in log and "Shutting down: Master" in log
    finally:
        handle.stop()
