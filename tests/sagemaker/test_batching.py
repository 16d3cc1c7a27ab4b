"""The dynamic batcher (onnxlift_serving.batching) on a fake pipeline: merging, splitting,
the delay, oversize requests, error isolation, the bounded queue, draining on close."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from onnxlift_serving.batching import Batcher, BatchingConfig, merge, split, stack_key
from onnxlift_serving.contract import Env, batching_environment
from onnxlift_serving.errors import ServiceUnavailable, Unprocessable

Tensors = dict[str, np.ndarray]


class FakePipeline:
    """y = 2x + row sum, per row; a row holding -1 is refused (422), as a model might; every
    call is recorded with its row count. `gate` holds the first run until released."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay_s = delay_s
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.lock = threading.Lock()

    def run(self, inputs: Tensors) -> Tensors:
        x = inputs["x"]
        with self.lock:
            self.calls.append(x.shape[0])
        self.started.set()
        if self.gate is not None:
            self.gate.wait(5)
            self.gate = None
        time.sleep(self.delay_s)
        if (x == -1).any():
            raise Unprocessable("the model refused the input: -1")
        return {"y": 2 * x + x.sum(axis=1, keepdims=True), "first": x[:, 0] * 3}


def rows(value: float, count: int = 1, width: int = 3) -> Tensors:
    return {"x": np.full((count, width), value, dtype=np.float32)}


def expected(inputs: Tensors) -> Tensors:
    x = inputs["x"]
    return {"y": 2 * x + x.sum(axis=1, keepdims=True), "first": x[:, 0] * 3}


def hold_first_run(pipe: FakePipeline, batcher: Batcher) -> threading.Thread:
    """Start one request whose run blocks until pipe.gate is set, so others queue behind it."""
    pipe.gate = threading.Event()
    first = threading.Thread(target=batcher.submit, args=(rows(100.0),))
    first.start()
    assert pipe.started.wait(5)
    return first


def submit_all(batcher: Batcher, requests: list[Tensors]) -> list[Tensors | BaseException]:
    def one(inputs: Tensors) -> Tensors | BaseException:
        try:
            return batcher.submit(inputs)
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def behind_a_held_run(
    pipe: FakePipeline,
    batcher: Batcher,
    requests: list[Tensors],
    *,
    forget_held: bool = False,
    while_queued: Callable[[], None] | None = None,
) -> list[Tensors | BaseException]:
    """Hold one run at pipe.gate, queue `requests` behind it (then call `while_queued`),
    release it: the requests' outcomes in order. `forget_held`: pipe.calls leaves out the
    held run."""
    first = hold_first_run(pipe, batcher)
    if forget_held:
        pipe.calls.clear()
    done: list[Tensors | BaseException] = []
    runner = threading.Thread(target=lambda: done.extend(submit_all(batcher, requests)))
    runner.start()
    wait_until(lambda: batcher.queued == len(requests))
    if while_queued is not None:
        while_queued()
    pipe.gate.set()  # type: ignore[union-attr]
    runner.join(10)
    first.join(10)
    return done


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_concurrent_requests_merge_and_each_gets_only_its_own_rows() -> None:
    pipe = FakePipeline(delay_s=0.002)
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=8, max_queue_delay_ms=20))
    # distinct values and row counts, so a swapped or shifted slice cannot pass
    requests = [rows(float(i), count=1 + i % 3) for i in range(12)]
    answers = behind_a_held_run(pipe, batcher, requests)
    for request, answer in zip(requests, answers, strict=True):
        assert not isinstance(answer, BaseException)
        want = expected(request)
        assert answer["y"].shape == want["y"].shape
        np.testing.assert_array_equal(answer["y"], want["y"])  # bit-exact: same arithmetic
        np.testing.assert_array_equal(answer["first"], want["first"])
    assert batcher.stats.merged_runs >= 2
    assert max(pipe.calls) <= 8 and sum(pipe.calls) == 1 + sum(1 + i % 3 for i in range(12))
    assert len(pipe.calls) < 1 + len(requests)  # fewer runs than requests


def test_split_gives_each_request_its_slice_of_every_output() -> None:
    parts = [rows(1.0, 2), rows(2.0, 1), rows(3.0, 3)]
    merged = merge(parts)
    assert merged["x"].shape == (6, 3)
    outputs = {"y": np.arange(12).reshape(6, 2), "z": np.arange(6)}
    pieces = split(outputs, [2, 1, 3])
    np.testing.assert_array_equal(pieces[0]["y"], [[0, 1], [2, 3]])
    np.testing.assert_array_equal(pieces[1]["z"], [2])
    np.testing.assert_array_equal(pieces[2]["z"], [3, 4, 5])
    with pytest.raises(ValueError, match="rows"):
        split({"pooled": np.zeros(4)}, [2, 1, 3])  # not one row per input row


def test_only_requests_that_stack_are_merged() -> None:
    assert stack_key(rows(1.0, 2)) == stack_key(rows(5.0, 2)) is not None
    assert stack_key(rows(1.0, 2))[1] == stack_key(rows(1.0, 7))[1]  # type: ignore[index]
    assert stack_key(rows(1.0, 2, width=3))[1] != stack_key(rows(1.0, 2, width=4))[1]  # type: ignore[index]
    as_int = {"x": np.ones((2, 3), dtype=np.int64)}
    assert stack_key(as_int)[1] != stack_key(rows(1.0, 2))[1]  # type: ignore[index]
    assert stack_key({"x": np.float32(1.0) * np.ones(())}) is None  # a scalar
    assert stack_key({"a": np.ones((2, 1)), "b": np.ones((3, 1))}) is None  # row counts differ

    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=16, max_queue_delay_ms=50))
    mixed = [rows(1.0, width=3), rows(2.0, width=4), rows(3.0, width=3), rows(4.0, width=4)]
    done = behind_a_held_run(pipe, batcher, mixed, forget_held=True)
    for request, answer in zip(mixed, done, strict=True):
        np.testing.assert_array_equal(answer["y"], expected(request)["y"])  # type: ignore[index]
    assert sorted(pipe.calls) == [2, 2]  # width 3 together, width 4 together


def test_a_lone_request_waits_at_most_the_delay_then_runs() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=32, max_queue_delay_ms=60))
    started = time.perf_counter()
    answer = batcher.submit(rows(3.0, 2))
    waited = time.perf_counter() - started
    np.testing.assert_array_equal(answer["y"], expected(rows(3.0, 2))["y"])
    assert 0.055 <= waited < 1.0  # flushed by the timeout, not by a full batch
    # with no delay an idle batcher runs a lone request at once
    quick = Batcher(pipe.run, BatchingConfig(max_batch_size=32, max_queue_delay_ms=0))
    started = time.perf_counter()
    quick.submit(rows(1.0))
    assert time.perf_counter() - started < 0.05


def test_a_full_batch_runs_without_waiting_for_the_delay() -> None:
    pipe = FakePipeline()
    # the longest delay a spec may set (1 s): a full batch must not wait for it
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4, max_queue_delay_ms=1000))
    started = time.perf_counter()
    answers = submit_all(batcher, [rows(float(i)) for i in range(4)])
    assert time.perf_counter() - started < 0.9  # not the 1 s delay
    assert pipe.calls == [4]
    for i, answer in enumerate(answers):
        np.testing.assert_array_equal(answer["y"], expected(rows(float(i)))["y"])  # type: ignore[index]


def test_an_oversize_request_runs_alone_and_others_still_merge() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4, max_queue_delay_ms=30))
    requests = [rows(1.0), rows(7.0, count=9), rows(2.0), rows(3.0)]
    done = behind_a_held_run(pipe, batcher, requests, forget_held=True)
    assert sorted(pipe.calls) == [3, 9]  # the 9-row request alone, the three 1-row together
    for request, answer in zip(requests, done, strict=True):
        np.testing.assert_array_equal(answer["y"], expected(request)["y"])  # type: ignore[index]


def test_an_error_in_a_merged_run_fails_only_the_offending_request() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=8, max_queue_delay_ms=30))
    requests = [rows(1.0), rows(-1.0), rows(2.0, 2), rows(3.0)]
    done = behind_a_held_run(pipe, batcher, requests)
    assert isinstance(done[1], Unprocessable)
    for index in (0, 2, 3):
        np.testing.assert_array_equal(done[index]["y"], expected(requests[index])["y"])  # type: ignore[index]
    # [0,1,2,3] fails, then [0,1] fails ([2,3] runs merged), then 0 and 1 alone
    assert batcher.stats.retried_batches == 2


@pytest.mark.parametrize("bad", [0, 5, 15])
def test_a_failed_merged_run_is_split_in_halves_not_run_one_by_one(bad: int) -> None:
    """One bad request among 16 costs 2 log2(16) = 8 more runs, not 16: the half without it
    runs merged and answers, each half with it is halved again down to the bad one alone."""
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=16, max_queue_delay_ms=50))
    requests = [rows(-1.0 if i == bad else float(i + 1)) for i in range(16)]
    done = behind_a_held_run(pipe, batcher, requests, forget_held=True)
    assert sorted(pipe.calls, reverse=True) == [16, 8, 8, 4, 4, 2, 2, 1, 1]
    assert batcher.stats.retried_batches == 4  # 16, 8, 4 and 2 requests failed merged
    for index, (request, answer) in enumerate(zip(requests, done, strict=True)):
        if index == bad:
            assert isinstance(answer, Unprocessable)
        else:
            np.testing.assert_array_equal(answer["y"], expected(request)["y"])  # type: ignore[index]


def test_every_request_of_a_failed_merged_run_gets_its_own_error() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4, max_queue_delay_ms=50))
    done = behind_a_held_run(pipe, batcher, [rows(-1.0) for _ in range(4)], forget_held=True)
    assert sorted(pipe.calls, reverse=True) == [4, 2, 2, 1, 1, 1, 1]
    assert len({id(error) for error in done}) == 4
    assert all(isinstance(error, Unprocessable) for error in done)


def test_an_unsplittable_answer_is_run_again_one_by_one() -> None:
    def pooled(inputs: Tensors) -> Tensors:
        return {"total": np.asarray(inputs["x"].sum())}  # no batch dimension in the output

    batcher = Batcher(pooled, BatchingConfig(max_batch_size=8, max_queue_delay_ms=100))
    answers = submit_all(batcher, [rows(1.0), rows(2.0)])
    assert sorted(float(a["total"]) for a in answers) == [3.0, 6.0]  # type: ignore[index]


def test_the_queue_is_bounded_and_answers_503_with_retry_after() -> None:
    pipe = FakePipeline()
    batcher = Batcher(
        pipe.run, BatchingConfig(max_batch_size=2, max_queue_delay_ms=0, max_queue_size=3)
    )
    first = hold_first_run(pipe, batcher)
    waiting = [threading.Thread(target=batcher.submit, args=(rows(float(i)),)) for i in range(3)]
    for thread in waiting:
        thread.start()
    wait_until(lambda: batcher.queued == 3)
    with pytest.raises(ServiceUnavailable) as refused:
        batcher.submit(rows(9.0))
    assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert batcher.stats.rejected == 1
    pipe.gate.set()  # type: ignore[union-attr]
    for thread in [first, *waiting]:
        thread.join(10)
    assert batcher.queued == 0


def test_close_refuses_new_requests_and_drains_the_queue() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4, max_queue_delay_ms=0))
    requests = [rows(float(i)) for i in range(6)]

    def close_then_refuse() -> None:
        batcher.close()
        with pytest.raises(ServiceUnavailable):
            batcher.submit(rows(1.0))

    done = behind_a_held_run(pipe, batcher, requests, while_queued=close_then_refuse)
    assert len(done) == 6 and all(not isinstance(a, BaseException) for a in done)


def test_close_refusing_the_queue_answers_each_waiting_request_503_at_once() -> None:
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4, max_queue_delay_ms=0))
    refused_while_held: list[int] = []

    def refuse() -> None:
        batcher.close(refuse_queued=True)
        refused_while_held.append(batcher.queued)

    done = behind_a_held_run(pipe, batcher, [rows(float(i)) for i in range(6)], forget_held=True,
                             while_queued=refuse)  # fmt: skip
    assert refused_while_held == [0] and pipe.calls == []  # none of them ran
    assert all(isinstance(a, ServiceUnavailable) and a.status == 503 for a in done)
    assert all(a.headers == {"Retry-After": "5"} for a in done)  # type: ignore[union-attr]


def test_settings_travel_through_the_environment() -> None:
    env = batching_environment(16, 2.5, 40)
    config = BatchingConfig.from_env(env)
    assert config == BatchingConfig(max_batch_size=16, max_queue_delay_ms=2.5, max_queue_size=40)
    assert BatchingConfig.from_env({}) is None
    assert BatchingConfig.from_env({Env.BATCH_MAX_SIZE: "0"}) is None
    assert batching_environment(0) == {}
    assert BatchingConfig(max_batch_size=8).queue_limit == 16
    with pytest.raises(ValueError):
        BatchingConfig(max_batch_size=0)


@pytest.mark.parametrize("delay", ["inf", "nan", "1e300", "1001"])
def test_a_delay_that_is_no_finite_wait_is_refused(delay: str) -> None:
    """inf made Condition.wait raise with the batch marked running (every later request of the
    version waited forever); nan never timed out. Both are refused where they are read."""
    env = {Env.BATCH_MAX_SIZE: "4", Env.BATCH_MAX_QUEUE_DELAY_MS: delay}
    with pytest.raises(ValueError, match="invalid batching settings"):
        BatchingConfig.from_env(env)


def test_a_batch_size_that_is_no_count_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a whole number"):
        BatchingConfig.from_env({Env.BATCH_MAX_SIZE: "16.0"})
    assert BatchingConfig.from_env({}) is None
    assert BatchingConfig.from_env({Env.BATCH_MAX_SIZE: "0"}) is None


def test_a_failure_while_taking_a_batch_does_not_stick_the_version() -> None:
    """Whatever breaks while a batch is taken, the next request still runs."""
    pipe = FakePipeline()
    batcher = Batcher(pipe.run, BatchingConfig(max_batch_size=4))
    original = batcher._take
    calls = {"n": 0}

    def take_once_broken() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("broken once")
        return original()

    batcher._take = take_once_broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="broken once"):
        batcher.submit(rows(1.0))
    answer = batcher.submit(rows(2.0))
    np.testing.assert_array_equal(answer["y"], expected(rows(2.0))["y"])  # type: ignore[index]
