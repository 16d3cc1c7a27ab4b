"""The channel between the local Lambda service and its sandboxes: frames whole whatever
their size, a peer that dies or stalls seen as such, and a pool that uses it for events while
each sandbox still answers the RIE's HTTP invoke and health routes. Real processes."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from onnxlift.local import channel
from onnxlift.local.lambda_runtime import HEALTH_PATH, INVOKE_PATH
from onnxlift.local.lambda_service import (
    FunctionConfig,
    FunctionPool,
    FunctionTimeout,
    SandboxCrashed,
)
from tests.local.test_lambda_service import FAKE_HANDLER, _alive

TIMEOUT_S = 2
# The fake handler, its reply also naming the sandbox's thread that ran it ("channel" for the
# pool's channel, a connection thread for HTTP).
HANDLER = (
    FAKE_HANDLER
    + """
import threading
_fake = lambda_handler


def lambda_handler(event, context):
    result = _fake(event, context)
    reply = json.loads(result["body"])
    reply["thread"] = threading.current_thread().name
    return {"statusCode": 200, "body": json.dumps(reply)}
"""
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    pool_end, sandbox_end = channel.channel_pair()
    with pool_end, sandbox_end:
        yield pool_end, sandbox_end


@pytest.mark.parametrize("size", [0, 10, (1 << 16) - 8, 1 << 16, 12 * 1024 * 1024 + 3])
def test_events_and_replies_arrive_whole_at_any_size(
    pair: tuple[socket.socket, socket.socket], size: int
) -> None:
    pool_end, sandbox_end = pair
    event = os.urandom(size)

    def echo() -> None:  # the sandbox's side: the event back as the body, reversed
        received = channel.receive_event(sandbox_end)
        assert received is not None
        channel.send_reply(
            sandbox_end, 201, {"X-Amz-Function-Error": "Unhandled"}, bytes(received[::-1])
        )

    sandbox = threading.Thread(target=echo)
    sandbox.start()  # started first: a 12 MB event fills the socket's buffer before it reads
    channel.send_event(pool_end, event)
    status, headers, body = channel.receive_reply(pool_end, 10)
    sandbox.join(10)
    assert (status, headers) == (201, {"X-Amz-Function-Error": "Unhandled"})
    assert bytes(body) == event[::-1]


def test_a_peer_that_closes_ends_the_channel(pair: tuple[socket.socket, socket.socket]) -> None:
    pool_end, sandbox_end = pair
    sandbox_end.sendall(b"\x00\x01\x00\x00")  # half a reply's head, then gone
    sandbox_end.close()
    with pytest.raises(channel.ChannelClosed, match="inside a frame's head"):
        channel.receive_reply(pool_end, 2)
    assert isinstance(channel.ChannelClosed(), ConnectionError)


def test_a_frame_cut_short_is_an_error_and_a_clean_close_is_the_end(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    pool_end, sandbox_end = pair
    pool_end.sendall(b"\x00" * 7 + b"\x09" + b"12345")  # 9 bytes framed, 5 sent
    pool_end.shutdown(socket.SHUT_WR)
    with pytest.raises(channel.ChannelClosed, match="4 bytes short"):
        channel.receive_event(sandbox_end)
    other_pool, other_sandbox = channel.channel_pair()
    with other_pool, other_sandbox:
        other_pool.shutdown(socket.SHUT_WR)
        assert channel.receive_event(other_sandbox) is None  # between frames: the end


def test_a_reply_that_does_not_come_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    pool_end, sandbox_end = pair
    channel.send_event(pool_end, b"{}")
    sandbox_end.sendall(b"\x00\xc8")  # the start of a reply, then nothing more
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel.receive_reply(pool_end, 0.3)
    assert 0.25 < time.monotonic() - started < 2


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPool]:
    folder = tmp_path_factory.mktemp("channel")
    (folder / "fake_handler.py").write_text(HANDLER)
    config = FunctionConfig(
        name="fake", handler=folder / "fake_handler.py", env={}, memory_mb=128,
        timeout_s=TIMEOUT_S, concurrency=2, log=folder / "fake.log",
    )  # fmt: skip
    pool = FunctionPool(config)
    pool.prestart()
    try:
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()


def event(**request: object) -> bytes:
    return json.dumps({"body": json.dumps(request)}).encode()


def invoke(pool: FunctionPool, **request: object) -> dict[str, Any]:
    response = pool.invoke(event(**request))
    assert response.status == 200, response.body[:200]
    result = json.loads(response.body)
    return dict(json.loads(result["body"]))


def test_the_pool_sends_events_over_the_channel_not_http(pool: FunctionPool) -> None:
    (sandbox,) = pool._idle  # one warm sandbox, prestarted
    assert sandbox.channel is not None and sandbox.channel.family == socket.AF_UNIX
    reply = invoke(pool, id="fast")
    assert (reply["id"], reply["pid"], reply["thread"]) == ("fast", sandbox.pid, "channel")


def test_the_rie_http_routes_still_answer_a_pool_sandbox(pool: FunctionPool) -> None:
    pid = invoke(pool, id="warm")["pid"]
    (sandbox,) = [s for s in pool._idle if s.pid == pid]
    base = f"http://{sandbox.host}:{sandbox.port}"
    health = requests.get(base + HEALTH_PATH, timeout=5)
    assert health.status_code == 200 and health.json()["pid"] == sandbox.pid
    over_http = requests.post(base + INVOKE_PATH, data=event(id="curl"), timeout=5)
    assert over_http.status_code == 200
    over_http_reply = json.loads(over_http.json()["body"])
    assert over_http_reply["id"] == "curl" and over_http_reply["thread"] != "channel"
    assert invoke(pool, id="after")["pid"] == sandbox.pid  # the channel still serves it


def test_a_large_event_and_its_reply_cross_the_channel(pool: FunctionPool) -> None:
    big = "y" * (9 * 1024 * 1024)
    reply = invoke(pool, id="big", data=big)
    assert (reply["id"], reply["size"]) == ("big", len(big))
    assert invoke(pool, id="small")["id"] == "small"  # the frames after it stay aligned


def test_a_sandbox_dying_mid_event_is_a_crash_and_is_replaced(pool: FunctionPool) -> None:
    crashes = pool.describe()["crashes"]
    pid = invoke(pool, id="warm")["pid"]
    with pytest.raises(SandboxCrashed, match="died"):
        pool.invoke(event(exit=True))
    assert pool.describe()["crashes"] == crashes + 1
    assert invoke(pool, id="next")["id"] == "next"
    assert pid not in pool.describe()["pids"] and not _alive(pid)  # the most recently used


def test_a_sandbox_past_the_timeout_is_killed(pool: FunctionPool) -> None:
    timeouts = pool.describe()["timeouts"]
    before = set(pool.describe()["pids"])
    started = time.monotonic()
    with pytest.raises(FunctionTimeout):
        pool.invoke(event(sleep=TIMEOUT_S + 5))
    assert time.monotonic() - started < TIMEOUT_S + 1
    killed = before - set(pool.describe()["pids"])
    assert len(killed) == 1 and not _alive(killed.pop())
    assert pool.describe()["timeouts"] == timeouts + 1
    assert invoke(pool, id="after")["id"] == "after"


def test_a_sandbox_whose_channel_closes_ends(tmp_path: Path) -> None:
    (tmp_path / "fake_handler.py").write_text(FAKE_HANDLER)
    config = FunctionConfig(
        name="orphan", handler=tmp_path / "fake_handler.py", env={}, memory_mb=128,
        timeout_s=5, concurrency=1, log=tmp_path / "orphan.log",
    )  # fmt: skip
    pool = FunctionPool(config)
    pool.prestart()
    try:
        pool.wait_ready()
        (sandbox,) = pool._idle
        sandbox.close_connection()  # the pool's end gone: nobody can send it events
        sandbox.child.process.wait(timeout=5)
        assert sandbox.child.process.returncode == 0  # it ended itself, cleanly
    finally:
        pool.stop()
