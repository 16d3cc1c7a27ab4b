"""Real V2 clients against `onnxlift up` on 127.0.0.1: tritonclient's HTTP client, every call it
offers, and a schemathesis run driven by the OpenAPI document the gateway serves.

Calls that make no sense for this service (model repository, statistics, trace and log
settings, shared memory) are expected failures: each must be a clear JSON 4xx, never a 5xx.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TEXTS = ["first sentence", "second one"]
UNSUPPORTED = "4xx"  # an expected failure: a JSON error with a 4xx status


class ApiKey:
    """A tritonclient plugin that adds the API key to every request."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, request: Any) -> None:
        request.headers["x-api-key"] = self.key


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> Iterator[Any]:
    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(
        stack["url"].removeprefix("http://"), concurrency=4, network_timeout=60
    )
    triton.register_plugin(ApiKey(stack["api_key"]))
    yield triton
    triton.close()


def text_inputs(binary: bool) -> list[Any]:
    import tritonclient.http as httpclient

    tensor = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array(TEXTS, dtype=object), binary_data=binary)
    return [tensor]


def embedding(binary: bool) -> list[Any]:
    import tritonclient.http as httpclient

    return [httpclient.InferRequestedOutput("embedding", binary_data=binary)]


def reference(stack: dict[str, Any], model: str = "minilm") -> np.ndarray:
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]}
    response = requests.post(
        f"{stack['url']}/v2/models/{model}/infer",
        json=body,
        headers={"x-api-key": stack["api_key"]},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(2, -1)


def run(call: Callable[[], Any]) -> tuple[str, Any]:
    """('ok', result) or (HTTP status, message) for a call that raised."""
    from tritonclient.utils import InferenceServerException

    try:
        return "ok", call()
    except InferenceServerException as error:
        return str(error.status()), error.message()


def coverage_calls(client: Any, stack: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Every HTTP call tritonclient.http.InferenceServerClient offers (inference ones apart)."""
    version = stack["models"]["minilm"]["version"]
    return {
        "is_server_live": client.is_server_live,
        "is_server_ready": client.is_server_ready,
        "is_model_ready": lambda: client.is_model_ready("minilm"),
        "is_model_ready(version)": lambda: client.is_model_ready("minilm", version),
        "is_model_ready(unknown model)": lambda: client.is_model_ready("nope"),
        "get_server_metadata": client.get_server_metadata,
        "get_model_metadata": lambda: client.get_model_metadata("minilm"),
        "get_model_metadata(version)": lambda: client.get_model_metadata("minilm", version),
        "get_model_metadata(unknown model)": lambda: client.get_model_metadata("nope"),
        "get_model_config": lambda: client.get_model_config("minilm"),
        "get_model_config(version)": lambda: client.get_model_config("minilm", version),
        "get_model_config(sagemaker model)": lambda: client.get_model_config("minilm-fp32"),
        "get_model_repository_index": client.get_model_repository_index,
        "load_model": lambda: client.load_model("minilm"),
        "unload_model": lambda: client.unload_model("minilm"),
        "get_inference_statistics": lambda: client.get_inference_statistics("minilm"),
        "get_inference_statistics(all)": client.get_inference_statistics,
        "update_trace_settings": lambda: client.update_trace_settings(settings={"x": ["1"]}),
        "get_trace_settings": client.get_trace_settings,
        "update_log_settings": lambda: client.update_log_settings({"log_info": True}),
        "get_log_settings": client.get_log_settings,
        "get_system_shared_memory_status": client.get_system_shared_memory_status,
        "register_system_shared_memory": lambda: client.register_system_shared_memory("r", "/k", 8),
        "unregister_system_shared_memory": client.unregister_system_shared_memory,
        "get_cuda_shared_memory_status": client.get_cuda_shared_memory_status,
        "register_cuda_shared_memory": lambda: client.register_cuda_shared_memory(
            "r", b"handle", 0, 8
        ),
        "unregister_cuda_shared_memory": client.unregister_cuda_shared_memory,
    }


def test_every_tritonclient_call(client: Any, stack: dict[str, Any]) -> None:
    version = stack["models"]["minilm"]["version"]
    expected: dict[str, Any] = {
        "is_server_live": True,
        "is_server_ready": True,
        "is_model_ready": True,
        "is_model_ready(version)": True,
        "is_model_ready(unknown model)": False,
        "get_server_metadata": lambda m: (
            m["name"] == "onnxlift"
            and m["extensions"] == ["binary_tensor_data", "model_configuration"]
        ),
        "get_model_metadata": lambda m: m["versions"] == [version],
        "get_model_metadata(version)": lambda m: m["inputs"][0]["name"] == "text",
        "get_model_metadata(unknown model)": UNSUPPORTED,
        "get_model_config": lambda c: (
            c["platform"] == "onnxruntime_onnx"
            and c["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": []}]
        ),
        "get_model_config(version)": lambda c: c["versions"] == [version],
        "get_model_config(sagemaker model)": lambda c: c["name"] == "minilm-fp32",
    }
    table: dict[str, str] = {}
    for name, call in coverage_calls(client, stack).items():
        outcome, value = run(call)
        want = expected.get(name, UNSUPPORTED)
        if want == UNSUPPORTED:
            ok = outcome != "ok" and 400 <= int(outcome) < 500 and bool(value)
        elif callable(want):
            ok = outcome == "ok" and bool(want(value))
        else:
            ok = outcome == "ok" and value == want
        table[name] = f"{'PASS' if ok else 'FAIL'} {outcome}: {str(value)[:90]}"
    print("\n" + "\n".join(f"{k:40} {v}" for k, v in table.items()))
    assert [k for k, v in table.items() if v.startswith("FAIL")] == [], table


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_infer_json_binary_and_compressed(
    client: Any,
    stack: dict[str, Any],
    compression: str | None,
    binary_in: bool,
    binary_out: bool,
) -> None:
    result = client.infer(
        "minilm",
        text_inputs(binary_in),
        outputs=embedding(binary_out),
        request_id="t1",
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    assert result.get_response()["id"] == "t1"
    assert ("parameters" in result.get_output("embedding")) == binary_out
    np.testing.assert_allclose(result.as_numpy("embedding"), reference(stack), atol=1e-5)


def test_infer_every_model_and_path_in_binary(client: Any, stack: dict[str, Any]) -> None:
    import tritonclient.http as httpclient

    version = stack["models"]["minilm"]["version"]
    pinned = client.infer("minilm", text_inputs(True), model_version=version)  # all outputs
    np.testing.assert_allclose(pinned.as_numpy("embedding"), reference(stack), atol=1e-5)
    via_sagemaker = client.infer(
        "minilm-fp32", text_inputs(True), request_compression_algorithm="gzip"
    )
    np.testing.assert_allclose(
        via_sagemaker.as_numpy("embedding"), reference(stack, "minilm-fp32"), atol=1e-5
    )
    textclf = client.infer("textclf", text_inputs(True))
    assert textclf.as_numpy("label").shape == (2,)
    rows = np.zeros((3, 30), dtype=np.float32)
    features = httpclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows)
    tabular = client.infer("tabular", [features])
    assert tabular.as_numpy("probabilities").shape == (3, 2)
    assert len(tabular.as_numpy("label")) == 3


def test_async_infer(client: Any, stack: dict[str, Any]) -> None:
    pending = [
        client.async_infer("minilm", text_inputs(i % 2 == 0), request_id=f"a{i}") for i in range(4)
    ]
    results = [p.get_result(timeout=60) for p in pending]
    assert [r.get_response()["id"] for r in results] == [f"a{i}" for i in range(4)]
    for result in results:
        np.testing.assert_allclose(result.as_numpy("embedding"), reference(stack), atol=1e-5)


def test_infer_mistakes_are_client_errors(client: Any) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    wrong = httpclient.InferInput("nope", [1], "BYTES")
    wrong.set_data_from_numpy(np.array(["x"], dtype=object))
    for model, inputs in (("minilm", [wrong]), ("nope", text_inputs(True))):
        with pytest.raises(InferenceServerException) as raised:
            client.infer(model, inputs)
        assert raised.value.status() in ("404", "422"), raised.value


# -- schemathesis, driven by the served OpenAPI document --------------------------------------
MAX_EXAMPLES = 40  # per operation and mode: 11 operations x 2 modes x 40, about a minute


def test_openapi_is_served_without_a_key(stack: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    response = requests.get(f"{stack['url']}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    validate(response.json())
    assert json.dumps(response.json()).count("minilm") == 0  # names no model without the key


def test_schemathesis_finds_no_server_error(stack: dict[str, Any]) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

    doc = requests.get(f"{stack['url']}/openapi.json", timeout=10).json()
    doc["components"]["parameters"]["name"]["schema"]["enum"] = sorted(stack["models"])
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"x-api-key": stack["api_key"]}
    failures: list[str] = []
    counts: dict[int, int] = {}

    def check(case: Any) -> None:
        # The key always goes along (negative cases would otherwise mostly meet the 403).
        case.headers = {**(case.headers or {}), **headers}
        response = case.call(base_url=stack["url"], timeout=30)
        counts[response.status_code] = counts.get(response.status_code, 0) + 1
        retry = response.status_code == 503 and "retry-after" in response.headers
        if response.status_code >= 500 and not retry:
            failures.append(f"{response.status_code} {case.method} {case.path}: {response.text}")
        elif response.status_code >= 400:
            assert "error" in response.json(), response.text
            documented = case.operation.definition.raw["responses"]
            assert str(response.status_code) in documented, (case.path, response.status_code)

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run_cases = settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )(given(case=operation.as_strategy(generation_mode=mode))(check))
            run_cases()
    print(f"\nschemathesis: {sum(counts.values())} requests, statuses {sorted(counts.items())}")
    assert failures == []
