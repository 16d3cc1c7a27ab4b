"""The SageMaker container's WSGI app: the bring-your-own-container contract over ModelService.

    GET  /ping          200 once the model is loaded, 503 before (or if loading failed).
                        Never loads anything: it answers from a flag, in microseconds.
    POST /invocations   a V2 inference request, the same body as POST /v2/models/{name}/infer.
                        `X-Amzn-SageMaker-Custom-Attributes` (SageMaker forwards it verbatim)
                        may select another V2 operation, for callers that can only reach
                        /invocations (the API's proxy function, see proxy/):
                            onnxlift-route=infer|metadata|config|ready|server-metadata|
                                           health-ready|health-live
                            onnxlift-model=<name>; onnxlift-version=<version>
                            onnxlift-content-encoding=gzip|deflate (the client's coding)
                        A binary-extension body comes as Content-Type
                        application/vnd.sagemaker-triton.binary+json;json-header-size=N and is
                        answered in kind when binary outputs are asked for.
    The V2 routes       /v2/health/live, /v2/health/ready, GET /v2, GET /v2/models/{name}
                        [/versions/{v}], GET .../ready, GET .../config, POST .../infer (gzip or
                        deflate bodies, the binary tensor extension): the same as the Lambda
                        path, so the local gateway can forward to the container unchanged.

Errors are `{"error": message}` with the shared runtime's status codes (onnxlift_serving.errors).
The model loads on a background thread in each worker (see launcher.py for why never before
the fork), so /ping answers 503 quickly while it loads instead of hanging.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from onnxlift_serving import binary, protocol, server_info
from onnxlift_serving.batching import BatchingConfig
from onnxlift_serving.contract import (
    JSON_CONTENT_TYPE,
    LAMBDA_RESPONSE_BYTES,
    SAGEMAKER_PAYLOAD_BYTES,
    Env,
    Op,
    allowed_methods,
    error_body,
    match_route,
    memory_limit_mb,
    no_route_message,
    not_allowed_message,
    parse_count,
    retry_after,
)
from onnxlift_serving.errors import (
    BadRequest,
    InferenceError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from onnxlift_serving.layout import MANIFEST_FILE
from onnxlift_serving.service import ModelService, ServiceConfig
from onnxlift_serving.session import default_threads

log = logging.getLogger("onnxlift.sagemaker")

DEFAULT_MODEL_DIR = "/opt/ml/model"
DEFAULT_PROVIDERS = "CUDAExecutionProvider"
CUSTOM_ATTRIBUTES = "HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"
ROUTE_ATTRIBUTES = tuple(Op)  # what the onnxlift-route custom attribute may name
_CONTAINER_ROUTES = {"/ping": ("GET", "HEAD"), "/invocations": ("POST",)}
StartResponse = Callable[..., Any]


def _manifest_name(model_dir: Path) -> str:
    """The served model's name, from its manifest (the container serves whatever it was given)."""
    try:
        return str(json.loads((model_dir / MANIFEST_FILE).read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"  # loading will fail and say why; /ping stays 503


def config_from_env(env: Mapping[str, str] | None = None) -> ServiceConfig:
    """SM_MODEL_DIR (SageMaker's name) or MODEL_DIR, default /opt/ml/model; CUDA preferred."""
    env = os.environ if env is None else env
    model_dir = Path(env.get(Env.SM_MODEL_DIR) or env.get(Env.MODEL_DIR) or DEFAULT_MODEL_DIR)
    return ServiceConfig(
        name=env.get(Env.MODEL_NAME) or _manifest_name(model_dir),
        version=env.get(Env.MODEL_VERSION, ""),
        source="image",
        model_dir=model_dir,
        threads=default_threads(env),
        # InvokeEndpoint's own limit: the container is called directly too, not only by the API
        max_payload_bytes=int(env.get(Env.MAX_PAYLOAD_BYTES, SAGEMAKER_PAYLOAD_BYTES)),
        providers=tuple(
            p for p in env.get(Env.ORT_PROVIDERS, DEFAULT_PROVIDERS).split(",") if p.strip()
        ),
        memory_mb=memory_limit_mb(env),  # the launcher sets each worker's share
        # The API path's answer passes the proxy Lambda, which sends a binary body
        # base64-encoded within Lambda's response limit: the tighter of the two paths' limits.
        max_response_bytes=LAMBDA_RESPONSE_BYTES,
        response_base64=True,
        # [serving.batching] of the spec: concurrent requests run as one session.run
        batching=BatchingConfig.from_env(env),
    )


def parse_custom_attributes(raw: str | None) -> dict[str, str]:
    """`k1=v1; k2=v2` -> dict; anything else in the header is the caller's and is ignored."""
    pairs = (part.split("=", 1) for part in (raw or "").split(";") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs if k.strip().startswith("onnxlift-")}


class ContainerApp:
    """A WSGI callable around one ModelService, created once per worker process."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.service: ModelService | None = None
        self._loader: threading.Thread | None = None
        self.started = time.monotonic()

    # -- loading --------------------------------------------------------------------------

    def load(self) -> None:
        service = ModelService(self.config)  # never raises: a failure is kept as load_error
        self.service = service
        if service.ready:
            providers = service.metadata(service.config.name)["parameters"]["providers"]
            log.info(
                "model %s version %s loaded in %.2fs; execution providers in use: %s",
                service.config.name,
                service.config.version or "(from manifest)",
                service.load_seconds or 0.0,
                ", ".join(providers),
            )
            if self.config.providers and providers[0] not in self.config.providers:
                log.warning(
                    "preferred providers %s are not available; running on %s",
                    ",".join(self.config.providers),
                    providers[0],
                )
        else:
            log.error("model failed to load: %s", service.load_error)

    def start_loading(self) -> None:
        self._loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        self._loader.start()

    def wait_loaded(self, timeout: float | None = None) -> bool:
        if self._loader is not None:
            self._loader.join(timeout)
        return self.ready

    def close(self, *, refuse_queued: bool = False) -> None:
        """The worker is stopping (launcher.worker_exit, worker_int): requests waiting in a
        batch queue are run now or, with `refuse_queued`, answered 503 with Retry-After,
        never dropped with the process."""
        if self.service is not None:
            self.service.close_batching(refuse_queued=refuse_queued)

    @property
    def ready(self) -> bool:
        return self.service is not None and self.service.ready

    def _service(self) -> ModelService:
        if self.service is None:
            raise ServiceUnavailable(
                f"model '{self.config.name}' is still loading "
                f"({time.monotonic() - self.started:.0f}s so far)"
            )
        return self.service

    # -- routes ---------------------------------------------------------------------------

    def ping(self) -> tuple[int, dict[str, Any]]:
        if self.ready:
            return 200, {"status": "healthy", "model": self.config.name}
        if self.service is None:
            return 503, error_body(f"model '{self.config.name}' is loading")
        # the whole reason (paths, hashes) is in the container's log, never in an answer
        return 503, error_body(
            f"model '{self.config.name}' is not loaded: {self.service.load_problem}"
        )

    def _operation(
        self,
        route: str,
        name: str,
        version: str | None,
        body: bytes,
        environ: Mapping[str, Any] | None = None,
    ) -> tuple[int, dict[str, Any] | binary.EncodedResponse]:
        if route == Op.HEALTH_LIVE:
            return 200, {"live": True}
        if route == Op.HEALTH_READY:
            return (200 if self.ready else 503), {"ready": self.ready}
        if route == Op.SERVER_METADATA:
            return 200, server_info.server_metadata()
        service = self._service()
        if route == Op.METADATA:
            return 200, service.metadata(name, version)
        if route == Op.CONFIG:
            return 200, server_info.model_config(service.metadata(name, version))
        if route == Op.READY:
            ready = service.model_ready(name, version)
            return (200 if ready else 503), {"name": name, "ready": ready}
        return 200, binary.serve_infer(
            service, body, name=name, version=version, **body_coding(environ or {})
        )

    def invocations(self, environ: Mapping[str, Any], body: bytes) -> tuple[int, dict[str, Any]]:
        attributes = parse_custom_attributes(environ.get(CUSTOM_ATTRIBUTES))
        route = attributes.get("onnxlift-route", Op.INFER)
        if route not in ROUTE_ATTRIBUTES:
            raise BadRequest(
                f"onnxlift-route '{route}' is not one of {', '.join(ROUTE_ATTRIBUTES)}"
            )
        name = attributes.get("onnxlift-model", self.config.name)
        return self._operation(route, name, attributes.get("onnxlift-version"), body, environ)

    def dispatch(
        self, method: str, path: str, environ: Mapping[str, Any], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if path == "/ping" and method in ("GET", "HEAD"):
            return self.ping()
        if path == "/invocations" and method == "POST":
            return self.invocations(environ, body)
        found = match_route(method, path)
        if found is not None:
            name = found.name or self.config.name  # the health routes name no model
            return self._operation(found.op, name, found.version, body, environ)
        allowed = _CONTAINER_ROUTES.get(path) or allowed_methods(path)
        if allowed:
            raise MethodNotAllowed(
                not_allowed_message(method, path, allowed),
                headers={"Allow": ", ".join(allowed)},
            )
        raise NotFound(no_route_message(method, path))

    def _read_body(self, environ: Mapping[str, Any]) -> bytes:
        stream = environ.get("wsgi.input")
        if stream is None:
            return b""
        declared = str(environ.get("CONTENT_LENGTH") or "").strip()
        length = parse_count(declared) if declared else 0
        if length is None:  # never read to EOF
            raise BadRequest(f"Content-Length '{declared[:32]}' is not a non-negative integer")
        limit = self.config.max_payload_bytes + 1  # one byte over: decode_body says 413
        return bytes(stream.read(min(length, limit) if length else limit))

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        headers: dict[str, str] = {"Content-Type": JSON_CONTENT_TYPE}
        try:
            status, doc = self.dispatch(method, path, environ, self._read_body(environ))
            if isinstance(doc, binary.EncodedResponse):
                doc, headers = doc.body, _encoded_headers(doc, invocation=path == "/invocations")
        except InferenceError as error:
            level = logging.ERROR if error.status >= 500 else logging.INFO
            log.log(level, "%s %s -> %d: %s", method, path, error.status, error.message)
            status, doc = error.status, error_body(error.message)
            headers = {"Content-Type": JSON_CONTENT_TYPE, **error.headers}
        except Exception as error:  # our bug, never the client's: log it whole, answer JSON
            log.exception("unhandled error on %s %s", method, path)
            status = 500
            doc = error_body(f"internal error ({type(error).__name__}); see the container's logs")
        payload = doc if isinstance(doc, bytes) else protocol.dumps(doc)
        if status == 503:  # not ready (ping, health, a version's ready): when to ask again
            headers = {**retry_after(), **headers}
        start_response(
            f"{status} {_REASONS.get(status, 'Error')}",
            [*headers.items(), ("Content-Length", str(len(payload)))],
        )
        return [b"" if method == "HEAD" else payload]


def body_coding(environ: Mapping[str, Any]) -> dict[str, Any]:
    """How an infer body is coded: Content-Encoding (the HTTP header, or the
    onnxlift-content-encoding custom attribute the API's proxy sets: InvokeEndpoint carries no
    other headers) and the binary extension's JSON header length (Inference-Header-Content-Length,
    or SageMaker's Triton content type `...;json-header-size=N`)."""
    attributes = parse_custom_attributes(environ.get(CUSTOM_ATTRIBUTES))
    length = binary.parse_length(environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH"))
    if length is None:
        length = binary.sagemaker_header_length(environ.get("CONTENT_TYPE"))
    return {
        "content_encoding": environ.get("HTTP_CONTENT_ENCODING")
        or attributes.get("onnxlift-content-encoding"),
        "header_length": length,
    }


def _encoded_headers(reply: binary.EncodedResponse, *, invocation: bool) -> dict[str, str]:
    """A binary answer to /invocations says its header length in the content type (SageMaker
    returns nothing else); on the V2 routes in Inference-Header-Content-Length."""
    if invocation and reply.header_length is not None:
        return {"Content-Type": binary.sagemaker_content_type(reply.header_length)}
    return dict(reply.headers)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def create_app(env: Mapping[str, str] | None = None, *, background: bool = True) -> ContainerApp:
    """The app for one worker: loading starts at once, on a thread unless `background=False`."""
    app = ContainerApp(config_from_env(env))
    if background:
        app.start_loading()
    else:
        app.load()
    return app
