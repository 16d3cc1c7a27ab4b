"""The inference Lambda: Open Inference Protocol V2 over API Gateway REST (proxy integration).

Everything heavy happens at module scope, once per sandbox: the model is verified and its
onnxruntime session created during the init phase, never on the request path.

The request path is short on purpose (a Lambda user pays for every millisecond): the route is
the contract's (`match_route`, remembered per method and path), the proxy result is built
directly, and powertools does what users expect of it: Logger (Lambda context, correlation
id), Metrics (EMF, cold start) and Tracer, whose subsegments are recorded only where tracing
is on (on Lambda with active tracing, not in a local sandbox or the bench).
"""

from __future__ import annotations

import time

_INIT_STARTED = time.perf_counter()  # the init phase's imports are timed from here

import base64
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from onnxlift_serving import binary, protocol, server_info
from onnxlift_serving.contract import (
    INFERENCE_HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    METRIC_MODEL_DIMENSION,
    Op,
    allowed_methods,
    error_body,
    match_route,
    no_route_message,
    not_allowed_message,
    retry_after,
    tracing_enabled,
)
from onnxlift_serving.encoding import event_body, lowered
from onnxlift_serving.errors import InferenceError
from onnxlift_serving.request_metrics import request_metrics
from onnxlift_serving.service import ModelService, ServiceConfig

_IMPORTS_S = time.perf_counter() - _INIT_STARTED
logger = Logger()
metrics = request_metrics()  # powertools' Metrics, its per-request work done once
# Health, metadata and ready routes add no metric: nothing to warn of (powertools would).
warnings.filterwarnings("ignore", "No application metrics to publish", UserWarning)
# powertools' Tracer only where it records (Lambda with tracing on): built anyway, it imports
# the X-Ray SDK and patches botocore even when disabled, a fifth of a second of cold start.
_traced_at = time.perf_counter()
if tracing_enabled(os.environ):
    from aws_lambda_powertools import Tracer

    tracer: Tracer | None = Tracer()
else:
    tracer = None
_TRACER_S = time.perf_counter() - _traced_at

service = ModelService(ServiceConfig.from_env())
# Every metric carries the model (the dashboard's dimension); set once, kept across flushes.
metrics.set_default_dimensions(**{METRIC_MODEL_DIMENSION: service.config.name})
# The init phase by part, in the "model loaded" log line (and read by `onnxlift bench`).
INIT_PHASES = {"imports_s": _IMPORTS_S, "tracer_s": _TRACER_S, **service.load_phases}
INIT_PHASES["init_s"] = time.perf_counter() - _INIT_STARTED
if service.ready:
    logger.info(
        "model loaded",
        extra={"model": service.config.name, "seconds": service.load_seconds, **INIT_PHASES},
    )
else:
    logger.error("model failed to load", extra={"error": service.load_error})

ProxyResult = dict[str, Any]


def _result(
    status: int, body: str | bytes, content_type: str, headers: Mapping[str, str] | None = None
) -> ProxyResult:
    """An API Gateway proxy result; a bytes body goes base64 encoded, as the proxy wants."""
    multi_value = {"Content-Type": [content_type]}
    if headers:
        for key, value in headers.items():
            multi_value[key] = [value]
    encoded = isinstance(body, bytes)
    return {
        "statusCode": status,
        "multiValueHeaders": multi_value,
        "body": base64.b64encode(body).decode() if encoded else body,  # type: ignore[arg-type]
        "isBase64Encoded": encoded,
    }


def _json(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> ProxyResult:
    return _result(status, protocol.dumps(body).decode(), JSON_CONTENT_TYPE, headers)


def _inference_error(error: InferenceError) -> ProxyResult:
    if error.status >= 500:
        logger.error("request failed", extra={"status": error.status, "error": error.message})
    else:
        logger.info("client error", extra={"status": error.status, "error": error.message})
    return _json(error.status, error_body(error.message), error.headers)


def _unexpected(error: Exception) -> ProxyResult:
    # A bug on our side, never the client's: log it whole, answer JSON rather than a bare 502.
    logger.exception("unhandled error")
    return _json(
        500, error_body(f"internal error ({type(error).__name__}); see the function's logs")
    )


def _unrouted(method: str, path: str) -> ProxyResult:
    """Any method on any path no route takes (OPTIONS, TRACE and made-up methods too): a JSON
    405 with Allow on a path that exists, else a JSON 404."""
    allowed = allowed_methods(path)
    if allowed:  # the path is a route's, under other methods only
        message = not_allowed_message(method, path, allowed)
        return _json(405, error_body(message), {"Allow": ", ".join(allowed)})
    return _json(404, error_body(no_route_message(method, path)))


# (name, version, event): a model route's operation gets its name; the others get None.
Operation = Callable[[Any, str | None, dict[str, Any]], ProxyResult]


def _health_live(name: str | None, version: str | None, event: dict[str, Any]) -> ProxyResult:
    return _json(200, {"live": True})


def _health_ready(name: str | None, version: str | None, event: dict[str, Any]) -> ProxyResult:
    ready = service.ready
    return _json(200 if ready else 503, {"ready": ready}, None if ready else retry_after())


def _metadata(name: str, version: str | None, event: dict[str, Any]) -> ProxyResult:
    return _json(200, service.metadata(name, version))


def _server_metadata(name: str | None, version: str | None, event: dict[str, Any]) -> ProxyResult:
    return _json(200, server_info.server_metadata())


def _config(name: str, version: str | None, event: dict[str, Any]) -> ProxyResult:
    return _json(200, server_info.model_config(service.metadata(name, version)))


def _ready(name: str, version: str | None, event: dict[str, Any]) -> ProxyResult:
    ready = service.model_ready(name, version)
    headers = None if ready else retry_after()
    return _json(200 if ready else 503, {"name": name, "ready": ready}, headers)


def _infer(name: str, version: str | None, event: dict[str, Any]) -> ProxyResult:
    started = time.perf_counter()
    headers = lowered(event.get("headers"))
    reply = binary.serve_infer(
        service,
        event_body(event.get("body"), bool(event.get("isBase64Encoded"))),
        name=name,
        version=version,
        content_encoding=headers.get("content-encoding"),
        header_length=binary.parse_length(headers.get(INFERENCE_HEADER_LENGTH.lower())),
    )
    # One metric per request: its SampleCount is the request count (no second InferCount).
    metrics.add_metric(
        name="InferLatency",
        unit=MetricUnit.Milliseconds,
        value=(time.perf_counter() - started) * 1000,
    )
    content_type = reply.headers.pop("Content-Type")
    body = reply.body if reply.header_length is not None else reply.body.decode()
    return _result(200, body, content_type, reply.headers)


def _traced(operation: Operation) -> Operation:
    """An X-Ray subsegment per operation where tracing is on; nothing added where it is off."""
    # capture_response=False: an answer (up to 6 MB) is no trace metadata (X-Ray keeps 64 KB).
    return operation if tracer is None else tracer.capture_method(operation, capture_response=False)


OPERATIONS: dict[Op, Operation] = {
    Op.HEALTH_LIVE: _health_live,
    Op.HEALTH_READY: _health_ready,
    Op.SERVER_METADATA: _server_metadata,
    Op.METADATA: _metadata,
    Op.CONFIG: _config,
    Op.READY: _ready,
    Op.INFER: _traced(_infer),
}


def resolve(event: dict[str, Any]) -> ProxyResult:
    """The route the contract gives `method path` (onnxlift_serving.contract.ROUTES), run."""
    method, path = str(event.get("httpMethod") or "")[:16], str(event.get("path") or "")
    found = match_route(method, path)
    if found is None:
        return _unrouted(method, path)
    try:
        return OPERATIONS[found.op](found.name, found.version, event)
    except InferenceError as error:
        return _inference_error(error)
    except Exception as error:
        return _unexpected(error)


@logger.inject_lambda_context
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> ProxyResult:
    # The correlation id is the API Gateway request id (read here, not by a JMESPath query).
    logger.set_correlation_id((event.get("requestContext") or {}).get("requestId"))
    return resolve(event)


if tracer is not None:  # the handler's segment, and cold start / response annotations
    lambda_handler = tracer.capture_lambda_handler(lambda_handler, capture_response=False)
