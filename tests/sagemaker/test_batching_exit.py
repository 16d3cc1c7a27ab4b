"""A stopping worker answers what waits in its batch queue: the launcher's gunicorn hooks
(worker_exit after the graceful window, worker_int on a quick stop) reach Batcher.close through
the worker's ContainerApp, on the real WSGI app over a small MLP, with the running batch held
so the other requests are provably still queued when the hook runs."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from onnxlift_serving.batching import Batcher
from onnxlift_serving.contract import Env, batching_environment

from tests.sagemaker.conftest import wsgi_call
from tests.sagemaker.test_batching import wait_until
from tests.sagemaker.test_batching_service import mlp, request, write_manifest

import launcher  # isort: skip  (functions/sagemaker, on sys.path from conftest)
import wsgi  # isort: skip

Answer = tuple[int, dict[str, str], bytes]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mlp-exit")
    (folder / "model.onnx").write_bytes(mlp().SerializeToString())
    write_manifest(folder)
    return folder


class Held:
    """The app's batcher with its first run held at `gate` until released."""

    def __init__(self, app: wsgi.ContainerApp) -> None:
        assert app.service is not None
        (loaded,) = app.service._loaded.values()
        assert loaded.batcher is not None
        self.batcher: Batcher = loaded.batcher
        self.gate, self.started = threading.Event(), threading.Event()
        run = self.batcher._run

        def held(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            if not self.started.is_set():
                self.started.set()
                assert self.gate.wait(10)
            return run(inputs)

        self.batcher._run = held  # type: ignore[method-assign]


@pytest.fixture
def app(folder: Path) -> Iterator[wsgi.ContainerApp]:
    env = {
        Env.SM_MODEL_DIR: str(folder),
        Env.ORT_INTRA_OP_THREADS: "1",
        **batching_environment(8, 0.0, 16),
    }
    yield wsgi.create_app(env, background=False)


def post(app: wsgi.ContainerApp, seed: int, answers: dict[int, Answer]) -> threading.Thread:
    def call() -> None:
        answers[seed] = wsgi_call(app, "POST", "/invocations", json.dumps(request(seed)).encode())

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def exit_hook(name: str) -> Callable[[Any], None]:
    """The hook as gunicorn calls it in the worker process."""
    if name == "worker_exit":
        return lambda worker: launcher.worker_exit(SimpleNamespace(), worker)
    return launcher.worker_int


@pytest.mark.parametrize("hook", ["worker_exit", "worker_int"])
def test_queued_requests_get_503_at_worker_exit_and_the_running_one_its_answer(
    app: wsgi.ContainerApp, hook: str
) -> None:
    held = Held(app)
    answers: dict[int, Answer] = {}
    running = post(app, 0, answers)
    assert held.started.wait(10)
    queued = [post(app, seed, answers) for seed in range(1, 5)]
    wait_until(lambda: held.batcher.queued == 4)  # the run is held: they cannot have left

    exit_hook(hook)(SimpleNamespace(pid=os.getpid(), wsgi=app))
    for thread in queued:  # answered now, while the held run still holds the batch
        thread.join(5)
        assert not thread.is_alive()
    assert not held.gate.is_set() and running.is_alive()
    for seed in range(1, 5):
        status, headers, body = answers[seed]
        assert status == 503 and headers["Retry-After"] == "5"
        assert "shutting down" in json.loads(body)["error"]
    late = wsgi_call(app, "POST", "/invocations", json.dumps(request(9)).encode())
    assert late[0] == 503  # and nothing new is taken in

    held.gate.set()
    running.join(10)
    status, _, body = answers[0]
    assert status == 200, body
    (tensor, *_) = json.loads(body)["outputs"]
    assert tensor["shape"][0] == len(request(0)["inputs"][0]["data"])


def test_worker_exit_in_the_master_touches_nothing(app: wsgi.ContainerApp) -> None:
    """gunicorn also calls worker_exit in the master for a reaped worker: not this process."""
    held = Held(app)
    answers: dict[int, Answer] = {}
    running = post(app, 0, answers)
    assert held.started.wait(10)
    queued = post(app, 1, answers)
    wait_until(lambda: held.batcher.queued == 1)
    launcher.worker_exit(SimpleNamespace(), SimpleNamespace(pid=os.getpid() + 1, wsgi=app))
    assert held.batcher.queued == 1
    held.gate.set()
    for thread in (running, queued):
        thread.join(10)
    assert answers[0][0] == answers[1][0] == 200


def test_the_hooks_are_in_gunicorns_settings() -> None:
    plan = launcher.Plan(workers=1, threads=4, ort_threads=1, gpus=0, reason="test")
    settings = launcher.settings(plan, bind="127.0.0.1:0", graceful_s=1, access_log=False)
    assert settings["worker_exit"] is launcher.worker_exit
    assert settings["worker_int"] is launcher.worker_int
