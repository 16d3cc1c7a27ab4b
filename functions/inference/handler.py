"""The inference Lambda: Open Inference Protocol V2 over API Gateway REST (proxy integration).

Everything heavy happens at module scope, once per sandbox: the model is verified and its
onnxruntime session created during the init phase, never on the request path.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from onnxlift_serving import protocol
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

JSON = "application/json"


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=status, content_type=JSON, body=protocol.dumps(body).decode(), headers=headers
    )


@app.exception_handler(InferenceError)
def _inference_error(error: InferenceError) -> Response:
    if error.status >= 500:
        logger.error("request failed", extra={"status": error.status, "error": error.message})
    else:
        logger.info("client error", extra={"status": error.status, "error": error.message})
    return _json(error.status, {"error": error.message}, error.headers)


@app.exception_handler(Exception)
def _unexpected(error: Exception) -> Response:
    # A bug on our side, never the client's: log it whole, answer JSON rather than a bare 502.
    logger.exception("unhandled error")
    return _json(
        500, {"error": f"internal error ({type(error).__name__}); see the function's logs"}
    )


@app.not_found
def _not_found(_: Exception) -> Response:
    return _json(
        404, {"error": f"no route for {app.current_event.http_method} {app.current_event.path}"}
    )


@app.get("/v2/health/live")
def live() -> Response:
    return _json(200, {"live": True})


@app.get("/v2/health/ready")
def health_ready() -> Response:
    return _json(200 if service.ready else 503, {"ready": service.ready})


def _ready(name: str, version: str | None) -> Response:
    ready = service.model_ready(name, version)
    return _json(200 if ready else 503, {"name": name, "ready": ready})


@app.get("/v2/models/<name>")
def metadata(name: str) -> Response:
    return _json(200, service.metadata(name))


@app.get("/v2/models/<name>/versions/<version>")
def version_metadata(name: str, version: str) -> Response:
    return _json(200, service.metadata(name, version))


@app.get("/v2/models/<name>/ready")
def model_ready(name: str) -> Response:
    return _ready(name, None)


@app.get("/v2/models/<name>/versions/<version>/ready")
def version_ready(name: str, version: str) -> Response:
    return _ready(name, version)


@tracer.capture_method
def _infer(name: str, version: str | None) -> Response:
    started = time.perf_counter()
    result = service.infer(app.current_event.decoded_body, name, version)
    metrics.add_metric(
        name="InferLatency",
        unit=MetricUnit.Milliseconds,
        value=(time.perf_counter() - started) * 1000,
    )
    metrics.add_metric(name="InferCount", unit=MetricUnit.Count, value=1)
    return _json(200, result)


@app.post("/v2/models/<name>/infer")
def infer(name: str) -> Response:
    return _infer(name, None)


@app.post("/v2/models/<name>/versions/<version>/infer")
def version_infer(name: str, version: str) -> Response:
    return _infer(name, version)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    metrics.add_dimension(name="model", value=service.config.name)
    return app.resolve(event, context)
