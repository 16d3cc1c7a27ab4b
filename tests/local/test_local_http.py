"""The server base and keep-alive client the local servers share: real HTTP on 127.0.0.1."""

from __future__ import annotations

import http.client
import io
import json
import random
import socket
import time
from collections.abc import Iterator

import pytest

from onnxlift.local.http import (
    BackendResponse,
    BackendUnreachable,
    KeepAliveClient,
    LoopbackHandler,
    LoopbackServer,
    json_reply,
    read_headers,
)
from onnxlift.local.processes import free_port, port_in_use

LIMIT = 16


class Echo(LoopbackHandler):
    """Answers who asked (the client's port tells connections apart) and what it sent."""

    server_version = "echo"

    def do_POST(self) -> None:
        body = self.read_body(LIMIT)
        if body is None:
            self.send_reply(*json_reply(413, {"error": "too large"}))
            return
        nodelay = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        payload = {"body": body.decode(), "peer": self.client_address[1], "nodelay": nodelay}
        self.send_reply(*json_reply(200, payload, {"Connection": "dropped by own_headers"}))

    def do_GET(self) -> None:
        if self.path == "/close":
            self.close_connection = True  # answer, say Connection: close, hang up
        elif self.path == "/slow":
            time.sleep(0.6)
        elif self.path == "/bye":  # a caller's own Connection: close
            self.send_reply(
                *json_reply(200, {"peer": self.client_address[1]}, {"connection": "Close"})
            )
            return
        self.send_reply(*json_reply(200, {"peer": self.client_address[1]}))

    do_HEAD = do_GET


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    server = LoopbackServer(Echo, port=0, name="echo")
    server.start()
    yield server
    server.stop()


def peer(response: BackendResponse) -> int:
    """The client port the server saw: a new one means a new connection."""
    return int(json.loads(response.body)["peer"])


def test_server_listens_on_loopback_until_stopped() -> None:
    server = LoopbackServer(Echo, port=0)
    host, port = server.host, server.port
    assert host == "127.0.0.1" and port != 0 and server.url == f"http://127.0.0.1:{port}"
    server.start()
    assert KeepAliveClient(timeout_s=2).request(host, port, "GET", "/").status == 200
    server.stop()
    assert not port_in_use(port)


def test_one_kept_alive_connection_per_thread_with_nagle_off(server: LoopbackServer) -> None:
    client = KeepAliveClient(timeout_s=2)
    host, port = server.host, server.port
    first = client.request(host, port, "POST", "/", b"hello")
    second = client.request(host, port, "POST", "/", b"again")
    assert first.status == second.status == 200
    assert json.loads(first.body)["body"] == "hello" and json.loads(second.body)["nodelay"]
    assert peer(first) == peer(second)  # the same connection carried both
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["Content-Length"] == str(len(first.body))
    assert first.headers["Server"].startswith("echo") and "Connection" not in first.headers


@pytest.mark.parametrize(
    "path",
    [
        "/close",  # the handler set close_connection
        "/bye",  # the handler passed its own Connection: close
    ],
)
def test_a_connection_the_server_closed_is_reopened_once(server: LoopbackServer, path: str) -> None:
    client = KeepAliveClient(timeout_s=2)
    host, port = server.host, server.port
    closed = client.request(host, port, "GET", path)
    reopened = client.request(host, port, "GET", "/")
    assert closed.status == reopened.status == 200
    assert closed.headers.get_all("Connection") == ["close"]  # said once, by the server
    assert peer(closed) != peer(reopened)  # the server hung up as it said


def test_a_body_over_the_limit_is_left_unread_and_the_connection_closed(
    server: LoopbackServer,
) -> None:
    client = KeepAliveClient(timeout_s=2)
    host, port = server.host, server.port
    before = client.request(host, port, "POST", "/", b"x" * LIMIT)
    refused = client.request(host, port, "POST", "/", b"x" * (LIMIT + 1))
    after = client.request(host, port, "POST", "/", b"x" * LIMIT)
    assert (before.status, refused.status, after.status) == (200, 413, 200)
    assert peer(before) != peer(after)  # the refusal closed the kept-alive connection


def test_head_gets_the_headers_without_the_body(server: LoopbackServer) -> None:
    host, port = server.host, server.port
    response = KeepAliveClient(timeout_s=2).request(host, port, "HEAD", "/")
    assert response.status == 200 and response.body == b""
    assert int(response.headers["Content-Length"]) > 0


def test_a_slow_backend_is_a_timeout(server: LoopbackServer) -> None:
    host, port = server.host, server.port
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        KeepAliveClient(timeout_s=0.2).request(host, port, "GET", "/slow")
    assert time.monotonic() - started < 0.5


def test_a_closed_port_is_unreachable() -> None:
    with pytest.raises(BackendUnreachable):
        KeepAliveClient(timeout_s=2).request("127.0.0.1", free_port(), "GET", "/")


def test_clients_that_hang_up_are_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    server = LoopbackServer(Echo, port=0)
    try:
        try:
            raise ConnectionResetError("client went away")
        except ConnectionResetError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert capsys.readouterr().err == ""
        try:
            raise ValueError("a real bug")
        except ValueError:
            server.handle_error(None, ("127.0.0.1", 1))
        assert "a real bug" in capsys.readouterr().err
    finally:
        server.stop()


def test_a_method_without_a_handler_is_json_501(server: LoopbackServer) -> None:
    for method in ("OPTIONS", "TRACE", "BREW"):
        response = KeepAliveClient(timeout_s=2).request(server.host, server.port, method, "/")
        assert response.status == 501 and response.headers["Content-Type"] == "application/json"
        assert json.loads(response.body) == {"error": f"method {method!r} is not supported"}


class Small(LoopbackServer):
    max_connections = 2
    busy_wait_s = 0.2


def test_connections_over_the_bound_wait_then_get_a_503() -> None:
    server = Small(Echo, port=0)
    server.start()
    held = [socket.create_connection((server.host, server.port), timeout=2) for _ in range(2)]
    try:
        with socket.create_connection((server.host, server.port), timeout=2) as third:
            reply = third.recv(4096)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1\r\n" in reply
        assert reply.endswith(b'{"error": "server busy: too many connections"}')
        held.pop().close()  # a slot frees: the next connection is served
        time.sleep(0.05)
        client = KeepAliveClient(timeout_s=2)
        assert client.request(server.host, server.port, "GET", "/").status == 200
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_stop_hangs_up_on_kept_alive_connections() -> None:
    server = LoopbackServer(Echo, port=0)
    server.start()
    with socket.create_connection((server.host, server.port), timeout=2) as idle:
        deadline = time.monotonic() + 2
        while not server.open_connections:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        assert idle.recv(1) == b"" and time.monotonic() - started < 1


PLAIN_LINES = [  # what read_headers stores itself
    b"Host: 127.0.0.1\r\n",
    b"x-api-key:k\r\n",
    b"Content-Type:  application/json \r\n",  # blanks after the colon dropped, trailing kept
    b"Empty:\r\n",
    b"x-Dup: 1\n",
    b"X-DUP: 2\r\n",
    b"Value: \xff\xfe\r\n",
]
ODD_LINES = [  # what sends a block through the email parser
    b"Caf\xe9: latin-1 name\r\n",
    b"Folded: one\r\n",
    b" two\r\n",  # a continuation line
    b"Bare: a\rb\r\n",  # a CR inside a value
    b": no name\r\n",
    b"From nobody\r\n",
    b"no colon\r\n",
    b"After: the odd line\r\n",
]


@pytest.mark.parametrize("seed", range(60))
def test_read_headers_reads_what_http_client_parse_headers_reads(seed: int) -> None:
    """Same names, values and order as http.client's parser, for plain and odd blocks."""
    rng = random.Random(seed)
    pool = PLAIN_LINES if seed % 2 else PLAIN_LINES + ODD_LINES
    lines = rng.sample(pool, rng.randint(0, len(pool)))
    block = b"".join(lines) + rng.choice([b"\r\n", b"\n", b""]) + b"the body"
    ours, theirs = io.BytesIO(block), io.BytesIO(block)
    expected = http.client.parse_headers(theirs)
    got = read_headers(ours)
    assert isinstance(got, http.client.HTTPMessage)
    assert got.items() == expected.items(), block
    assert ours.read() == theirs.read()  # the body left unread alike
    for name in ("x-dup", "content-type", "empty", "folded", "value"):
        assert got.get_all(name) == expected.get_all(name)


def test_read_headers_limits_are_http_clients() -> None:
    with pytest.raises(http.client.LineTooLong):
        read_headers(io.BytesIO(b"a: " + b"x" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException, match="more than 100"):
        read_headers(io.BytesIO(b"a: b\r\n" * 101 + b"\r\n"))
    assert len(read_headers(io.BytesIO(b"a: b\r\n" * 99 + b"\r\n"))) == 99
