"""A local Lambda sandbox: one process per function, the handler imported once at start.

It speaks the invoke API of the Lambda Runtime Interface Emulator, so the gateway (or a
test, or curl) invokes it as AWS would:
    POST /2015-03-31/functions/function/invocations   body: the event, reply: the result
    GET  /2015-03-31/functions/function/health         200 once the init phase has run
Invocations are served on threads: onnxruntime's `run` releases the GIL, so concurrent
requests share the one session as concurrent sandboxes would each use their own.

    python -m onnxlift.local.lambda_runtime --handler functions/inference/handler.py \
        --function-name minilm --port 9001
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from onnxlift_serving.contract import Env

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
HEALTH_PATH = "/2015-03-31/functions/function/health"


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


def make_server(
    handler: Callable[[dict, Any], Any],
    *,
    host: str,
    port: int,
    function_name: str,
    memory_mb: int,
    timeout_s: int,
) -> ThreadingHTTPServer:
    class Invocations(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # see gateway.py: no 40 ms delayed-ACK stalls

        def log_message(self, format: str, *args: Any) -> None:  # access logs stay quiet
            pass

        def _reply(self, status: int, body: bytes, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == HEALTH_PATH:
                self._reply(200, b'{"status": "ready"}')
            else:
                self._reply(404, b'{"error": "not found"}')

        def do_POST(self) -> None:
            if self.path != INVOKE_PATH:
                self._reply(404, b'{"error": "not found"}')
                return
            length = int(self.headers.get("Content-Length", 0))
            try:
                event = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as exc:
                self._reply(400, json.dumps({"errorMessage": f"event is not JSON: {exc}"}).encode())
                return
            context = LocalContext(function_name, memory_mb, timeout_s)
            try:
                result = handler(event, context)
            except Exception as exc:  # Lambda reports an unhandled error as a function error
                traceback.print_exc()
                payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
                self._reply(
                    200, json.dumps(payload).encode(), {"X-Amz-Function-Error": "Unhandled"}
                )
                return
            self._reply(200, json.dumps(result).encode())

    server = ThreadingHTTPServer((host, port), Invocations)
    server.daemon_threads = True
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
    args = parser.parse_args(argv)

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
