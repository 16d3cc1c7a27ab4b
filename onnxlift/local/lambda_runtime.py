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
from pathlib import Path
from typing import Any, ClassVar

from onnxlift_serving.contract import Env, error_body

from onnxlift.local.http import LoopbackHandler, LoopbackServer, Reply, json_reply

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
HEALTH_PATH = "/2015-03-31/functions/function/health"
_NOT_FOUND = json_reply(404, error_body("not found"))


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
    """One function's handler and the configuration its context reports."""

    handler: Callable[[dict, Any], Any]
    function_name: str
    memory_mb: int
    timeout_s: int

    def invoke(self, raw_event: bytes) -> Reply:
        """The invoke API's reply: the result, or the error as Lambda reports it."""
        try:
            event = json.loads(raw_event or b"{}")
        except json.JSONDecodeError as exc:
            return json_reply(400, {"errorMessage": f"event is not JSON: {exc}"})
        context = LocalContext(self.function_name, self.memory_mb, self.timeout_s)
        try:
            result = self.handler(event, context)
        except Exception as exc:  # Lambda reports an unhandled error as a function error
            traceback.print_exc()
            payload = {"errorMessage": str(exc), "errorType": type(exc).__name__}
            return json_reply(200, payload, {"X-Amz-Function-Error": "Unhandled"})
        return json_reply(200, result)


class _InvocationsHandler(LoopbackHandler):
    """The RIE's two routes; make_server subclasses it with the sandbox to run."""

    sandbox: ClassVar[Sandbox]

    def do_GET(self) -> None:
        if self.path == HEALTH_PATH:
            self.send_reply(*json_reply(200, {"status": "ready"}))
        else:
            self.send_reply(*_NOT_FOUND)

    def do_POST(self) -> None:
        if self.path != INVOKE_PATH:
            self.send_reply(*_NOT_FOUND)
            return
        self.send_reply(*self.sandbox.invoke(self.read_body() or b""))


def make_server(
    handler: Callable[[dict, Any], Any],
    *,
    host: str,
    port: int,
    function_name: str,
    memory_mb: int,
    timeout_s: int,
) -> LoopbackServer:
    sandbox = Sandbox(handler, function_name, memory_mb, timeout_s)
    invocations = type("Invocations", (_InvocationsHandler,), {"sandbox": sandbox})
    return LoopbackServer(invocations, host=host, port=port, name=f"function {function_name}")


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
