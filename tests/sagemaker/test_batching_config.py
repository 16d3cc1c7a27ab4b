"""[serving.batching] from the spec to the container: validation, the environment the endpoint
and the local container get, and the threads and memory the launcher gives each worker."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from onnxlift_serving.batching import MAX_BATCHING_THREADS, Batcher, BatchingConfig
from onnxlift_serving.contract import Env, batching_environment
from onnxlift_serving.errors import ServiceUnavailable

from onnxlift.errors import SpecError
from onnxlift.local.sagemaker_server import container_environment
from onnxlift.spec import BatchingSpec, parse_spec
from tests.conftest import ROOT
from tests.sagemaker.test_batching import FakePipeline, rows, wait_until

sys.path.insert(0, str(ROOT / "functions" / "sagemaker"))

import launcher


def spec(batching: Any = None, **serving: Any) -> Any:
    table = {"target": "sagemaker", "max_batch": 64, **serving}
    if batching is not None:
        table["batching"] = batching
    raw = {
        "name": "big",
        "task": "tensor",
        "source": {"framework": "onnx"},
        "quantization": {"mode": "none"},
        "serving": table,
    }
    return parse_spec(raw, Path("."))


def test_batching_is_off_unless_the_table_is_there() -> None:
    assert spec().serving.batching is None
    assert container_environment(spec()) == {}


def test_an_empty_table_switches_it_on_with_the_defaults() -> None:
    on = spec({}).serving.batching
    assert on == BatchingSpec(max_batch_size=32, max_queue_delay_ms=0.0, max_queue_size=64)
    assert spec({}, max_batch=8).serving.batching.max_batch_size == 8  # never over max_batch
    env = container_environment(spec({"max_batch_size": 16, "max_queue_delay_ms": 2}))
    assert BatchingConfig.from_env(env) == BatchingConfig(16, 2.0, 32)


@pytest.mark.parametrize(
    ("batching", "serving", "message"),
    [
        ({"max_batch_size": 65}, {}, r"within 1\.\.serving\.max_batch \(64\)"),
        ({"max_batch_size": -1}, {}, "within 1"),
        ({"max_queue_delay_ms": 1001}, {}, r"within 0\.\.1000"),
        ({"max_queue_delay_ms": "5"}, {}, "must be a number"),
        ({"max_batch_size": 2.5}, {}, "must be an integer"),
        ({"max_queue_size": -3}, {}, ">= 0"),
        ({"preferred": [4, 8]}, {}, "unexpected keyword"),
        ({}, {"target": "lambda"}, "a Lambda sandbox serves one request at a time"),
        ("yes", {}, "must be a table"),
    ],
)
def test_bad_batching_settings_are_refused(
    batching: Any, serving: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        spec(batching, **serving)


def test_dynamic_int8_cannot_batch() -> None:
    raw = {
        "name": "big",
        "task": "tensor",
        "source": {"framework": "onnx"},
        "quantization": {"mode": "dynamic"},
        "serving": {"target": "sagemaker", "batching": {}},
    }
    with pytest.raises(SpecError, match="dynamic INT8 takes one activation scale"):
        parse_spec(raw, Path("."))


def test_the_endpoint_gets_the_batching_environment() -> None:
    from infra.sagemaker_endpoint import batching_environment

    assert batching_environment(SimpleNamespace(name="big")) == {}  # type: ignore[arg-type]
    model = SimpleNamespace(batching=spec({"max_batch_size": 8}).serving.batching)
    env = batching_environment(model)  # type: ignore[arg-type]
    assert env == {
        Env.BATCH_MAX_SIZE: "8",
        Env.BATCH_MAX_QUEUE_DELAY_MS: "0",
        Env.BATCH_MAX_QUEUE_SIZE: "16",
    }


def test_the_launcher_gives_a_batching_worker_threads_and_takes_their_memory() -> None:
    memory = 4 * 1024**3
    plain = launcher.plan_workers({}, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=10**8)
    assert plain.threads == launcher.DEFAULT_THREADS
    assert launcher.worker_memory_mb({}, plain, memory) == "4096"
    env = {Env.BATCH_MAX_SIZE: "16"}
    batching = launcher.plan_workers(
        env, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=10**8
    )
    assert batching.threads == 16 + 32 + 1  # a batch running, a full queue, one refused
    # 45 threads past the default 4, each may hold a decoded request outside the arena,
    # but the charge stops at half the worker's share
    assert launcher.worker_memory_mb(env, batching, memory) == str(4096 - min(45 * 64, 2048))
    queue = env | {Env.BATCH_MAX_QUEUE_SIZE: "8"}
    short = launcher.plan_workers(queue, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=1)
    assert short.threads == 16 + 8 + 1
    assert launcher.worker_memory_mb(queue, short, memory) == str(4096 - 21 * 64)
    huge = {Env.BATCH_MAX_SIZE: "64"}
    capped = launcher.plan_workers(huge, cores=2, gpus=1, cuda=True, memory=memory, model_bytes=1)
    assert capped.threads == MAX_BATCHING_THREADS
    # A small CPU instance (2 cores, 3.7 GiB, 2 workers): the threads' charge stops at half
    # the worker's share instead of leaving its arena 1 MiB (every request a 413).
    small = 3_700 * 1024**2
    busy = launcher.plan_workers(huge, cores=2, gpus=0, cuda=False, memory=small, model_bytes=1)
    share = small // busy.workers // 1024**2
    assert launcher.worker_memory_mb(huge, busy, small) == str(share - share // 2)
    explicit = env | {Env.SAGEMAKER_THREADS: "6"}
    assert (
        launcher.plan_workers(
            explicit, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=1
        ).threads
        == 6
    )


@pytest.mark.parametrize(("size", "queue"), [(4, 0), (4, 2), (16, 0), (1, 1)])
def test_the_launchers_threads_reach_the_queue_bound(size: int, queue: int) -> None:
    """As many requests at once as a worker has threads, the batch they run held: the queue
    fills to its bound and the next request is refused 503 (with 2 x max_batch_size threads,
    as before, the queue never filled: the rest waited unseen in gunicorn's own queue)."""
    env = batching_environment(size, 0.0, queue)
    threads = launcher.request_threads(env)
    config = BatchingConfig.from_env(env)
    assert config is not None
    assert threads == max(launcher.DEFAULT_THREADS, config.threads_for_bound)
    pipe = FakePipeline()
    pipe.gate = threading.Event()
    batcher = Batcher(pipe.run, config)
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(batcher.submit, rows(float(i))) for i in range(threads)]
        wait_until(lambda: batcher.stats.rejected >= 1)
        assert batcher.queued == config.queue_limit
        pipe.gate.set()
        outcomes = [future.exception(10) for future in futures]
    refused = [error for error in outcomes if error is not None]
    assert refused and all(isinstance(e, ServiceUnavailable) for e in refused)
    assert len(refused) == batcher.stats.rejected


def test_auto_sent_to_lambda_warns_that_batching_is_ignored() -> None:
    """target "lambda" with the table is refused; "auto" keeps it for when the model goes to
    SageMaker, and says so at build and synth when it goes to Lambda instead."""
    from infra.config import models_from_specs
    from onnxlift.builder.build import _decide_target

    said: list[str] = []
    auto = spec({"max_batch_size": 8}, target="auto")
    assert _decide_target(auto, 10 * 1024**2, said.append).target == "lambda"
    (line,) = said
    assert "big: warning: [serving.batching] is ignored" in line and "auto: " in line
    said.clear()
    huge = 3 * 1024**3  # over Lambda's artifact threshold: SageMaker, where it batches
    assert _decide_target(auto, huge, said.append).target == "sagemaker" and said == []
    assert _decide_target(spec(target="auto"), 10 * 1024**2, said.append).target == "lambda"
    assert said == []

    (model,) = models_from_specs([auto], {})
    assert model.batching_ignored
    (plain,) = models_from_specs([spec(target="auto")], {})
    assert not plain.batching_ignored


def test_the_launcher_says_how_much_a_full_queue_may_hold_past_the_charge() -> None:
    memory = 4 * 1024**3
    env = {Env.BATCH_MAX_SIZE: "16"}
    plan = launcher.plan_workers(env, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=1)
    # 45 extra threads x 64 MiB = 2,880 MiB wanted, 2,048 charged (half the share)
    assert launcher.uncharged_request_mb(env, plan, memory) == 45 * 64 - 2048
    short = env | {Env.BATCH_MAX_QUEUE_SIZE: "8"}
    fits = launcher.plan_workers(short, cores=2, gpus=0, cuda=False, memory=memory, model_bytes=1)
    assert launcher.uncharged_request_mb(short, fits, memory) == 0
    # an explicit limit is the operator's: nothing to say
    explicit = env | {Env.MEMORY_LIMIT_MB: "3000"}
    assert launcher.uncharged_request_mb(explicit, plan, memory) == 0
