"""`onnxlift up` as a user runs it: real processes, real HTTP on 127.0.0.1, then Ctrl-C."""

from __future__ import annotations

import itertools
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from onnxlift_serving import protocol
from onnxlift_serving.contract import API_BODY_BYTES

from onnxlift.local.processes import port_in_use
from tests.conftest import ROOT
from tests.local.conftest import run_cli, start_stack, stop_stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TEXTS = ["first sentence", "second one"]


def infer(
    stack: dict[str, Any],
    body: Any,
    *,
    key: str | None = "use",
    model: str = "minilm",
    raw: str | None = None,
) -> requests.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = stack["api_key"] if key == "use" else key
    data = raw if raw is not None else json.dumps(body)
    return requests.post(
        f"{stack['url']}/v2/models/{model}/infer", data=data, headers=headers, timeout=30
    )


def good_body() -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": TEXTS}]}


def test_local_json_tells_scripts_where_everything_is(stack: dict[str, Any]) -> None:
    assert stack["url"].startswith("http://127.0.0.1:")
    assert stack["aws_endpoint_url"].startswith("http://127.0.0.1:")
    assert len(stack["api_key"]) >= 20
    assert stack["models"]["minilm"]["version"]


def test_good_request_returns_embeddings_matching_pytorch(
    stack: dict[str, Any], reference_embeddings: Any
) -> None:
    response = infer(stack, good_body())
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("embedding", "FP32", [2, 384])
    served = np.asarray(output["data"], dtype=np.float32).reshape(2, 384)
    assert float((served * reference_embeddings(TEXTS)).sum(axis=1).min()) >= 0.99


def test_client_errors_over_http(stack: dict[str, Any]) -> None:
    cases = [
        (infer(stack, good_body(), key=None), 403, "missing API key"),
        (infer(stack, good_body(), key="wrong"), 403, "invalid API key"),
        (infer(stack, None, raw="{oops"), 400, "not valid JSON"),
        (infer(stack, good_body(), model="nope"), 404, "'nope' not found"),
        (
            infer(
                stack,
                {"inputs": [{"name": "text", "shape": [5], "datatype": "BYTES", "data": TEXTS}]},
            ),
            422,
            "holds 5 elements",
        ),
    ]
    for response, status, fragment in cases:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert fragment in response.json()["error"]


def test_metadata_and_health_through_the_gateway(stack: dict[str, Any]) -> None:
    headers = {"x-api-key": stack["api_key"]}
    meta = requests.get(f"{stack['url']}/v2/models/minilm", headers=headers, timeout=10)
    assert meta.status_code == 200
    assert meta.json()["versions"] == [stack["models"]["minilm"]["version"]]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/minilm/ready"):
        assert requests.get(stack["url"] + path, headers=headers, timeout=10).status_code == 200


def test_concurrent_requests_are_all_answered(stack: dict[str, Any]) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: infer(stack, good_body()).status_code, range(32)))
    assert statuses == [200] * 32


def cli(stack: dict[str, Any], *args: str) -> str:
    result = run_cli(stack["_state"], *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def answering_version(stack: dict[str, Any], want: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        version = infer(stack, good_body()).json()["model_version"]
        if version == want or time.monotonic() > deadline:
            return version
        time.sleep(0.2)


def test_promote_and_rollback_move_traffic_without_a_restart(stack: dict[str, Any]) -> None:
    first = stack["models"]["minilm"]["version"]
    assert "published minilm version" in cli(stack, "publish", "minilm")
    listed = [r for r in json.loads(cli(stack, "list", "--json")) if r["name"] == "minilm"]
    second = max((r["version"] for r in listed), key=int)
    assert second != first
    assert [r["aliases"] for r in listed if r["version"] == first] == [["prod"]]

    assert f"prod -> version {second}" in cli(stack, "promote", "minilm", second)
    assert answering_version(stack, second) == second
    assert f"prod -> version {first} (rolled back)" in cli(stack, "rollback", "minilm")
    assert answering_version(stack, first) == first
    pinned = requests.post(
        f"{stack['url']}/v2/models/minilm/versions/{second}/infer",
        json=good_body(),
        headers={"x-api-key": stack["api_key"]},
        timeout=30,
    )
    assert pinned.status_code == 200 and pinned.json()["model_version"] == second


def load_model_source(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"e2e_{name}", ROOT / "models" / name / "source.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tabular_keras_model_classifies_held_out_rows(stack: dict[str, Any]) -> None:
    _, x_test, _, y_test, names = load_model_source("tabular").dataset()
    body = {
        "inputs": [
            {
                "name": "features",
                "shape": list(x_test.shape),
                "datatype": "FP32",
                "data": x_test.ravel().tolist(),
            }
        ]
    }
    response = infer(stack, body, model="tabular")
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["datatype"] == "BYTES"
    assert outputs["probabilities"]["shape"] == [len(x_test), 2]
    accuracy = np.mean(np.array(outputs["label"]["data"]) == np.array(names)[y_test])
    assert accuracy >= 0.9, accuracy
    wrong = infer(
        stack,
        {"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        model="tabular",
    )
    assert wrong.status_code == 422 and "expects [-1, 30]" in wrong.json()["error"]


def test_textclf_answers_like_scikit_learn(stack: dict[str, Any]) -> None:
    pipeline, _, _ = load_model_source("textclf").train()
    probe = [
        "The striker scored twice in the final",
        "HEAVY RAIN FLOODED THE VALLEY",
        "the chef baked sourdough bread",
        "engineers shipped the software update",
        "Ünïcode and unseen words entirely",
    ]
    body = {"inputs": [{"name": "text", "shape": [len(probe)], "datatype": "BYTES", "data": probe}]}
    response = infer(stack, body, model="textclf")
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"]["data"] == list(pipeline.predict(probe))
    assert outputs["label"]["data"][:4] == ["sports", "weather", "food", "tech"]
    probabilities = np.asarray(outputs["probabilities"]["data"]).reshape(len(probe), -1)
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(probe), atol=1e-5)


def test_sagemaker_model_answers_through_the_gateway_and_boto3(stack: dict[str, Any]) -> None:
    import boto3
    from onnxlift_serving.service import ModelService, ServiceConfig

    assert stack["models"]["minilm-fp32"]["version"]
    endpoint = next(iter(stack["sagemaker"]["endpoints"]))
    via_gateway = infer(stack, good_body(), model="minilm-fp32")
    assert via_gateway.status_code == 200, via_gateway.text
    client = boto3.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        endpoint_url=stack["sagemaker"]["runtime_url"],
    )
    raw = client.invoke_endpoint(
        EndpointName=endpoint, ContentType="application/json", Body=json.dumps(good_body())
    )
    via_boto3 = json.loads(raw["Body"].read())
    version = stack["models"]["minilm-fp32"]["version"]
    folder = stack["_state"] / "sagemaker-cache" / "minilm-fp32" / version
    service = ModelService(ServiceConfig(name="minilm-fp32", version=version, model_dir=folder))
    in_process = json.loads(protocol.dumps(service.infer(json.dumps(good_body()), "minilm-fp32")))
    assert via_gateway.json() == in_process == via_boto3
    with pytest.raises(client.exceptions.ModelError, match="not valid JSON"):
        client.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Body=b"{oops")


# -- the local Lambda service under load: sandboxes, throttling, memory ----------------------
LOAD_CLIENTS = 32
LOAD_SECONDS = 60.0
WARMUP_SECONDS = 5.0  # the pool grows to its limit and every sandbox has run events
TOPICS = ["football", "rain", "bread", "software", "violins", "rivers", "chess", "tea"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def sandbox_pids(stack: dict[str, Any], function: str) -> set[int]:
    """The function's sandbox processes: children of `onnxlift up` running its handler."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            parent == stack["pid"]
            and b"onnxlift.local.lambda_runtime" in argv
            and argv[argv.index(b"--function-name") + 1] == function.encode()
        ):
            pids.add(int(entry.name))
    return pids


def memory(stack: dict[str, Any], function: str) -> dict[str, Any]:
    pids = sandbox_pids(stack, function)
    return {
        "pids": pids,
        "sandboxes_mb": round(sum(rss_mb(p) for p in pids), 1),
        "gateway_mb": round(rss_mb(stack["pid"]), 1),
    }


def grew_by(before: dict[str, Any], after: dict[str, Any], key: str) -> float:
    return after[key] / before[key] - 1


def embed_one(stack: dict[str, Any], text: str, rid: str, session: Any = requests) -> Any:
    tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}
    body = {"id": rid, "inputs": [tensor]}
    return session.post(
        f"{stack['url']}/v2/models/minilm/infer",
        json=body,
        headers={"x-api-key": stack["api_key"]},
        timeout=60,
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_comes_back_after_a_burst_of_bodies_at_the_limit(stack: dict[str, Any]) -> None:
    """Bodies at the API's limit (API_BODY_BYTES, 4.67 MB: what fits a 6 MB Lambda event as
    base64) of two kinds: 16 texts of 256 tokens padded with JSON whitespace (the body through
    gateway and sandbox, the model's largest activations), and four texts of 1.1 MB each (the
    tokenizer on long strings). The first of each sets the baseline."""
    words = " ".join(f"{TOPICS[i % 8]} item{i}" for i in range(200))
    batch = [f"{i} {words}" for i in range(16)]
    padded = json.dumps(
        {"inputs": [{"name": "text", "shape": [16], "datatype": "BYTES", "data": batch}]}
    )
    padded = padded[:-1] + " " * (API_BODY_BYTES - len(padded)) + "}"
    long_text = ("onnxlift " * 130_000)[:1_160_000]
    long = json.dumps(
        {"inputs": [{"name": "text", "shape": [4], "datatype": "BYTES", "data": [long_text] * 4}]}
    )
    bodies = [padded, long]
    assert all(API_BODY_BYTES - 50_000 <= len(b.encode()) <= API_BODY_BYTES for b in bodies)
    embed_one(stack, "settle", "settle")
    cold = memory(stack, "minilm")  # before any large request
    for raw in bodies:  # warm: the first large request of each kind
        assert infer(stack, None, raw=raw).status_code == 200
    embed_one(stack, "settle", "settle")  # read once the sandbox has freed the last body
    before = memory(stack, "minilm")
    started = time.monotonic()
    for raw in bodies * 2:
        response = infer(stack, None, raw=raw)
        assert response.status_code == 200, response.text[:300]
    embed_one(stack, "settle", "settle")
    after = memory(stack, "minilm")
    print(
        f"\nlarge-body burst: 4 requests in {time.monotonic() - started:.1f} s; minilm "
        f"sandboxes {cold['sandboxes_mb']} (before any) -> {before['sandboxes_mb']} (after the "
        f"first two) -> {after['sandboxes_mb']} MB, gateway (onnxlift up) {cold['gateway_mb']} "
        f"-> {before['gateway_mb']} -> {after['gateway_mb']} MB"
    )
    assert after["pids"] == before["pids"]
    assert grew_by(before, after, "sandboxes_mb") < 0.05, (before, after)
    assert grew_by(before, after, "gateway_mb") < 0.05, (before, after)
    # what the first large requests kept: the tokenizer's and the heap's high-water marks
    if cold["pids"] == after["pids"]:
        assert grew_by(cold, after, "sandboxes_mb") < 0.15, (cold, after)
    assert grew_by(cold, after, "gateway_mb") < 0.15, (cold, after)


def load(stack: dict[str, Any], texts: list[str], reference: Any, seconds: float) -> dict:
    """LOAD_CLIENTS clients, each on its own keep-alive connection, sending one text with a
    unique id again and again for `seconds`; a throttled client waits 50 ms and goes on."""
    deadline = time.monotonic() + seconds
    records: list[tuple[int, float, str | None]] = []  # status, seconds, what went wrong
    lock = threading.Lock()

    def client(n: int) -> None:
        session = requests.Session()
        for i in itertools.count():
            if time.monotonic() > deadline:
                return
            rid, k = f"client{n}-request{i}", (n + i) % len(texts)
            started = time.perf_counter()
            response = embed_one(stack, texts[k], rid, session)
            problem = None
            if response.status_code == 200:
                answer = response.json()
                served = np.asarray(answer["outputs"][0]["data"], dtype=np.float32)
                if answer.get("id") != rid or float(served @ reference[k]) < 0.9999:
                    problem = f"cross-talk: sent {rid}, got {answer.get('id')}"
            elif response.status_code == 429:
                if "Retry-After" not in response.headers or "error" not in response.json():
                    problem = f"429 without Retry-After or JSON error: {response.text[:200]}"
                time.sleep(0.05)
            else:
                problem = f"{response.status_code}: {response.text[:200]}"
            with lock:
                records.append((response.status_code, time.perf_counter() - started, problem))

    with ThreadPoolExecutor(LOAD_CLIENTS) as clients:
        list(clients.map(client, range(LOAD_CLIENTS)))
    answered = sorted(t for status, t, _ in records if status == 200)
    return {
        "requests": len(records),
        "answered": len(answered),
        "throttled": sum(status == 429 for status, _, _ in records),
        "problems": [p for _, _, p in records if p],
        "p50_ms": round(answered[len(answered) // 2] * 1000, 1),
        "p99_ms": round(answered[int(len(answered) * 0.99)] * 1000, 1),
    }


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_32_clients_for_60_s_never_get_each_others_answers(stack: dict[str, Any]) -> None:
    """Every answer is the request's own (its id, the embedding of its text), nothing but 200
    or 429 comes back, and the sandboxes and the gateway hold no more memory at the end."""
    texts = [f"a sentence about {topic} number {i}" for i, topic in enumerate(TOPICS * 2)]
    reference = []
    for i, text in enumerate(texts):
        (output,) = embed_one(stack, text, f"reference{i}").json()["outputs"]
        reference.append(np.asarray(output["data"], dtype=np.float32))
    warmup = load(stack, texts, reference, WARMUP_SECONDS)
    before = memory(stack, "minilm")
    figures = load(stack, texts, reference, LOAD_SECONDS)
    after = memory(stack, "minilm")
    print(
        f"\nload: {LOAD_CLIENTS} clients x {LOAD_SECONDS:.0f} s on minilm: "
        f"{figures['requests']} requests, {figures['answered']} answered, "
        f"{figures['throttled']} throttled (429), p50 {figures['p50_ms']} ms, "
        f"p99 {figures['p99_ms']} ms; {len(after['pids'])} sandboxes "
        f"{before['sandboxes_mb']} -> {after['sandboxes_mb']} MB, gateway "
        f"{before['gateway_mb']} -> {after['gateway_mb']} MB"
    )
    assert warmup["problems"] == [] and figures["problems"] == [], figures["problems"][:10]
    assert figures["answered"] > LOAD_CLIENTS and figures["throttled"] > 0
    assert after["pids"] == before["pids"] and 1 < len(after["pids"]) <= 10
    assert grew_by(before, after, "sandboxes_mb") < 0.05, (before, after)
    assert grew_by(before, after, "gateway_mb") < 0.05, (before, after)


# Last: it stops the module's stack.
def test_ctrl_c_stops_everything_and_keeps_what_was_published(stack: dict[str, Any]) -> None:
    process, state = stack["_process"], stack["_state"]
    gateway_port = int(stack["url"].rsplit(":", 1)[1])
    aws_port = int(stack["aws_endpoint_url"].rsplit(":", 1)[1])
    output = stop_stack(process)
    assert process.returncode == 0, output
    assert not (state / "local.json").exists()
    assert not port_in_use(gateway_port) and not port_in_use(aws_port)
    version = stack["models"]["minilm"]["version"]
    kept = state / "registry" / "onnxlift-registry-local" / "models" / "minilm" / version
    assert (kept / "model.onnx").is_file() and (kept / "manifest.json").is_file()

    # Up again: the same version is served from the kept registry, nothing republished.
    process, info = start_stack(state)
    try:
        assert info["models"]["minilm"]["version"] == version
        assert infer(info, good_body()).status_code == 200
    finally:
        output = stop_stack(process)
    assert "matches this build" in output and "published version" not in output
    assert info["models"]["minilm"]["version"] == version
