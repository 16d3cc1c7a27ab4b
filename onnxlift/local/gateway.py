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
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from onnxlift_serving.contract import (
    API_GATEWAY_MAX_BODY_BYTES,
    API_GATEWAY_TIMEOUT_S,
    HEALTH_PATHS,
    JSON_CONTENT_TYPE,
    MODELS_PREFIX,
    error_body,
)

from onnxlift.local.http import (
    BackendUnreachable,
    KeepAliveClient,
    LoopbackHandler,
    LoopbackServer,
    Reply,
    json_reply,
)
from onnxlift.local.lambda_runtime import INVOKE_PATH
from onnxlift.local.lambda_service import (
    THROTTLE_RETRY_AFTER_S,
    FunctionPool,
    SandboxCrashed,
    Throttled,
)

MODEL_ROUTE = re.compile(rf"^{re.escape(MODELS_PREFIX)}(?P<name>[^/]+)(?P<rest>/.*)?$")
VERSION_ROUTE = re.compile(r"^/versions/(?P<version>[^/]+)(?:/.*)?$")
TEXT_TYPES = ("application/json", "text/")
# (function, resource, path parameters); function "" is a model the API does not serve
ResolvedRoute = tuple[str, str, dict[str, str]]


@dataclass(frozen=True)
class FunctionTarget:
    """A model's function: its pool of sandboxes (the local stack), or where one local Lambda
    runtime listens (host and port, for tests that start one themselves)."""

    name: str
    host: str = ""
    port: int = 0
    pool: FunctionPool | None = field(default=None, compare=False)


@dataclass
class GatewayConfig:
    api_key: str
    functions: dict[str, FunctionTarget]
    default_function: str  # answers /v2/health/*
    stage: str = "v1"
    api_id: str = "local"
    max_body: int = API_GATEWAY_MAX_BODY_BYTES
    timeout_s: float = API_GATEWAY_TIMEOUT_S


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


def resolve_route(path: str, config: GatewayConfig) -> ResolvedRoute | None:
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
        self._client = KeepAliveClient(timeout_s=config.timeout_s)
        handler = type("GatewayHandler", (_GatewayHandler,), {"gateway": self})
        self.server = LoopbackServer(handler, host=host, port=port, name="gateway")

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def invoke(self, function: str, event: dict[str, Any]) -> Reply:
        """Invoke the function as the Lambda proxy integration does; the reply it stands for."""
        target = self.config.functions[function]
        payload = json.dumps(event).encode()
        try:
            if target.pool is not None:
                response = target.pool.invoke(payload)
            else:
                response = self._client.request(
                    target.host,
                    target.port,
                    "POST",
                    INVOKE_PATH,
                    payload,
                    {"Content-Type": JSON_CONTENT_TYPE},
                )
        except Throttled as exc:  # as Lambda's TooManyRequestsException, never a queue
            return _error(429, str(exc), {"Retry-After": str(THROTTLE_RETRY_AFTER_S)})
        except TimeoutError:
            return _error(504, "Endpoint request timed out")
        except SandboxCrashed:
            return _error(502, "Internal server error: the function's sandbox failed")
        except BackendUnreachable:
            return _error(503, f"function '{function}' is not reachable", {"Retry-After": "5"})
        if response.headers.get("X-Amz-Function-Error"):
            return _error(502, "Internal server error: the function raised an unhandled error")
        return proxy_reply(response.body)


def proxy_reply(raw: bytes) -> Reply:
    """The HTTP reply a Lambda proxy result stands for (502 when it is not one)."""
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


class _GatewayHandler(LoopbackHandler):
    """One API request: body limit, route, API key, model, then the function."""

    gateway: ClassVar[Gateway]  # set on the subclass each Gateway makes
    server_version = "onnxlift-gateway"

    def _serve(self) -> None:
        started = time.perf_counter()
        config = self.gateway.config
        body = self.read_body(config.max_body)
        if body is None:
            self._send(
                *_error(
                    413,
                    f"Request too large: {self.body_length()} bytes; the limit is "
                    f"{config.max_body}",
                )
            )
            return
        url = urlsplit(self.path)
        route = resolve_route(url.path, config)
        if route is None:
            self._send(*_error(404, f"no route for {self.command} {url.path}"))
            return
        refusal = self._refusal(route)
        if refusal is not None:
            self._send(*refusal)
            return
        function, resource, path_parameters = route
        event = build_event(
            method=self.command,
            path=url.path,
            query=url.query,
            headers={k: v for k, v in self.headers.items()},
            body=body,
            resource=resource,
            path_parameters=path_parameters,
            config=config,
            source_ip=self.client_address[0],
            api_key=self.headers.get("x-api-key"),
        )
        status, headers, data = self.gateway.invoke(function, event)
        headers["x-onnxlift-gateway-ms"] = f"{(time.perf_counter() - started) * 1000:.2f}"
        self._send(status, headers, data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    def _refusal(self, route: ResolvedRoute) -> Reply | None:
        """The API key is checked before the model is looked up, as API Gateway does: without
        the key nobody learns which models exist."""
        api_key = self.headers.get("x-api-key")
        if api_key != self.gateway.config.api_key:
            reason = (
                "Forbidden: missing API key" if api_key is None else "Forbidden: invalid API key"
            )
            return _error(403, reason)
        function, _, path_parameters = route
        if not function:
            return _error(404, f"model '{path_parameters['name']}' not found")
        return None

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        headers = {**headers, "x-amzn-RequestId": str(uuid.uuid4())}
        headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        self.send_reply(status, headers, body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return json_reply(status, error_body(message), headers)
