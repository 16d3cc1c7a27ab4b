"""A local Lambda sandbox: one process, the handler imported once at start (the init phase),
then one event at a time, as a Lambda execution environment runs them.

It speaks the invoke API of the Lambda Runtime Interface Emulator, so the local Lambda
service (lambda_service.py), a test or curl invokes it as AWS would:
    POST /2015-03-31/functions/function/invocations   body: the event, reply: the result
    GET  /2015-03-31/functions/function/health         200 once the init phase has run
The local Lambda service itself sends events over a faster private channel, a socket pair
whose end the sandbox inherits (`--channel-fd`, channel.py): the same event in, the same
reply out, without HTTP's parsing on either side; the health route is how it waits for the
init phase. Connections and the channel are served on threads, so the health route answers
while an event runs, but events (from either) enter the handler one at a time (a second
waits for the first): handlers keep per-event state at module scope (powertools' resolver
holds `current_event`), so two events in one sandbox would read each other's bodies.
Concurrency comes from more sandboxes, which the local Lambda service starts on demand up to
the function's reserved concurrency.

    python -m onnxlift.local.lambda_runtime --handler functions/inference/handler.py \
        --function-name minilm --port 9001
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import orjson
from onnxlift_serving.contract import JSON_CONTENT_TYPE, Env, error_body

from onnxlift.local import channel
from onnxlift.local.http import LoopbackHandler, LoopbackServer, Reply, json_reply

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
HEALTH_PATH = "/2015-03-31/functions/function/health"
_NOT_FOUND = json_reply(404, error_body("not found"))
# After an event this large, the sandbox collects garbage and hands freed heap back to the OS
# (malloc_trim). Measured on minilm through `onnxlift up`, 6 MB requests of four 1.5 MB texts:
# a sandbox that started at 155 MB held 615 MB after them without it (the tokenizer's freed
# blocks stay in glibc's heap), 155-165 MB with it.
TRIM_AFTER_BYTES = 1 << 20
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 128 * 1024  # glibc's default, held fixed
_ARENA_MAX = 2


def _libc() -> Any:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def bound_heap() -> None:
    """Make freed large blocks go back to the OS (glibc; elsewhere nothing happens).

    glibc serves a block over the mmap threshold with its own mapping, unmapped when freed,
    but it raises that threshold to the largest block freed so far (up to 32 MiB): after one
    6 MB request body every later one comes from the heap, which keeps its peak. Held at
    128 KiB, a request's body and its parsed copies are unmapped when freed. Two arenas: a
    sandbox runs one event at a time, and every thread that meets contention otherwise gets
    an arena of its own that keeps what it held. Measured in
    tests/local/test_lambda_service.py (a sandbox held 6 MB more after a burst of 6 MB events
    without it, with or without malloc_trim; nothing more with it)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        mallopt(_M_ARENA_MAX, _ARENA_MAX)


def release_memory() -> None:
    """Collect garbage, then glibc's malloc_trim(0): freed pages inside the heap go back too."""
    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@dataclass
class LocalContext:
    """The attributes of Lambda's context object that handlers and powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: int
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    started: float = field(default_factory=time.monotonic)

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


def load_handler(path: Path, attribute: str = "lambda_handler") -> Callable[[dict, Any], Any]:
    """Import the handler file as Lambda does: its folder on sys.path, module scope run once."""
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return getattr(module, attribute)


@dataclass(frozen=True)
class Sandbox:
    """One function's handler and the configuration its context reports; one event at a time."""

    handler: Callable[[dict, Any], Any]
    function_name: str
    memory_mb: int
    timeout_s: int
    _one_event: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def invoke(self, raw_event: bytes | bytearray) -> Reply:
        """The invoke API's reply, the events serialised: a second waits for the first."""
        with self._one_event:
            return self._run(raw_event)

    def _run(self, raw_event: bytes | bytearray) -> Reply:
        """The result, or the error as Lambda reports it."""
        try:
            event = orjson.loads(raw_event or b"{}")
        except orjson.JSONDecodeError as exc:
            return json_reply(400, {"errorMessage": f"event is not JSON: {exc}"})
        context = LocalContext(self.function_name, self.memory_mb, self.timeout_s)
        try:
            result = self.handler(event, context)
        except Exception as exc:  # Lambda reports an unhandled error as a function error
            traceback.print_exc()
            payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            return json_reply(200, payload, {"X-Amz-Function-Error": "Unhandled"})
        try:  # orjson: the result's body is a long string, the stdlib escapes it slowly
            return 200, {"Content-Type": JSON_CONTENT_TYPE}, orjson.dumps(result)
        except TypeError:  # what orjson refuses (a lone surrogate, a non-str key)
            return json_reply(200, result)


class _InvocationsHandler(LoopbackHandler):
    """The RIE's two routes; make_server subclasses it with the sandbox to run."""

    sandbox: ClassVar[Sandbox]

    def do_GET(self) -> None:
        if self.path == HEALTH_PATH:
            self.send_reply(*json_reply(200, {"status": "ready", "pid": os.getpid()}))
        else:
            self.send_reply(*_NOT_FOUND)

    def do_POST(self) -> None:
        if self.path != INVOKE_PATH:
            self.send_reply(*_NOT_FOUND)
            return
        body = self.read_body() or b""
        large = len(body) >= TRIM_AFTER_BYTES
        reply = self.sandbox.invoke(body)
        del body
        self.send_reply(*reply)
        if large:  # the event, its parsed copies and the handler's are garbage by now
            del reply
            release_memory()


def serve_channel(sandbox: Sandbox, pool_end: socket.socket) -> None:
    """Run the events the pool sends on the channel, one at a time, until it closes its end;
    then end the process, as the pool is done with it."""
    try:
        with pool_end:
            while (event := channel.receive_event(pool_end)) is not None:
                large = len(event) >= TRIM_AFTER_BYTES
                status, headers, body = sandbox.invoke(event)
                del event
                channel.send_reply(pool_end, status, headers, body)
                if large:  # as after a large event over HTTP
                    del body
                    release_memory()
    finally:  # closed, broken or failed: the pool counts this sandbox gone either way
        os.kill(os.getpid(), signal.SIGTERM)


def start_channel(sandbox: Sandbox, fd: int) -> threading.Thread:
    """Serve the pool's end of the channel (inherited as `fd`) on a daemon thread."""
    pool_end = socket.socket(fileno=fd)
    pool_end.setblocking(True)
    thread = threading.Thread(
        target=serve_channel, args=(sandbox, pool_end), name="channel", daemon=True
    )
    thread.start()
    return thread


def make_server(
    handler: Callable[[dict, Any], Any],
    *,
    host: str,
    port: int,
    function_name: str,
    memory_mb: int,
    timeout_s: int,
    channel_fd: int | None = None,
) -> LoopbackServer:
    """The RIE's HTTP server for the handler (not yet serving); with `channel_fd`, the
    channel's thread is already serving the same sandbox."""
    sandbox = Sandbox(handler, function_name, memory_mb, timeout_s)
    invocations = type("Invocations", (_InvocationsHandler,), {"sandbox": sandbox})
    server = LoopbackServer(invocations, host=host, port=port, name=f"function {function_name}")
    if channel_fd is not None:
        start_channel(sandbox, channel_fd)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", type=Path, required=True, help="path to the handler file")
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--memory-mb",
        type=int,
        default=int(os.environ.get(Env.LAMBDA_MEMORY, 2048)),
    )
    parser.add_argument("--timeout-s", type=int, default=30)
    parser.add_argument(
        "--channel-fd", type=int, default=None, help="the local Lambda service's channel"
    )
    args = parser.parse_args(argv)

    bound_heap()  # before the init phase allocates anything large
    started = time.perf_counter()
    handler = load_handler(args.handler.resolve())
    init_s = time.perf_counter() - started
    server = make_server(
        handler,
        host=args.host,
        port=args.port,
        function_name=args.function_name,
        memory_mb=args.memory_mb,
        timeout_s=args.timeout_s,
        channel_fd=args.channel_fd,
    )
    print(
        json.dumps(
            {
                "function": args.function_name,
                "init_seconds": round(init_s, 3),
                "listening": f"http://{args.host}:{args.port}",
            }
        ),
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds serve_forever cleanly
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
