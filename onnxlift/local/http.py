"""The HTTP plumbing the local servers share: a threaded server on loopback, its handler
base, and the keep-alive client they use to reach the process behind them.

The gateway, the Lambda sandbox and the SageMaker runtime front differ only in what they
answer; how they listen, read a body, reply and talk to their backend is written here once.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from onnxlift_serving.contract import JSON_CONTENT_TYPE

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body
LOOPBACK = "127.0.0.1"


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON reply: Content-Type first, then `headers`, the payload serialised."""
    return (
        status,
        {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
        json.dumps(payload).encode(),
    )


class LoopbackHandler(BaseHTTPRequestHandler):
    """One request on one server thread; subclasses add the do_* methods."""

    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per keep-alive request).
    disable_nagle_algorithm = True
    # Headers of a forwarded reply that this server writes itself, so they are not copied.
    own_headers: frozenset[str] = frozenset({"content-length", "connection"})

    def log_message(self, format: str, *args: Any) -> None:  # access logs stay quiet
        pass

    def body_length(self) -> int:
        return int(self.headers.get("Content-Length") or 0)

    def read_body(self, limit: int | None = None) -> bytes | None:
        """The request body, or None when it is over `limit`: then it is left unread and the
        connection closes after the reply, since the rest of the stream is that body."""
        length = self.body_length()
        if limit is not None and length > limit:
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def send_reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Status, `headers` (less own_headers), Content-Length, then the body unless HEAD."""
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in self.own_headers:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class LoopbackServer(ThreadingHTTPServer):
    """A thread per connection, serving on a daemon thread of its own until stop()."""

    daemon_threads = True  # a request still running does not hold the process at exit

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = LOOPBACK,
        port: int = 0,
        name: str = "loopback-server",
    ) -> None:
        super().__init__((host, port), handler)
        self.name = name
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        """The port bound; the free one picked when it was asked for port 0."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that has to run
            self.shutdown()
            self._thread = None
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (a boto3 pool discarding an unread response) is
        # routine, not a traceback on the console.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class BackendUnreachable(ConnectionError):
    """The backend refused or dropped the request twice (timeouts raise TimeoutError)."""


@dataclass(frozen=True)
class BackendResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class _Pools(threading.local):
    def __init__(self) -> None:
        self.connections: dict[tuple[str, int], http.client.HTTPConnection] = {}


class KeepAliveClient:
    """HTTP to backends on loopback over kept-alive connections, one per calling thread and
    backend, so a server thread reuses its connection for every request it forwards."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pools = _Pools()

    def request(
        self,
        host: str,
        port: int,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> BackendResponse:
        """Raises TimeoutError after timeout_s, BackendUnreachable when it cannot be reached."""
        for attempt in (1, 2):  # a kept-alive connection the backend closed: reconnect once
            connection = self._connection(host, port)
            try:
                connection.request(method, path, body, headers or {})
                response = connection.getresponse()
                return BackendResponse(response.status, response.headers, response.read())
            except TimeoutError:
                self._drop(host, port)
                raise
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._drop(host, port)
                if attempt == 2:
                    raise BackendUnreachable(f"{host}:{port}: {exc}") from exc
        raise AssertionError("the second attempt returns or raises")

    def _connection(self, host: str, port: int) -> http.client.HTTPConnection:
        pool = self._pools.connections
        connection = pool.get((host, port))
        if connection is None:
            connection = pool[host, port] = http.client.HTTPConnection(
                host, port, timeout=self.timeout_s
            )
        return connection

    def _drop(self, host: str, port: int) -> None:
        self._pools.connections.pop((host, port)).close()
