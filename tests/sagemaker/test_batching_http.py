"""Dynamic batching end to end: the real container (`serve`: gunicorn gthread + the WSGI app)
on 127.0.0.1 with batching switched on as its endpoint would be, the real FP32 MiniLM (the
repo's SageMaker model, models/minilm-fp32), concurrent HTTP clients with distinct texts.
Each answer must be its own texts' embeddings."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from onnxlift_serving.contract import DYNAMIC_BATCHING, MODELS_PREFIX, Env, batching_environment
from onnxlift_serving.service import ModelService, ServiceConfig

from onnxlift.local.processes import base_env, free_port, start_child, wait_http
from onnxlift.local.sagemaker_server import LocalSageMaker, start_sagemaker_models
from tests.conftest import ROOT, published_copy

pytestmark = pytest.mark.e2e
CLIENTS = 24
MODEL = "minilm-fp32"
HOST = "127.0.0.1"
TOPICS = ["rain", "football", "compilers", "bread", "the moon", "tax law", "jazz", "glaciers"]


def texts_for(client: int) -> list[str]:
    """1-3 texts of different lengths, so merged batches pad and no two requests are alike."""
    topic = TOPICS[client % len(TOPICS)]
    base = f"client {client} writes about {topic}"
    return [base + " and more" * (client % 5 + k) for k in range(1 + client % 3)]


def body(client: int) -> bytes:
    texts = texts_for(client)
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return json.dumps({"id": f"c{client}", "inputs": [tensor]}).encode()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/minilm-fp32, built (or taken from the build cache) from the real weights."""
    from onnxlift.builder.build import build_model
    from onnxlift.spec import load_spec

    build = build_model(load_spec(ROOT / "models" / "minilm-fp32"), root=ROOT, report=print)
    return published_copy(build.folder, tmp_path_factory.mktemp("registry") / "minilm-fp32-1")


@pytest.fixture(scope="module")
def alone(artifact: Path) -> list[np.ndarray]:
    """Each client's embeddings from the service with no batching, one request at a time."""
    service = ModelService(ServiceConfig(name=MODEL, version="1", model_dir=artifact))
    out = []
    for client in range(CLIENTS):
        answer = service.infer(body(client), MODEL)
        (tensor,) = answer["outputs"]
        out.append(np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"]))
    return out


@pytest.fixture(scope="module")
def container(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    work = tmp_path_factory.mktemp("sagemaker-batching")
    handle: LocalSageMaker = start_sagemaker_models(
        {MODEL: artifact},
        log_dir=work / "logs",
        work_dir=work / "work",
        # a queue for every client: past its bound a request is refused 503 (the launcher
        # gives the worker the threads to reach it), and this test is about the answers
        envs={MODEL: batching_environment(8, 20.0, CLIENTS)},
    )
    yield handle.containers[MODEL]
    handle.stop()


def post(target: Any, payload: bytes) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(target.host, target.port, timeout=60)
    try:
        connection.request("POST", "/invocations", payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_concurrent_clients_each_get_their_own_embeddings(
    container: Any, alone: list[np.ndarray]
) -> None:
    start = threading.Barrier(CLIENTS)

    def client(index: int) -> tuple[int, dict[str, Any]]:
        start.wait(30)
        return post(container, body(index))

    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))
    every = np.concatenate(alone)  # every client's expected rows, to look for cross-talk
    for index, (status, doc) in enumerate(answers):
        assert status == 200, doc
        assert doc["id"] == f"c{index}"
        (tensor,) = doc["outputs"]
        got = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        want = alone[index]
        assert got.shape == want.shape
        # FP32 throughout; a merged batch pads each text to the batch's longest, which the
        # attention mask and the masked mean pooling cancel, but the GEMMs then have other
        # shapes and may sum in another order: float rounding, ~1e-7 on unit vectors.
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        nearest = np.argmax(got @ every.T, axis=1)
        first = sum(len(a) for a in alone[:index])
        assert list(nearest) == list(range(first, first + len(want)))
    status, meta = post_metadata(container)
    stats = meta["parameters"]["dynamic_batching"]
    assert status == 200 and stats["max_batch_size"] == 8
    assert stats["merged_runs"] >= 1, stats  # 24 clients at once on one worker did merge


def post_metadata(target: Any) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(target.host, target.port, timeout=30)
    try:
        connection.request("GET", f"{MODELS_PREFIX}{MODEL}")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_dynamic_int8_model_is_never_batched(minilm_build: Any, tmp_path: Path) -> None:
    """DynamicQuantizeLinear's activation scale spans the whole run: merged, one caller's answer
    would move with another's input (0.9987 cosine measured here), so the runtime declines."""
    from onnxlift_serving.batching import BatchingConfig

    folder = published_copy(minilm_build.folder, tmp_path / "minilm-1")
    config = ServiceConfig(
        name="minilm", version="1", model_dir=folder, batching=BatchingConfig(max_batch_size=8)
    )
    service = ModelService(config)
    assert service.ready
    assert "dynamic_batching" not in service.metadata("minilm")["parameters"]


def test_sigterm_drains_the_queue(artifact: Path, tmp_path: Path, alone: list[np.ndarray]) -> None:
    """SIGTERM reaches gunicorn while one batch runs, held (tests/sagemaker/held_serve.py), and
    8 requests wait behind it: provably queued, since the version's metadata counts them and
    one batch runs at a time. Released after the signal, the held run and the queue still run:
    each request gets its own embeddings, and the container exits 0."""
    port, gate = free_port(HOST), tmp_path / "gate"
    env = base_env() | {
        Env.SM_MODEL_DIR: str(artifact),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "layers" / "runtime"), str(ROOT)]),
        Env.ORT_PROVIDERS: "CPUExecutionProvider",
        Env.ORT_INTRA_OP_THREADS: "1",
        Env.SAGEMAKER_GRACEFUL_TIMEOUT: "20",
        "HELD_RUN_GATE": str(gate),
        **batching_environment(32, 0.0),
    }
    script = str(ROOT / "tests" / "sagemaker" / "held_serve.py")
    log = tmp_path / "serve.log"
    child = start_child("held serve", [script, "--bind", f"{HOST}:{port}"], log=log, env=env)
    try:
        wait_http(child, f"http://{HOST}:{port}/ping", timeout=120)
        target = SimpleNamespace(host=HOST, port=port)
        with ThreadPoolExecutor(9) as pool:
            held = pool.submit(post, target, body(0))
            wait_for(lambda: Path(f"{gate}.started").exists())
            queued = [pool.submit(post, target, body(i)) for i in range(1, 9)]
            wait_for(lambda: batching_stats(target)["queued"] == 8)
            child.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "Handling signal: term" in log.read_text())
            time.sleep(0.3)  # the worker has its SIGTERM too; the held run cannot end yet
            gate.touch()
            answers = [held.result(timeout=60), *(f.result(timeout=60) for f in queued)]
        assert child.process.wait(timeout=30) == 0
    finally:
        child.stop()
    assert "Exception during worker exit" not in log.read_text()  # the worker_exit hook
    for index, (status, doc) in enumerate(answers):
        assert status == 200, doc
        (tensor,) = doc["outputs"]
        got = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        np.testing.assert_allclose(got, alone[index], rtol=0, atol=2e-6)


def batching_stats(target: Any) -> dict[str, Any]:
    status, meta = post_metadata(target)
    assert status == 200, meta
    return dict(meta["parameters"][DYNAMIC_BATCHING])


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)
