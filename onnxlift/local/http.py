"""The HTTP plumbing the local servers share: a threaded server on loopback, its handler
base, and the keep-alive client they use to reach the process behind them.

The gateway, the Lambda sandbox and the SageMaker runtime front differ only in what they
answer; how they listen, frame and read a body, time out, reply and talk to their backend is
written here once. The rules a client's malformed or hostile request meets are all here:

- Every error this layer answers itself is JSON `{"error": ...}`, never the HTML of
  http.server: a malformed request line, a header line too long, HTTP/0.9, a method the
  server has no handler for.
- The body is framed by one Content-Length (digits only; duplicates must agree) or by
  `Transfer-Encoding: chunked`, decoded here; anything else is a 400 (501 for another
  transfer coding). Nothing is read until a handler asks for the body, so it can refuse a
  request (a missing API key, a declared length over its limit) without reading it.
- A reply sent while the body is still unread closes the connection: the rest of the
  stream is that body. The unread bytes are discarded for a short while first (a lingering
  close), so the client reads the reply instead of a reset.
- Timeouts: an idle kept-alive connection is closed after idle_timeout_s; a request whose
  headers or body stall for read_timeout_s, or whose body takes over body_deadline_s, is
  answered 408 and closed. No thread waits on a client for ever.
- The server listens with a real backlog and serves at most max_connections connections at
  once; the next ones wait in the backlog, and one that waits too long gets a JSON 503 with
  Retry-After.
"""

from __future__ import annotations

import contextlib
import email.message
import email.parser
import http.client
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from onnxlift_serving.contract import (
    JSON_CONTENT_TYPE,
    RETRY_AFTER,
    THROTTLE_RETRY_AFTER_S,
    error_body,
    parse_count,
)

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body
LOOPBACK = "127.0.0.1"

IDLE_TIMEOUT_S = 30.0  # a kept-alive connection with no next request
READ_TIMEOUT_S = 10.0  # the longest pause while a request's headers or body arrive
BODY_DEADLINE_S = 60.0  # the longest a whole body may take
LINGER_S = 1.0  # how long an unread body is discarded before the connection closes
MAX_CHUNK_LINE = 1024  # a chunk-size line (size and extensions)
MAX_TRAILERS = 100
_CHUNK_SIZE = re.compile(r"[0-9a-fA-F]+")
MAX_HEADER_LINE = 65536  # as http.client reads a header line
MAX_HEADERS = 100  # as http.client counts them
# A header line the email parser would store as is: a field name of visible characters
# other than the colon, the colon, a value without CR or LF, the line's end.
_PLAIN_HEADER = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\r\n]*)\r?\n")
_ONE_WRITE = 1 << 16  # a reply's body up to this size goes out in one write with its head


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON reply: Content-Type first, then `headers`, the payload serialised."""
    return (
        status,
        {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
        json.dumps(payload).encode(),
    )


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """The contract's error body, `{"error": message}`, with `status`."""
    return json_reply(status, error_body(message), headers)


class HttpError(Exception):
    """A request this layer refuses: answered as error_reply(status, message, headers), and
    the connection closed (its framing can no longer be trusted)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class Framing:
    """How a request's body is delimited: `length` bytes, or chunked (length None)."""

    length: int | None

    @property
    def chunked(self) -> bool:
        return self.length is None

    @property
    def has_body(self) -> bool:
        return self.length != 0


def body_framing(headers: email.message.Message) -> Framing:
    """The request's body framing; HttpError 400 when Content-Length is not one run of
    digits (negative, non-numeric, or duplicates that differ), or is sent with
    Transfer-Encoding; 501 for a transfer coding other than chunked."""
    codings = [
        coding.strip().lower()
        for header in headers.get_all("Transfer-Encoding") or ()
        for coding in header.split(",")
        if coding.strip()
    ]
    lengths = [
        value.strip()
        for header in headers.get_all("Content-Length") or ()
        for value in header.split(",")
    ]
    if codings:
        if codings != ["chunked"]:
            raise HttpError(501, f"Transfer-Encoding {', '.join(codings)!r} is not supported")
        if lengths:
            raise HttpError(400, "a request has Content-Length or Transfer-Encoding, not both")
        return Framing(None)
    counts = {parse_count(value) for value in lengths}
    if None in counts:
        bad = next(value for value in lengths if parse_count(value) is None)
        raise HttpError(400, f"invalid Content-Length {bad[:40]!r}: not a byte count")
    if len(counts) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    return Framing(int(lengths[0]) if lengths else 0)


def read_headers(
    stream: Any, message_class: type[http.client.HTTPMessage] = http.client.HTTPMessage
) -> http.client.HTTPMessage:
    """The request's header lines up to the empty line, as http.client.parse_headers reads
    and parses them (LineTooLong for a line over 64 KiB, HTTPException past 100 lines).

    A plain line, `name: value` with a field name of visible characters and no CR or LF
    inside, is stored as the email parser would store it (set_raw, the value with its leading
    blanks dropped); any other line (a continuation, a bare CR, no name) sends the whole
    block through the email parser, so an odd request is read exactly as before."""
    lines: list[bytes] = []
    while True:
        line = stream.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    message = message_class()
    for line in lines[:-1]:
        plain = _PLAIN_HEADER.fullmatch(line.decode("iso-8859-1"))
        if plain is None:
            text = b"".join(lines).decode("iso-8859-1")
            parsed = email.parser.Parser(_class=message_class).parsestr(text)
            return cast(http.client.HTTPMessage, parsed)
        message.set_raw(plain[1], plain[2].lstrip(" \t"))
    return message


class LoopbackHandler(BaseHTTPRequestHandler):
    """One connection on one server thread; subclasses add the do_* methods (or override
    dispatch), read the body with read_body and answer with send_reply."""

    protocol_version = "HTTP/1.1"  # keep-alive
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms per keep-alive request).
    disable_nagle_algorithm = True
    # Headers of a forwarded reply that this server writes itself, so they are not copied.
    own_headers: frozenset[str] = frozenset({"content-length", "connection"})
    idle_timeout_s: float = IDLE_TIMEOUT_S
    read_timeout_s: float = READ_TIMEOUT_S
    body_deadline_s: float = BODY_DEADLINE_S
    linger_s: float = LINGER_S

    framing = Framing(0)
    _body_pending = False  # the request has a body nobody has read
    _linger = False  # discard what the client still sends before closing
    _replied = False  # a status line of this request went out

    def log_message(self, format: str, *args: Any) -> None:  # access logs stay quiet
        pass

    # -- one request ------------------------------------------------------------------------

    def handle_one_request(self) -> None:
        """Read a request line and headers, check the framing, dispatch; refusals are JSON."""
        self.framing, self._body_pending, self._replied = Framing(0), False, False
        try:
            self.connection.settimeout(self.idle_timeout_s)
            self.raw_requestline = self.rfile.readline(65537)
        except (TimeoutError, OSError):  # idle (or gone) between requests: just close
            self.close_connection = True
            return
        try:
            self.connection.settimeout(self.read_timeout_s)
            self._handle_request()
        except HttpError as error:
            self.close_connection = True
            if error.status == 408:  # a stalled client: no lingering for what it still sends
                self._body_pending = False
            if not self._replied:
                self._reply_quietly(*error_reply(error.status, error.message, error.headers))
        except TimeoutError:  # a read or a write stalled: answer if nothing went out yet
            self.close_connection, self._body_pending = True, False
            if not self._replied:
                self._reply_quietly(*error_reply(408, "request timed out"))

    def _handle_request(self) -> None:
        if not self.raw_requestline:
            self.close_connection = True
            return
        self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
        if len(self.raw_requestline) > 65536:
            raise HttpError(414, "request line too long")
        if len(self.raw_requestline.split()) == 2:  # http.server would serve it, headerless
            raise HttpError(400, "HTTP/0.9 is not supported")
        if not self.parse_request():  # it answered with send_error
            return
        self.framing = body_framing(self.headers)
        self._body_pending = self.framing.has_body
        self.dispatch()
        if self._body_pending:  # answered without reading it: the stream is that body
            self.close_connection = self._linger = True
        self.wfile.flush()

    def parse_request(self) -> bool:
        """http.server's parse_request, its headers read by read_headers (the same message,
        without the email parser for plain header lines); False once it answered."""
        if not self._parse_request_line():
            return False
        try:
            self.headers = read_headers(self.rfile, self.MessageClass)
        except http.client.LineTooLong as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err)
            )
            return False
        connection = self.headers.get("Connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "").lower()
        if (
            expect == "100-continue"
            and self.protocol_version >= "HTTP/1.1"
            and self.request_version >= "HTTP/1.1"
        ):
            return self.handle_expect_100()
        return True

    def _parse_request_line(self) -> bool:
        """The request line, as http.server (3.11 to 3.13) parses it; False once answered."""
        self.command = ""  # set in case of error on the first line
        self.request_version = version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) >= 3:  # enough to determine the protocol version
            version = words[-1]
            numbers = version[5:].split(".") if version.startswith("HTTP/") else []
            if (
                len(numbers) != 2
                or not all(n.isdigit() for n in numbers)
                or any(len(n) > 10 for n in numbers)
            ):
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
                return False
            number = int(numbers[0]), int(numbers[1])
            if number >= (1, 1) and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if number >= (2, 0):
                self.send_error(
                    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                    f"Invalid HTTP version ({version[5:]})",
                )
                return False
            self.request_version = version
        if not 2 <= len(words) <= 3:
            self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        self.command, self.path = words[:2]
        if len(words) == 2:  # HTTP/0.9: refused before this by _handle_request
            self.close_connection = True
            if self.command != "GET":
                self.send_error(
                    HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({self.command!r})"
                )
                return False
        if self.path.startswith("//"):
            self.path = "/" + self.path.lstrip("/")  # reduce to a single /
        return True

    def dispatch(self) -> None:
        """Run do_<METHOD>; a method without one is a JSON 501."""
        method = getattr(self, f"do_{self.command}", None)
        if method is None:
            raise HttpError(501, f"method {self.command[:20]!r} is not supported")
        method()

    def handle_expect_100(self) -> bool:
        """`Expect: 100-continue` is answered when the body is read, not before: a request
        refused on its headers never has its body sent."""
        return True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, header too long, bad version), as
        the contract's JSON error instead of an HTML page."""
        self.request_version = "HTTP/1.0"  # parse_request may have set 0.9: no status line
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        self.send_reply(*error_reply(code, (message or phrase)[:200]))

    # -- the body ---------------------------------------------------------------------------

    def body_length(self) -> int:
        """The declared body length (0 for a chunked body, whose length is not declared)."""
        return self.framing.length or 0

    def over_limit(self, limit: int) -> bool:
        """Whether the declared length is over `limit`, known before reading anything."""
        return self.framing.length is not None and self.framing.length > limit

    def read_body(self, limit: int | None = None) -> bytes | None:
        """The request body, or None when it is (or grows, chunked) over `limit`: then the
        rest is left unread and the connection closes after the reply. HttpError 400 for a
        body cut short or badly chunked, 408 when it stalls."""
        if not self._body_pending:
            return b""
        if limit is not None and self.over_limit(limit):
            return None
        expects_100 = self.headers.get("Expect", "").lower() == "100-continue"
        if expects_100 and self.request_version != "HTTP/1.0":
            self.wfile.write(f"{self.protocol_version} 100 Continue\r\n\r\n".encode())
            self.wfile.flush()
        deadline = time.monotonic() + self.body_deadline_s
        if self.framing.length is not None:
            body: bytes | None = self._read_exactly(self.framing.length, deadline)
        else:
            body = self._read_chunked(limit, deadline)
        self._body_pending = body is None
        return body

    def _read_exactly(self, length: int, deadline: float) -> bytes:
        parts, left = [], length
        while left:
            if time.monotonic() > deadline:
                raise HttpError(408, "request body timed out")
            part = self.rfile.read1(min(left, 1 << 16))
            if not part:
                raise HttpError(400, f"request body ended {left} bytes short")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _read_chunked(self, limit: int | None, deadline: float) -> bytes | None:
        """A chunked body, decoded; None as soon as it is over `limit`."""
        parts, total = [], 0
        while True:
            line = self.rfile.readline(MAX_CHUNK_LINE + 1)
            size_text = line.split(b";", 1)[0].strip().decode("latin-1")
            if len(line) > MAX_CHUNK_LINE or not _CHUNK_SIZE.fullmatch(size_text):
                raise HttpError(400, "malformed chunked request body")
            size = int(size_text, 16)
            if size == 0:
                break
            total += size
            if limit is not None and total > limit:
                return None
            parts.append(self._read_exactly(size, deadline))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise HttpError(400, "malformed chunked request body")
        for _ in range(MAX_TRAILERS + 1):  # trailers, ignored, up to the empty line
            trailer = self.rfile.readline(MAX_CHUNK_LINE + 1)
            if trailer in (b"\r\n", b"\n", b""):
                return b"".join(parts)
        raise HttpError(400, "too many trailers in a chunked request body")

    # -- the reply --------------------------------------------------------------------------

    def send_reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Status, Server, Date, `headers` (less own_headers), Content-Length, then the body
        unless HEAD. A reply to a request whose body is still unread closes the connection, as
        does a `Connection: close` in `headers` (written once, by this server).

        Written here rather than by send_response/send_header/end_headers, which cost a
        write for the head and another for the body: one write for a reply up to 64 KiB."""
        if self._body_pending:
            self.close_connection = self._linger = True
        for key, value in headers.items():
            tokens = {token.strip().lower() for token in value.split(",")}
            if key.lower() == "connection" and "close" in tokens:
                self.close_connection = True
        self._replied = True
        lines = [
            f"{self.protocol_version} {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Server: {self.version_string()}\r\nDate: {self.date_time_string()}\r\n"
        ]
        lines += [
            f"{key}: {value}\r\n"
            for key, value in headers.items()
            if key.lower() not in self.own_headers
        ]
        lines.append(f"Content-Length: {len(body)}\r\n")
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1", "strict")
        if self.command == "HEAD":
            self.wfile.write(head)
        elif len(body) <= _ONE_WRITE:
            self.wfile.write(head + body)
        else:  # not joined: a large body is not copied for its head
            self.wfile.write(head)
            self.wfile.write(body)

    def _reply_quietly(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A last reply to a client that may be gone (or not reading)."""
        try:
            self.connection.settimeout(min(1.0, self.read_timeout_s))
            self.send_reply(status, headers, body)
            self.wfile.flush()
        except OSError:
            pass

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        if self._linger:
            _linger(self.connection, self.linger_s)


def _linger(connection: socket.socket, seconds: float) -> None:
    """Stop sending, then discard what the client still sends for up to `seconds`: closing
    with unread bytes would send a reset, and the client could lose the reply."""
    deadline = time.monotonic() + seconds
    try:
        connection.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(1 << 16):
                return
    except OSError:
        pass


class LoopbackServer(ThreadingHTTPServer):
    """A thread per connection, at most max_connections at once, serving on a daemon
    thread of its own until stop()."""

    daemon_threads = True  # a request still running does not hold the process at exit
    block_on_close = False  # stop() closes the connections instead of waiting for them
    request_queue_size = 1024  # listen backlog: a burst of connects waits, is not reset
    max_connections = 256
    busy_wait_s = 5.0  # a connection waits this long for a free slot, then gets a 503

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
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

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

    @property
    def open_connections(self) -> int:
        """Connections a server thread is serving now."""
        with self._lock:
            return len(self._open)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:  # shutdown() waits for a serve_forever that has to run
            self.shutdown()
            self._thread = None
        self.server_close()
        with self._lock:  # wake the threads still reading from a client
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(timeout=self.busy_wait_s):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        with self._lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._lock:
            self._open.discard(request)
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that drops its connection (a boto3 pool discarding an unread response) or
        # stalls is routine, not a traceback on the console.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def _refuse_busy(connection: socket.socket) -> None:
    status, headers, body = error_reply(503, "server busy: too many connections")
    head = f"HTTP/1.1 {status} Service Unavailable\r\nContent-Type: {headers['Content-Type']}"
    head += f"\r\n{RETRY_AFTER}: {THROTTLE_RETRY_AFTER_S}\r\nContent-Length: {len(body)}"
    head += "\r\nConnection: close\r\n\r\n"
    try:
        connection.settimeout(1.0)
        connection.sendall(head.encode() + body)
    except OSError:
        pass
    _linger(connection, 0.2)


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
