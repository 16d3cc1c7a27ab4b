"""The local Lambda service with a tiny handler: one event at a time per sandbox, a pool that
grows to the function's concurrency and throttles beyond it, dead and timed-out sandboxes
replaced, and memory that comes back after large events. Real processes on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from onnxlift_serving.contract import infer_path

from onnxlift.local.gateway import FunctionTarget, Gateway, GatewayConfig
from onnxlift.local.lambda_runtime import make_server
from onnxlift.local.lambda_service import (
    FunctionConfig,
    FunctionPool,
    FunctionTimeout,
    SandboxCrashed,
)

# A proxy-integration handler: the request body says how long to work, whether to die, and
# carries an id; the reply says which process ran it and how many events it ran at once.
FAKE_HANDLER = """
import json, os, time

running = 0


def lambda_handler(event, context):
    global running
    running += 1
    try:
        request = json.loads(event["body"] or "{}")
        if request.get("exit"):
            os._exit(3)
        time.sleep(request.get("sleep", 0))
        reply = {"pid": os.getpid(), "id": request.get("id"), "overlap": running,
                 "size": len(request.get("data", ""))}
        return {"statusCode": 200, "body": json.dumps(reply)}
    finally:
        running -= 1
"""
LIMIT = 2
TIMEOUT_S = 2


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FunctionPool]]:
    folder = tmp_path_factory.mktemp("fake")
    (folder / "fake_handler.py").write_text(FAKE_HANDLER)
    pool = FunctionPool(
        FunctionConfig(
            name="fake",
            handler=folder / "fake_handler.py",
            env={},
            memory_mb=128,
            timeout_s=TIMEOUT_S,
            concurrency=LIMIT,
            log=folder / "fake.log",
        )
    )
    pool.prestart()
    gateway = Gateway(
        GatewayConfig(
            api_key="k",
            functions={"fake": FunctionTarget("fake", pool=pool)},
            default_function="fake",
        ),
        port=0,
    )
    try:
        pool.wait_ready()
        gateway.start()
        yield gateway.url, pool
    finally:
        gateway.stop()
        pool.stop()


def send(url: str, **request: Any) -> requests.Response:
    return requests.post(
        url + infer_path("fake"), json=request, headers={"x-api-key": "k"}, timeout=10
    )


def test_a_sandbox_runs_one_event_at_a_time() -> None:
    """Even a caller that sends three at once to one sandbox gets them one after another."""
    spans: list[tuple[float, float]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        started = time.monotonic()
        time.sleep(0.2)
        spans.append((started, time.monotonic()))
        return {"ok": True}

    server = make_server(
        handler, host="127.0.0.1", port=0, function_name="f", memory_mb=128, timeout_s=3
    )
    server.start()
    try:
        with ThreadPoolExecutor(3) as clients:
            replies = list(
                clients.map(
                    lambda _: requests.post(
                        f"{server.url}/2015-03-31/functions/function/invocations",
                        data=b"{}",
                        timeout=5,
                    ),
                    range(3),
                )
            )
    finally:
        server.stop()
    assert [r.status_code for r in replies] == [200] * 3
    spans.sort()
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans))


def test_the_pool_grows_to_its_limit_reuses_sandboxes_and_throttles_beyond(
    api: tuple[str, FunctionPool],
) -> None:
    url, pool = api
    with ThreadPoolExecutor(LIMIT) as clients:
        running = [clients.submit(send, url, sleep=1.5, id=i) for i in range(LIMIT)]
        deadline = time.monotonic() + 5  # until both hold a sandbox (the second cold-starts)
        while pool.describe()["idle"] or pool.describe()["sandboxes"] < LIMIT:
            assert time.monotonic() < deadline, pool.describe()
            time.sleep(0.02)
        started = time.monotonic()
        throttled = send(url, id="over")
        answered_in = time.monotonic() - started
        answers = [f.result().json() for f in running]
    assert throttled.status_code == 429 and answered_in < 0.5, throttled.text
    assert throttled.headers["Retry-After"] == "1"
    assert throttled.headers["Content-Type"] == "application/json"
    assert "reserved concurrency" in throttled.json()["error"]
    assert sorted(a["id"] for a in answers) == list(range(LIMIT))
    assert len({a["pid"] for a in answers}) == LIMIT and {a["overlap"] for a in answers} == {1}

    started_before = pool.describe()["started"]
    again = {send(url, id=i).json()["pid"] for i in range(4)}
    assert again <= {a["pid"] for a in answers}  # warm sandboxes, loaded once, reused
    assert pool.describe()["started"] == started_before and pool.describe()["throttled"] >= 1


def test_a_sandbox_that_dies_is_replaced(api: tuple[str, FunctionPool]) -> None:
    url, pool = api
    crashes = pool.describe()["crashes"]
    died = send(url, exit=True)
    assert died.status_code == 502 and died.json()["error"].startswith("Internal server error")
    after = send(url, id="next")
    assert after.status_code == 200 and after.json()["id"] == "next"
    assert pool.describe()["crashes"] == crashes + 1
    assert pool.describe()["sandboxes"] <= LIMIT


def test_a_sandbox_past_the_timeout_is_killed_and_replaced(api: tuple[str, FunctionPool]) -> None:
    url, pool = api
    before = set(pool.describe()["pids"])
    started = time.monotonic()
    slow = send(url, sleep=TIMEOUT_S + 3)
    assert slow.status_code == 504 and slow.json() == {"error": "Endpoint request timed out"}
    assert time.monotonic() - started < TIMEOUT_S + 1.5
    killed = before - set(pool.describe()["pids"])
    assert len(killed) == 1 and not _alive(killed.pop())
    assert pool.describe()["timeouts"] == 1
    assert send(url, id="after").json()["id"] == "after"


def test_concurrent_clients_never_get_each_others_answers(api: tuple[str, FunctionPool]) -> None:
    url, _ = api
    seen: list[tuple[int, int, dict[str, Any]]] = []  # (status, id sent, reply)
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(10):
            sent = n * 100 + i
            response = send(url, id=sent, sleep=0.01)
            with lock:
                seen.append((response.status_code, sent, response.json()))
            if response.status_code == 429:
                time.sleep(0.01)

    with ThreadPoolExecutor(6) as clients:
        list(clients.map(client, range(6)))
    assert {status for status, _, _ in seen} <= {200, 429}
    answered = [(sent, reply) for status, sent, reply in seen if status == 200]
    assert answered and all(reply["id"] == sent for sent, reply in answered)  # its own answer
    assert all(reply["overlap"] == 1 for _, reply in answered)  # alone in its sandbox


def test_the_gateways_deadline_ends_a_longer_event(tmp_path: Path) -> None:
    """API Gateway stops waiting at its integration timeout, shorter than the function's."""
    (tmp_path / "fake_handler.py").write_text(FAKE_HANDLER)
    config = FunctionConfig(
        name="slow", handler=tmp_path / "fake_handler.py", env={}, memory_mb=128,
        timeout_s=30, concurrency=1, log=tmp_path / "slow.log",
    )  # fmt: skip
    pool = FunctionPool(config)
    pool.prestart()
    try:
        pool.wait_ready()
        event = json.dumps({"body": json.dumps({"sleep": 20})}).encode()
        started = time.monotonic()
        with pytest.raises(FunctionTimeout, match="after 1 s"):
            pool.invoke(event, deadline_s=1)
        assert time.monotonic() - started < 3
        assert pool.describe()["timeouts"] == 1 and pool.describe()["sandboxes"] == 0
    finally:
        pool.stop()


def test_a_sandbox_starting_while_the_pool_stops_does_not_outlive_it(tmp_path: Path) -> None:
    (tmp_path / "fake_handler.py").write_text("import time\ntime.sleep(1)\n" + FAKE_HANDLER)
    config = FunctionConfig(
        name="late", handler=tmp_path / "fake_handler.py", env={}, memory_mb=128,
        timeout_s=5, concurrency=2, log=tmp_path / "late.log",
    )  # fmt: skip
    pool = FunctionPool(config)
    event = json.dumps({"body": "{}"}).encode()
    with ThreadPoolExecutor(1) as runner:
        cold = runner.submit(pool.invoke, event)  # a cold start: the init takes a second
        deadline = time.monotonic() + 5
        while not pool.describe()["pids"] and time.monotonic() < deadline:
            time.sleep(0.01)
        (pid,) = pool.describe()["pids"]
        pool.stop()
        with pytest.raises(SandboxCrashed):
            cold.result(timeout=30)
    assert not _alive(pid)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0]
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_memory_comes_back_after_a_burst_of_6_mb_events(api: tuple[str, FunctionPool]) -> None:
    """Each 6 MB body lives as the gateway's event, the sandbox's copy, its parsed event and the
    handler's parsed body; after the burst the sandbox holds what it held before."""
    url, pool = api
    big = "x" * (6 * 1024 * 1024 - 200)
    pid = send(url, id="warm", data=big).json()["pid"]  # the first large event sets the baseline
    # A small event after a large one: the sandbox's connection thread reads it only once it
    # has released the large one's memory (after its reply), so RSS is read after that.
    assert send(url, id="settle").json()["pid"] == pid
    sandbox_before, gateway_before = rss_mb(pid), rss_mb(os.getpid())
    for i in range(12):
        reply = send(url, id=i, data=big).json()
        assert (reply["size"], reply["pid"]) == (len(big), pid)
    assert send(url, id="settle").json()["pid"] == pid
    sandbox_after, gateway_after = rss_mb(pid), rss_mb(os.getpid())
    figures = {
        "sandbox_mb": (round(sandbox_before, 1), round(sandbox_after, 1)),
        "gateway_mb": (round(gateway_before, 1), round(gateway_after, 1)),
    }
    print(json.dumps(figures))
    assert pid in pool.describe()["pids"]
    assert sandbox_after <= sandbox_before * 1.05 + 2, figures
    assert gateway_after <= gateway_before * 1.05 + 2, figures
