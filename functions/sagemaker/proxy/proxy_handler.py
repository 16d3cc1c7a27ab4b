"""The API's thin proxy to a SageMaker endpoint: V2 over API Gateway in, InvokeEndpoint out.

API Gateway routes /v2/models/{name}/... of a SageMaker-target model to this function (Lambda
proxy integration, exactly like a Lambda-target model's own function), and it calls the
endpoint with boto3. Every V2 operation travels as an InvokeEndpoint POST: the operation,
model and version ride in X-Amzn-SageMaker-Custom-Attributes, which SageMaker forwards to
the container verbatim (see functions/sagemaker/wsgi.py).

Why a function rather than an AWS service integration: SageMaker answers throttling with
HTTP 400, like a validation error, and only the `x-amzn-ErrorType` header tells them apart;
an integration response can select on the status code and read the body, never that header.
boto3 reads it, and retries throttling once with backoff before it becomes a 429. The same
code runs in the local stack (local Lambda runtime -> local SageMaker runtime), so the path
clients take is the one tested. The cost is a small function (no model, 256 MB) and its cold
start, ~0.3 s, next to a GPU model's.

Errors, all `{"error": ...}` like the Lambda path:
    container error (ModelError 424)   -> the container's own status and body (400/404/413/422/503)
    container failed, timed out        -> 502
    ThrottlingException, ModelNotReady -> 429 (Retry-After)
    endpoint missing, SageMaker down   -> 503 (Retry-After)
    read timeout                       -> 504
Stdlib and boto3 only (both in the Lambda Python runtime): no layer, no packaging step.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

log = logging.getLogger()
log.setLevel(os.environ.get("LOG_LEVEL", "INFO"))

ENDPOINT_NAME = os.environ.get("ENDPOINT_NAME", "")
MODEL_NAME = os.environ.get("MODEL_NAME", "")
# contract.API_BODY_BYTES: the body arrives base64 in an event that must fit Lambda's 6 MiB
MAX_PAYLOAD_BYTES = 4_669_440
ROUTE = re.compile(
    r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<op>/ready|/infer|/config)?$"
)
MODEL_OPS = {None: "metadata", "/ready": "ready", "/config": "config"}  # GET ones
# The binary tensor data extension and request codings: InvokeEndpoint carries no custom
# headers, so the JSON header's length rides in the content type (SageMaker's Triton
# convention, both ways) and the Content-Encoding in a custom attribute.
HEADER_LENGTH = "inference-header-content-length"
BINARY_TYPE = "application/vnd.sagemaker-triton.binary+json"
HEADER_SIZE = re.compile(r";\s*json-header-size\s*=\s*(\d+)")
# contract.VERSION_PATTERN (this asset has no dependencies; tests hold it to the contract)
VERSION = re.compile(r"^[1-9][0-9]{0,9}$")
METHODS = ("GET", "POST")  # every method some route answers
THROTTLED = {"ThrottlingException", "ModelNotReadyException", "TooManyRequestsException"}
UNAVAILABLE = {"ServiceUnavailable", "InternalFailure", "InternalDependencyException"}

# API Gateway gives up at 29 s; stop waiting just before it. Throttling is retried once.
runtime = boto3.client(
    "sagemaker-runtime",
    config=Config(
        connect_timeout=2,
        read_timeout=28,
        retries={"mode": "standard", "total_max_attempts": 2},
    ),
)


def _response(
    status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": body if isinstance(body, str) else json.dumps(body),
        "isBase64Encoded": False,
    }


def _route(method: str, path: str) -> tuple[str, str | None, str | None] | None:
    """(operation, model, version) for a V2 path, or None when there is no such route.
    Trailing slashes go first, as in contract.route_path: API Gateway REST routes
    `/v2/health/live/` to the resource `/v2/health/live` and passes the path as sent."""
    path = path.rstrip("/") or "/"
    if method == "GET" and path == "/v2/health/live":
        return "health-live", None, None
    if method == "GET" and path == "/v2/health/ready":
        return "health-ready", None, None
    if method == "GET" and path == "/v2":
        return "server-metadata", None, None
    match = ROUTE.match(path)
    if not match:
        return None
    op = match["op"]
    if method == "GET" and op in MODEL_OPS:
        return MODEL_OPS[op], match["name"], match["version"]
    if method == "POST" and op == "/infer":
        return "infer", match["name"], match["version"]
    return None


def _model_error(error: ClientError) -> dict[str, Any]:
    """The container answered with an error: give the client the container's own answer."""
    response = error.response
    status = response.get("OriginalStatusCode")
    original = response.get("OriginalMessage") or ""
    if isinstance(status, int) and (400 <= status < 500 or status == 503):
        try:
            doc = json.loads(original)
            body = doc if isinstance(doc, dict) and "error" in doc else {"error": original}
        except ValueError:
            body = {"error": original or f"the model answered {status}"}
        headers = {"Retry-After": "5"} if status == 503 else None
        return _response(status, body, headers)
    message = response.get("Error", {}).get("Message") or str(error)
    return _response(502, {"error": f"the model endpoint failed to answer: {message}"})


def _client_error(error: ClientError) -> dict[str, Any]:
    code = error.response.get("Error", {}).get("Code", "")
    message = error.response.get("Error", {}).get("Message") or ""
    if code == "ModelError":
        return _model_error(error)
    if code in THROTTLED:
        return _response(
            429,
            {"error": "too many requests: the model endpoint is at capacity, retry later"},
            {"Retry-After": "1"},
        )
    if code in UNAVAILABLE or (code == "ValidationError" and "not found" in message.lower()):
        return _response(
            503,
            {"error": f"the model endpoint {ENDPOINT_NAME} is unavailable: {message or code}"},
            {"Retry-After": "5"},
        )
    log.error("InvokeEndpoint refused the request: %s %s", code, message)
    return _response(502, {"error": f"the model endpoint refused the request: {code} {message}"})


def _headers(event: dict[str, Any]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}


def _content_type(headers: dict[str, str]) -> str:
    """What InvokeEndpoint's ContentType says of the body: JSON, or binary with its header."""
    length = headers.get(HEADER_LENGTH, "").strip()
    return f"{BINARY_TYPE};json-header-size={length}" if length else "application/json"


def _reply(reply: dict[str, Any]) -> dict[str, Any]:
    """The container's answer as the API's: a binary body travels base64-encoded."""
    body = reply["Body"].read()
    found = HEADER_SIZE.search(reply.get("ContentType") or "")
    if not found or not (reply.get("ContentType") or "").startswith(BINARY_TYPE):
        return _response(200, body.decode())
    return {
        "statusCode": 200,
        "headers": {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": found[1],
        },
        "body": base64.b64encode(body).decode(),
        "isBase64Encoded": True,
    }


# What InvokeEndpoint may carry of a client's headers (contract.ContentEncoding, parse_count):
# anything else would be its ValidationError, a 502, for a client's mistake.
CODINGS = ("gzip", "x-gzip", "deflate", "identity")
COUNT = re.compile(r"[0-9]{1,18}")


def _refusal(headers: dict[str, str]) -> dict[str, Any] | None:
    """400/415 for a header length or Content-Encoding the container could not take."""
    length = headers.get(HEADER_LENGTH, "").strip()
    if length and not COUNT.fullmatch(length):
        return _response(400, {"error": f"{HEADER_LENGTH} must be a non-negative integer"})
    codings = [c.strip().lower() for c in headers.get("content-encoding", "").split(",")]
    unknown = [c for c in codings if c and c not in CODINGS]
    if unknown:
        return _response(415, {"error": f"Content-Encoding {unknown[0][:32]!r} is not supported"})
    return None


def invoke(
    operation: str,
    name: str | None,
    version: str | None,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    headers = headers or {}
    if operation == "infer" and (refusal := _refusal(headers)) is not None:
        return refusal
    attributes = [f"onnxlift-route={operation}"]
    if name:
        attributes.append(f"onnxlift-model={name}")
    if version:
        attributes.append(f"onnxlift-version={version}")
    if coding := headers.get("content-encoding", "").replace(";", "").replace("=", "").strip():
        attributes.append(f"onnxlift-content-encoding={coding}")
    try:
        reply = runtime.invoke_endpoint(
            EndpointName=ENDPOINT_NAME,
            Body=body if operation == "infer" else b"{}",
            ContentType=_content_type(headers) if operation == "infer" else "application/json",
            Accept="application/json",
            CustomAttributes="; ".join(attributes),
        )
    except ClientError as error:
        return _client_error(error)
    except ReadTimeoutError:
        return _response(504, {"error": "the model endpoint did not answer in time"})
    except (EndpointConnectionError, ConnectTimeoutError):
        return _response(
            503, {"error": f"cannot reach the model endpoint {ENDPOINT_NAME}"}, {"Retry-After": "5"}
        )
    except BotoCoreError as error:
        log.exception("InvokeEndpoint failed")
        return _response(502, {"error": f"the model endpoint call failed: {error}"})
    return _reply(reply)


def _no_route(method: str, path: str) -> dict[str, Any]:
    """A JSON 405 (with Allow) on a path some route answers, else a JSON 404."""
    allowed = [m for m in METHODS if _route(m, path) is not None]
    if allowed:
        return _response(
            405,
            {"error": f"{method[:16]} is not allowed on {path[:256]}; use {', '.join(allowed)}"},
            {"Allow": ", ".join(allowed)},
        )
    return _response(404, {"error": f"no route for {method[:16]} {path[:256]}"})


def _body(event: dict[str, Any]) -> bytes | None:
    """The client's bytes (None: marked base64 but not base64); the container checks UTF-8."""
    raw = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return None
    return raw.encode("utf-8", "surrogatepass")  # a lone surrogate stays invalid UTF-8: a 400


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    method = str(event.get("httpMethod") or "")
    path = str(event.get("path") or "")
    route = _route(method, path)
    if route is None:
        return _no_route(method, path)
    operation, name, version = route
    if operation == "health-live":
        return _response(200, {"live": True})
    if name is not None and name != MODEL_NAME:
        return _response(404, {"error": f"model '{name[:64]}' is not served here"})
    if version is not None and not VERSION.fullmatch(version):
        return _response(
            404, {"error": f"version '{version[:64]}' of model '{name}' does not exist"}
        )
    body = _body(event)
    if body is None:
        return _response(400, {"error": "request body is marked base64 but is not valid base64"})
    if len(body) > MAX_PAYLOAD_BYTES:
        return _response(
            413, {"error": f"request body is {len(body)} bytes; the limit is {MAX_PAYLOAD_BYTES}"}
        )
    return invoke(operation, name, version, body, _headers(event))
