"""A local API Gateway (REST, Lambda proxy integration) on loopback.

It does what API Gateway does in front of the inference functions: resolves the route,
enforces the API key (403 without it or with a wrong one), refuses bodies over 10 MB (413),
turns the HTTP request into a v1 proxy event with requestContext, headers and path
parameters, invokes the model's function and returns its status, headers and body.
Unknown models answer 404 as the deployed API's mock route does. Requests are served
concurrently, one thread each, with keep-alive.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from onnxlift_serving.contract import (
    API_GATEWAY_MAX_BODY_BYTES,
    API_GATEWAY_TIMEOUT_S,
    HEALTH_PATHS,
    JSON_CONTENT_TYPE,
    MODELS_PREFIX,
    error_body,
)

from onnxlift.local.lambda_runtime import INVOKE_PATH

API_GATEWAY_MAX_BODY = API_GATEWAY_MAX_BODY_BYTES
INTEGRATION_TIMEOUT_S = float(API_GATEWAY_TIMEOUT_S)
MODEL_ROUTE = re.compile(rf"^{re.escape(MODELS_PREFIX)}(?P<name>[^/]+)(?P<rest>/.*)?$")
VERSION_ROUTE = re.compile(r"^/versions/(?P<version>[^/]+)(?:/.*)?$")
TEXT_TYPES = ("application/json", "text/")


@dataclass(frozen=True)
class FunctionTarget:
    """Where a model's function listens (a local Lambda runtime)."""

    name: str
    host: str
    port: int


@dataclass
class GatewayConfig:
    api_key: str
    functions: dict[str, FunctionTarget]
    default_function: str  # answers /v2/health/*
    stage: str = "v1"
    api_id: str = "local"
    max_body: int = API_GATEWAY_MAX_BODY
    timeout_s: float = INTEGRATION_TIMEOUT_S


class _Connections(threading.local):
    """One keep-alive connection per gateway thread and function."""

    def __init__(self) -> None:
        self.pool: dict[str, http.client.HTTPConnection] = {}


def build_event(
    *,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    resource: str,
    path_parameters: dict[str, str] | None,
    config: GatewayConfig,
    source_ip: str,
    api_key: str | None,
) -> dict[str, Any]:
    """An API Gateway REST v1 proxy event, as AWS builds it."""
    content_type = headers.get("content-type", headers.get("Content-Type", ""))
    is_text = not body or any(content_type.startswith(t) for t in TEXT_TYPES) or not content_type
    try:
        text = body.decode() if is_text else None
    except UnicodeDecodeError:
        text = None
    query_params = parse_qs(query, keep_blank_values=True)
    now = datetime.now(UTC)
    request_id = str(uuid.uuid4())
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": headers or None,
        "multiValueHeaders": {k: [v] for k, v in headers.items()} or None,
        "queryStringParameters": {k: v[-1] for k, v in query_params.items()} or None,
        "multiValueQueryStringParameters": query_params or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": request_id,
            "requestTime": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "path": f"/{config.stage}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": config.stage,
            "domainPrefix": "localhost",
            "requestTimeEpoch": int(now.timestamp() * 1000),
            "requestId": request_id,
            "identity": {
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent"),
                "apiKey": api_key,
                "apiKeyId": "local-key" if api_key else None,
            },
            "domainName": "localhost",
            "apiId": config.api_id,
        },
        "body": text if text is not None else base64.b64encode(body).decode(),
        "isBase64Encoded": text is None and bool(body),
    }


def resolve_route(path: str, config: GatewayConfig) -> tuple[str, str, dict[str, str]] | None:
    """(function, resource, path parameters) for a path, like the deployed API's resources."""
    if path in HEALTH_PATHS:
        return config.default_function, path, {}
    match = MODEL_ROUTE.match(path)
    if not match:
        return None
    name, rest = match["name"], match["rest"] or ""
    if name not in config.functions:
        return "", f"{MODELS_PREFIX}{{name}}/{{proxy+}}", {"name": name}
    version = VERSION_ROUTE.match(rest)
    if version:
        resource = f"{MODELS_PREFIX}{name}" + rest.replace(version["version"], "{version}", 1)
        return name, resource, {"version": version["version"]}
    return name, f"{MODELS_PREFIX}{name}{rest}", {}


class Gateway:
    def __init__(self, config: GatewayConfig, *, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.config = config
        self._connections = _Connections()
        self.server = ThreadingHTTPServer((host, port), self._handler_class())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="gateway", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def invoke(self, function: str, event: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        target = self.config.functions[function]
        payload = json.dumps(event).encode()
        for attempt in (1, 2):  # a kept-alive connection the runtime closed: reconnect once
            connection = self._connections.pool.get(function)
            if connection is None:
                connection = http.client.HTTPConnection(
                    target.host, target.port, timeout=self.config.timeout_s
                )
                self._connections.pool[function] = connection
            try:
                connection.request(
                    "POST", INVOKE_PATH, payload, {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                raw = response.read()
                function_error = response.getheader("X-Amz-Function-Error")
                break
            except TimeoutError:
                self._connections.pool.pop(function, None).close()
                return _error(504, "Endpoint request timed out")
            except (ConnectionError, http.client.HTTPException, OSError):
                self._connections.pool.pop(function, None).close()
                if attempt == 2:
                    return _error(
                        503, f"function '{function}' is not reachable", {"Retry-After": "5"}
                    )
        if function_error:
            return _error(502, "Internal server error: the function raised an unhandled error")
        try:
            result = json.loads(raw)
            status = int(result["statusCode"])
        except (ValueError, KeyError, TypeError):
            return _error(502, "Malformed Lambda proxy response")
        headers = dict(result.get("headers") or {})
        for key, values in (result.get("multiValueHeaders") or {}).items():
            headers[key] = ", ".join(values)
        body = result.get("body") or ""
        data = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        return status, headers, data

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms per keep-alive request).
            disable_nagle_algorithm = True
            server_version = "onnxlift-gateway"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                headers = {
                    k: v
                    for k, v in headers.items()
                    if k.lower() not in ("content-length", "connection")
                }
                headers.setdefault("Content-Type", "application/json")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _serve(self) -> None:
                started = time.perf_counter()
                length = int(self.headers.get("Content-Length") or 0)
                if length > gateway.config.max_body:
                    self.close_connection = True  # the body is left unread
                    self._send(
                        *_error(
                            413,
                            f"Request too large: {length} bytes; the limit is "
                            f"{gateway.config.max_body}",
                        )
                    )
                    return
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                route = resolve_route(url.path, gateway.config)
                if route is None:
                    self._send(*_error(404, f"no route for {self.command} {url.path}"))
                    return
                function, resource, path_parameters = route
                api_key = self.headers.get("x-api-key")
                if api_key != gateway.config.api_key:
                    reason = (
                        "Forbidden: missing API key"
                        if api_key is None
                        else "Forbidden: invalid API key"
                    )
                    self._send(*_error(403, reason))
                    return
                if not function:
                    self._send(*_error(404, f"model '{path_parameters['name']}' not found"))
                    return
                event = build_event(
                    method=self.command,
                    path=url.path,
                    query=url.query,
                    headers={k: v for k, v in self.headers.items()},
                    body=body,
                    resource=resource,
                    path_parameters=path_parameters,
                    config=gateway.config,
                    source_ip=self.client_address[0],
                    api_key=api_key,
                )
                status, headers, data = gateway.invoke(function, event)
                headers["x-onnxlift-gateway-ms"] = f"{(time.perf_counter() - started) * 1000:.2f}"
                self._send(status, headers, data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

        return Handler


def _error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return (
        status,
        {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})},
        json.dumps(error_body(message)).encode(),
    )
