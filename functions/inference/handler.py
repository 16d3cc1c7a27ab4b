"""The inference Lambda: Open Inference Protocol V2 over API Gateway REST (proxy integration).

Everything heavy happens at module scope, once per sandbox: the model is verified and its
onnxruntime session created during the init phase, never on the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from onnxlift_serving import binary, protocol, server_info
from onnxlift_serving.contract import (
    INFERENCE_HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    METRIC_MODEL_DIMENSION,
    ROUTES,
    Op,
    allowed_methods,
    error_body,
    no_route_message,
    not_allowed_message,
    retry_after,
)
from onnxlift_serving.encoding import event_body, header
from onnxlift_serving.errors import InferenceError
from onnxlift_serving.service import ModelService, ServiceConfig

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayRestResolver()

service = ModelService(ServiceConfig.from_env())
if service.ready:
    logger.info(
        "model loaded", extra={"model": service.config.name, "seconds": service.load_seconds}
    )
else:
    logger.error("model failed to load", extra={"error": service.load_error})


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=JSON_CONTENT_TYPE,
        body=protocol.dumps(body).decode(),
        headers=headers,
    )


@app.exception_handler(InferenceError)
def _inference_error(error: InferenceError) -> Response:
    if error.status >= 500:
        logger.error("request failed", extra={"status": error.status, "error": error.message})
    else:
        logger.info("client error", extra={"status": error.status, "error": error.message})
    return _json(error.status, error_body(error.message), error.headers)


@app.exception_handler(Exception)
def _unexpected(error: Exception) -> Response:
    # A bug on our side, never the client's: log it whole, answer JSON rather than a bare 502.
    logger.exception("unhandled error")
    return _json(
        500, error_body(f"internal error ({type(error).__name__}); see the function's logs")
    )


@app.not_found
def _not_found(_: Exception) -> Response:
    """Any method on any path reaches here when no route takes it (OPTIONS, TRACE and made-up
    methods too): a JSON 405 with Allow on a path that exists, else a JSON 404."""
    event = app.current_event
    method, path = str(event.http_method)[:16], str(event.path)
    allowed = allowed_methods(path)
    if allowed and method not in allowed:  # (in `allowed`: a parameter no route accepts)
        message = not_allowed_message(method, path, allowed)
        return _json(405, error_body(message), {"Allow": ", ".join(allowed)})
    return _json(404, error_body(no_route_message(method, path)))


def _health_live(name: str | None, version: str | None) -> Response:
    return _json(200, {"live": True})


def _health_ready(name: str | None, version: str | None) -> Response:
    ready = service.ready
    return _json(200 if ready else 503, {"ready": ready}, None if ready else retry_after())


def _metadata(name: str, version: str | None) -> Response:
    return _json(200, service.metadata(name, version))


def _server_metadata(name: str | None, version: str | None) -> Response:
    return _json(200, server_info.server_metadata())


def _config(name: str, version: str | None) -> Response:
    return _json(200, server_info.model_config(service.metadata(name, version)))


def _ready(name: str, version: str | None) -> Response:
    ready = service.model_ready(name, version)
    headers = None if ready else retry_after()
    return _json(200 if ready else 503, {"name": name, "ready": ready}, headers)


@tracer.capture_method
def _infer(name: str, version: str | None) -> Response:
    started = time.perf_counter()
    event = app.current_event.raw_event
    headers = event.get("headers")
    reply = binary.serve_infer(
        service,
        event_body(event.get("body"), bool(event.get("isBase64Encoded"))),
        name=name,
        version=version,
        content_encoding=header(headers, "Content-Encoding"),
        header_length=binary.parse_length(header(headers, INFERENCE_HEADER_LENGTH)),
    )
    metrics.add_metric(
        name="InferLatency",
        unit=MetricUnit.Milliseconds,
        value=(time.perf_counter() - started) * 1000,
    )
    metrics.add_metric(name="InferCount", unit=MetricUnit.Count, value=1)
    content_type = reply.headers.pop("Content-Type")
    body = reply.body if reply.header_length is not None else reply.body.decode()
    return Response(200, content_type=content_type, body=body, headers=reply.headers)


OPERATIONS: dict[Op, Callable[..., Response]] = {
    Op.HEALTH_LIVE: _health_live,
    Op.HEALTH_READY: _health_ready,
    Op.SERVER_METADATA: _server_metadata,
    Op.METADATA: _metadata,
    Op.CONFIG: _config,
    Op.READY: _ready,
    Op.INFER: _infer,
}


def _endpoint(operation: Callable[..., Response]) -> Callable[..., Response]:
    def endpoint(name: str | None = None, version: str | None = None) -> Response:
        return operation(name, version)

    return endpoint


# The route table is the contract's (onnxlift_serving.contract.ROUTES), not spelled here.
for _route in ROUTES:
    app.route(_route.powertools_rule, method=_route.method)(_endpoint(OPERATIONS[_route.op]))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_dimension(name=METRIC_MODEL_DIMENSION, value=service.config.name)
    return app.resolve(event, context)
