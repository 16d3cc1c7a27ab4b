"""A local API Gateway (REST, Lambda proxy integration) on loopback.

It does what API Gateway does in front of the inference functions, in API Gateway's order:
refuses a malformed request (400, onnxlift.local.http) or a declared body over 10 MB (413)
without reading it; enforces the API key on every path and method (403 without it or with a
wrong one, before anything about the routes is told); resolves the route from the contract's
route table (404 for an unknown path or model, 405 with Allow for a known path and another
method); then reads the body, turns the request into a v1 proxy event with requestContext,
headers and path parameters, invokes the model's function and returns its status, headers
(its Connection, Content-Length, Date and Server renamed x-amzn-Remapped-*, as API Gateway
does) and body. Requests are served concurrently, one thread per connection, with keep-alive.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson
from onnxlift_serving.contract import (
    API_GATEWAY_MAX_BODY_BYTES,
    API_GATEWAY_TIMEOUT_S,
    JSON_CONTENT_TYPE,
    MODELS_PREFIX,
    OPENAPI_PATH,
    ROUTES,
    THROTTLE_RETRY_AFTER_S,
    allowed_methods,
    retry_after,
    route_path,
)
from onnxlift_serving.openapi import document

from onnxlift.local.http import (
    IDLE_TIMEOUT_S,
    READ_TIMEOUT_S,
    BackendUnreachable,
    KeepAliveClient,
    LoopbackHandler,
    LoopbackServer,
    Reply,
    error_reply,
)
from onnxlift.local.lambda_runtime import INVOKE_PATH
from onnxlift.local.lambda_service import (
    FunctionPool,
    SandboxCrashed,
    Throttled,
)

UNKNOWN_MODEL = re.compile(rf"^{re.escape(MODELS_PREFIX)}(?P<name>[^/]+)(?:/.*)?$")
UNKNOWN_MODEL_RESOURCE = f"{MODELS_PREFIX}{{name}}/{{proxy+}}"  # the deployed API's mock
_TEMPLATES = {route.template: route.pattern for route in ROUTES}  # each path once, in order
TEXT_TYPES = ("application/json", "text/")
# Headers of a function's result that API Gateway (REST) renames to x-amzn-Remapped-<name>
# rather than sending: it writes its own, and a function's Connection does not hang up a client.
REMAPPED_HEADERS = frozenset({"connection", "content-length", "date", "server"})
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
    read_timeout_s: float = READ_TIMEOUT_S  # a client's request stalls this long: 408
    idle_timeout_s: float = IDLE_TIMEOUT_S  # a kept-alive connection idles this long: closed


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
    """(function, resource, path parameters) for a path of the contract's route table, under
    any method, like the deployed API's resources: a model's routes on its own function
    (resource names the model), the others on the default one, a model the API does not
    serve on "" (the deployed API's 404 mock); None for a path of no route. A trailing
    slash is ignored, as API Gateway REST ignores it (contract.route_path)."""
    path = route_path(path)
    for template, pattern in _TEMPLATES.items():
        if found := pattern.match(path):
            params = found.groupdict()
            name = params.pop("name", None)
            if name is None:
                return config.default_function, template, params
            if name not in config.functions:
                return "", UNKNOWN_MODEL_RESOURCE, {"name": name}
            return name, template.replace("{name}", name), params
    unknown = UNKNOWN_MODEL.match(path)
    if unknown and unknown["name"] not in config.functions:
        return "", UNKNOWN_MODEL_RESOURCE, {"name": unknown["name"]}
    return None


class Gateway:
    def __init__(self, config: GatewayConfig, *, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.config = config
        self._client = KeepAliveClient(timeout_s=config.timeout_s)
        handler = type(
            "GatewayHandler",
            (_GatewayHandler,),
            {
                "gateway": self,
                "read_timeout_s": config.read_timeout_s,
                "idle_timeout_s": config.idle_timeout_s,
            },
        )
        self.server = LoopbackServer(handler, host=host, port=port, name="gateway")

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def openapi(self) -> Reply:
        """GET /openapi.json: the API's OpenAPI document, no key needed. It is generated from
        the contract and names no model (the served names stay behind the key)."""
        body = json.dumps(document(server_url=self.url), indent=1).encode()
        return 200, {"Content-Type": JSON_CONTENT_TYPE}, body

    def invoke(self, function: str, event: dict[str, Any]) -> Reply:
        """Invoke the function as the Lambda proxy integration does; the reply it stands for."""
        target = self.config.functions[function]
        payload = orjson.dumps(event)  # the event's strings are decoded HTTP: valid UTF-8
        try:
            if target.pool is not None:
                response = target.pool.invoke(payload, deadline_s=self.config.timeout_s)
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
            return _error(429, str(exc), retry_after(THROTTLE_RETRY_AFTER_S))
        except TimeoutError:
            return _error(504, "Endpoint request timed out")
        except SandboxCrashed:
            return _error(502, "Internal server error: the function's sandbox failed")
        except BackendUnreachable:
            return _error(503, f"function '{function}' is not reachable", retry_after())
        if response.headers.get("X-Amz-Function-Error"):
            return _error(502, "Internal server error: the function raised an unhandled error")
        return proxy_reply(response.body)


def proxy_reply(raw: bytes) -> Reply:
    """The HTTP reply a Lambda proxy result stands for (502 when it is not one)."""
    try:  # all of it: a malformed result is the function's bug, a 502, never a dropped reply
        result = orjson.loads(raw)
        status = int(result["statusCode"])
        headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
        for key, values in (result.get("multiValueHeaders") or {}).items():
            headers[str(key)] = ", ".join(map(str, values))
        headers = {
            f"x-amzn-Remapped-{k}" if k.lower() in REMAPPED_HEADERS else k: v
            for k, v in headers.items()
        }
        body = result.get("body") or ""
        data = (
            base64.b64decode(body, validate=True)
            if result.get("isBase64Encoded")
            else body.encode()
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return _error(502, "Malformed Lambda proxy response")
    return status, headers, data


class _GatewayHandler(LoopbackHandler):
    """One API request, every method: body limit, API key, route, then the function."""

    gateway: ClassVar[Gateway]  # set on the subclass each Gateway makes
    server_version = "onnxlift-gateway"

    def dispatch(self) -> None:
        started = time.perf_counter()
        if self.command in ("GET", "HEAD") and urlsplit(self.path).path == OPENAPI_PATH:
            self._send(*self.gateway.openapi())  # keyless, and it names no model
            return
        url = urlsplit(self.path)
        route = resolve_route(url.path, self.gateway.config)
        refusal = self._refusal(url.path, route)
        if refusal is not None:
            self._send(*refusal)
            return
        assert route is not None  # _refusal answers a path of no route
        function, resource, path_parameters = route
        body = self.read_body(self.gateway.config.max_body)
        if body is None:
            self._send(*self._too_large())
            return
        event = build_event(
            method=self.command,
            path=url.path,
            query=url.query,
            headers={k: v for k, v in self.headers.items()},
            body=body,
            resource=resource,
            path_parameters=path_parameters,
            config=self.gateway.config,
            source_ip=self.client_address[0],
            api_key=self.headers.get("x-api-key"),
        )
        status, headers, data = self.gateway.invoke(function, event)
        headers["x-onnxlift-gateway-ms"] = f"{(time.perf_counter() - started) * 1000:.2f}"
        self._send(status, headers, data)

    def _refusal(self, path: str, route: ResolvedRoute | None) -> Reply | None:
        """What API Gateway answers before the integration, in its order, with the body
        still unread: a declared body over the limit (413); a missing or wrong API key (403,
        for every path and method: without the key nobody learns which routes or models
        exist); an unknown path or model (404); a known path with another method (405)."""
        config = self.gateway.config
        if self.over_limit(config.max_body):
            return self._too_large()
        api_key = self.headers.get("x-api-key")
        if api_key != config.api_key:
            reason = "missing" if api_key is None else "invalid"
            return _error(403, f"Forbidden: {reason} API key")
        if route is None:
            return _error(404, f"no route for {self.command} {path}")
        function, _, path_parameters = route
        if not function:
            return _error(404, f"model '{path_parameters['name']}' not found")
        allowed = allowed_methods(path)
        if self.command not in allowed:
            return _error(
                405,
                f"method {self.command} is not allowed on {path}",
                {"Allow": ", ".join(allowed)},
            )
        return None

    def _too_large(self) -> Reply:
        limit = self.gateway.config.max_body
        size = f"{self.body_length()} bytes" if self.body_length() else "over the limit"
        return _error(413, f"Request too large: {size}; the limit is {limit}")

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        headers = {**headers, "x-amzn-RequestId": str(uuid.uuid4())}
        headers.setdefault("Content-Type", JSON_CONTENT_TYPE)
        self.send_reply(status, headers, body)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return error_reply(status, message, headers)
