"""The local gateway against malformed, oversized, slow and bursty clients, over raw sockets
on 127.0.0.1: every answer is JSON, no body is read before the key, no thread waits for ever.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from onnxlift_serving.contract import API_GATEWAY_MAX_BODY_BYTES

from onnxlift.local.gateway import FunctionTarget, Gateway, GatewayConfig
from onnxlift.local.lambda_runtime import make_server

TIMEOUT_S = 0.5  # the gateway's read and idle timeouts in these tests
KEY = "k"
INFER = "/v2/models/minilm/infer"


def echo_function(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answers the body it was sent, as the function saw it."""
    body = event["body"] or ""
    if event["isBase64Encoded"]:
        body = base64.b64decode(body).decode()
    return {"statusCode": 200, "body": json.dumps({"body": body, "method": event["httpMethod"]})}


@dataclass
class Api:
    gateway: Gateway
    port: int


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    function = make_server(
        echo_function, host="127.0.0.1", port=0, function_name="minilm", memory_mb=128, timeout_s=3
    )
    function.start()
    config = GatewayConfig(
        api_key=KEY,
        functions={"minilm": FunctionTarget("minilm", "127.0.0.1", function.port)},
        default_function="minilm",
        read_timeout_s=TIMEOUT_S,
        idle_timeout_s=TIMEOUT_S,
    )
    gateway = Gateway(config, port=0)
    gateway.start()
    try:
        yield Api(gateway, gateway.server.port)
    finally:
        gateway.stop()
        function.stop()


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    closed: bool  # the server hung up after it
    seconds: float

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self.body
        return json.loads(self.body)


def connect(api: Api) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=5)


def read_answer(sock: socket.socket, started: float, method: str = "POST") -> Answer:
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    body = response.read()
    seconds = time.monotonic() - started
    sock.settimeout(TIMEOUT_S / 2)  # well before the idle timeout closes it anyway
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    except ConnectionResetError:
        closed = True
    return Answer(response.status, response.headers, body, closed, seconds)


def exchange(api: Api, raw: bytes) -> Answer:
    """Send `raw` on a new connection and read the one answer."""
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(raw)
        return read_answer(sock, started)


def request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def keyed(**headers: str) -> dict[str, str]:
    return {"x-api-key": KEY, **{k.replace("_", "-"): v for k, v in headers.items()}}


def assert_refused(answer: Answer, status: int, fragment: str) -> None:
    assert answer.status == status, answer.body
    assert fragment in answer.json()["error"]
    assert answer.closed
    assert answer.seconds < TIMEOUT_S  # answered at once: nothing waited for a body


# -- Content-Length --------------------------------------------------------------------------


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "0x10", "+5", ""])
def test_a_content_length_that_is_not_a_byte_count_is_400(api: Api, length: str) -> None:
    answer = exchange(api, request("POST", INFER, keyed(Content_Length=length), b"{}" * 1000))
    assert_refused(answer, 400, "invalid Content-Length")


def test_conflicting_content_lengths_are_400_and_agreeing_ones_are_one(api: Api) -> None:
    raw = request("POST", INFER, keyed(Content_Length="2"), b"{}")
    conflicting = raw.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 3")
    assert_refused(exchange(api, conflicting), 400, "conflicting Content-Length")
    assert_refused(
        exchange(api, raw.replace(b": 2\r\n", b": 2, 3\r\n")), 400, "conflicting Content-Length"
    )
    agreeing = raw.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 2")
    answer = exchange(api, agreeing)
    assert answer.status == 200 and answer.json()["body"] == "{}" and not answer.closed


def test_a_body_over_10_mib_is_413_unread_and_the_connection_closed(api: Api) -> None:
    over = str(API_GATEWAY_MAX_BODY_BYTES + 1)
    for headers in (keyed(Content_Length=over), {"Content-Length": over}):
        answer = exchange(api, request("POST", INFER, headers))  # the body is never sent
        assert_refused(answer, 413, f"the limit is {API_GATEWAY_MAX_BODY_BYTES}")


def test_a_client_that_sends_the_big_body_anyway_reads_the_413(api: Api) -> None:
    body = b"x" * (API_GATEWAY_MAX_BODY_BYTES + 1)
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(request("POST", INFER, keyed(Content_Length=str(len(body))), body))
        answer = read_answer(sock, started)  # no reset: the server discarded it, then closed
    assert answer.status == 413 and answer.closed


# -- the key before the body, the route after the key -----------------------------------------


def test_the_key_is_checked_before_the_body_is_read(api: Api) -> None:
    for headers, reason in (({}, "missing"), ({"x-api-key": "wrong"}, "invalid")):
        raw = request("POST", INFER, {**headers, "Content-Length": "1000"})  # body never sent
        assert_refused(exchange(api, raw), 403, f"Forbidden: {reason} API key")


def test_expect_100_continue_is_answered_only_once_the_body_is_wanted(api: Api) -> None:
    refused = exchange(
        api, request("POST", INFER, {"Content-Length": "2", "Expect": "100-continue"})
    )
    assert refused.status == 403  # the final answer, without a 100 first
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(request("POST", INFER, keyed(Content_Length="2", Expect="100-continue")))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        answer = read_answer(sock, started)
    assert answer.status == 200 and answer.json()["body"] == "{}"


# -- chunked bodies ----------------------------------------------------------------------------


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def test_a_chunked_body_is_decoded(api: Api) -> None:
    body = chunked(b'{"inputs"', b": []}")[:-5] + b"0;ext=1\r\nX-Trailer: t\r\n\r\n"
    raw = request("POST", INFER, keyed(Transfer_Encoding="chunked"), body)
    with connect(api) as sock:  # and the connection serves the next request
        started = time.monotonic()
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        assert response.status == 200 and json.loads(response.read())["body"] == '{"inputs": []}'
        sock.sendall(raw)
        second = read_answer(sock, started)
    assert second.status == 200 and not second.closed


def test_a_chunked_body_over_the_limit_is_413_as_soon_as_it_is(api: Api) -> None:
    size = API_GATEWAY_MAX_BODY_BYTES + 1
    head = request("POST", INFER, keyed(Transfer_Encoding="chunked"), b"%x\r\n" % size)
    assert_refused(exchange(api, head), 413, "Request too large")  # the chunk never follows


@pytest.mark.parametrize(
    "body", [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}XX0\r\n\r\n", b"-2\r\n{}\r\n0\r\n\r\n"]
)
def test_a_malformed_chunked_body_is_400(api: Api, body: bytes) -> None:
    raw = request("POST", INFER, keyed(Transfer_Encoding="chunked"), body)
    assert_refused(exchange(api, raw), 400, "malformed chunked request body")


def test_other_transfer_codings_are_501_and_both_framings_400(api: Api) -> None:
    gzip = request("POST", INFER, keyed(Transfer_Encoding="gzip, chunked"), chunked(b"{}"))
    assert_refused(exchange(api, gzip), 501, "Transfer-Encoding 'gzip, chunked'")
    both = request("POST", INFER, keyed(Transfer_Encoding="chunked", Content_Length="9"))
    assert_refused(exchange(api, both + chunked(b"{}")), 400, "not both")


# -- what http.server answers itself, as JSON --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "fragment"),
    [
        (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400, "Bad request"),
        (b"GET / HTTP/9.9\r\n\r\n", 505, "Invalid HTTP version"),
        (b"GET / HTTP/x\r\n\r\n", 400, "Bad request version"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414, "request line too long"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431, "Line too long"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "Too many headers"),
        (b"GET /\r\n", 400, "HTTP/0.9 is not supported"),
        (b"POST /\r\n", 400, "HTTP/0.9 is not supported"),
    ],
)
def test_protocol_errors_are_json(api: Api, raw: bytes, status: int, fragment: str) -> None:
    answer = exchange(api, raw)
    assert answer.status == status and fragment in answer.json()["error"], answer.body
    assert answer.closed and b"<html" not in answer.body.lower()


# -- timeouts and threads ----------------------------------------------------------------------


def wait_for_no_connections(api: Api, within_s: float) -> float:
    started = time.monotonic()
    while api.gateway.server.open_connections:
        assert time.monotonic() - started < within_s, "a server thread still holds a client"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_short_body_is_408_and_its_thread_released_within_the_timeout(api: Api) -> None:
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(request("POST", INFER, keyed(Content_Length="100"), b"{}"))  # 98 missing
        answer = read_answer(sock, started)
        assert answer.status == 408 and answer.json() == {"error": "request timed out"}
        assert TIMEOUT_S <= answer.seconds < 4 * TIMEOUT_S and answer.closed
        wait_for_no_connections(api, within_s=TIMEOUT_S)  # closed at once, no lingering


def test_a_body_cut_short_by_a_hang_up_releases_its_thread(api: Api) -> None:
    with connect(api) as sock:
        sock.sendall(request("POST", INFER, keyed(Content_Length="100"), b"{}"))
    assert wait_for_no_connections(api, within_s=TIMEOUT_S) < TIMEOUT_S / 2


def test_a_stalled_request_head_is_dropped(api: Api) -> None:
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")  # the headers never end
        answer = read_answer(sock, started)
    assert answer.status == 408 and answer.seconds < 4 * TIMEOUT_S
    wait_for_no_connections(api, within_s=2 * TIMEOUT_S)


def test_idle_connections_are_closed_after_the_idle_timeout(api: Api) -> None:
    with connect(api) as silent, connect(api) as kept_alive:
        started = time.monotonic()
        kept_alive.sendall(request("GET", "/v2/health/live", keyed()))
        assert read_answer(kept_alive, started).status == 200
        for sock in (silent, kept_alive):  # the server hangs up, saying nothing
            sock.settimeout(4 * TIMEOUT_S)
            assert sock.recv(1) == b""
        assert time.monotonic() - started < 4 * TIMEOUT_S
    wait_for_no_connections(api, within_s=2 * TIMEOUT_S)


def test_a_burst_of_200_connects_is_served_without_resets(api: Api) -> None:
    count = 200
    sockets: list[socket.socket] = []
    answers: list[int] = []
    lock = threading.Lock()
    try:
        for _ in range(count):  # all connected before the first request is sent
            before = time.monotonic()
            sockets.append(connect(api))
            assert time.monotonic() - before < 0.9  # no dropped SYN retried a second later

        def ask(sock: socket.socket) -> None:
            started = time.monotonic()
            sock.sendall(request("GET", "/v2/health/live", keyed()))
            status = read_answer(sock, started, method="GET").status
            with lock:
                answers.append(status)

        threads = [threading.Thread(target=ask, args=(sock,)) for sock in sockets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    finally:
        for sock in sockets:
            sock.close()
    assert answers == [200] * count
