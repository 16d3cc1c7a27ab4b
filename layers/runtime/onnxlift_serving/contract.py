"""The serving contract, written once: V2 routes, the error body, environment names, limits.

The Lambda handler, the SageMaker container, the local gateway, the toolkit and infra/ import
these names; tests/serving/test_contract.py checks that the SageMaker proxy (a separate asset with
no dependencies) matches the same route table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

__all__ = [
    "API_BODY_BYTES",
    "API_GATEWAY_MAX_BODY_BYTES",
    "API_GATEWAY_TIMEOUT_S",
    "ASSET_MAX_DEPTH",
    "BINARY_CONTENT_TYPE",
    "DEFAULT_MAX_LOADED_VERSIONS",
    "DYNAMIC_BATCHING",
    "ENVIRONMENTS",
    "EXTENSIONS",
    "HEALTH_PATHS",
    "IMAGE_TARGETS",
    "INFERENCE_HEADER_LENGTH",
    "JSON_CONTENT_TYPE",
    "LAMBDA_ARCHITECTURES",
    "LAMBDA_MAX_VCPUS",
    "LAMBDA_MB_PER_VCPU",
    "LAMBDA_MEMORY_MB",
    "LAMBDA_PAYLOAD_BYTES",
    "LAMBDA_RESPONSE_BYTES",
    "LAMBDA_TIMEOUT_S",
    "MAX_QUEUE_DELAY_MS",
    "METRIC_MODEL_DIMENSION",
    "METRIC_SERVICE_DIMENSION",
    "MODELS_PREFIX",
    "MODEL_NAME_PATTERN",
    "NAME_PREFIX",
    "OPENAPI_PATH",
    "POWERTOOLS_NAMESPACE",
    "RETRY_AFTER",
    "ROUTES",
    "SAGEMAKER_BINARY_CONTENT_TYPE",
    "SAGEMAKER_IMAGE_TAG",
    "SAGEMAKER_INVOCATION_TIMEOUT_S",
    "SAGEMAKER_PAYLOAD_BYTES",
    "SAGEMAKER_VARIANT",
    "SERVING_RESERVE_MB",
    "STACK_PREFIX",
    "THROTTLE_RETRY_AFTER_S",
    "UNAVAILABLE_RETRY_AFTER_S",
    "VERSION_PATTERN",
    "ContentEncoding",
    "Env",
    "Op",
    "Route",
    "RouteMatch",
    "allowed_methods",
    "batching_environment",
    "endpoint_name",
    "error_body",
    "function_name",
    "image_tag",
    "infer_path",
    "is_asset_key",
    "is_canonical_version",
    "is_model_name",
    "match_route",
    "memory_limit_mb",
    "no_route_message",
    "not_allowed_message",
    "parse_count",
    "resource_name",
    "retry_after",
    "route_path",
    "sandbox_environment",
    "serving_environment",
    "signature_required",
    "stack_name",
    "threads_for_memory",
    "tracing_enabled",
]

# -- limits (AWS documentation) -------------------------------------------------------------
LAMBDA_PAYLOAD_BYTES: Final = 6 * 1024 * 1024  # synchronous invocation request and response
LAMBDA_MEMORY_MB: Final = (128, 10_240)
LAMBDA_TIMEOUT_S: Final = (1, 900)
LAMBDA_MB_PER_VCPU: Final = 1769  # one vCPU per 1,769 MB ...
LAMBDA_MAX_VCPUS: Final = 6  # ... six at most
API_GATEWAY_MAX_BODY_BYTES: Final = 10 * 1024 * 1024
API_GATEWAY_TIMEOUT_S: Final = 29  # REST integrations stop waiting here
SAGEMAKER_PAYLOAD_BYTES: Final = 6 * 1024 * 1024  # InvokeEndpoint
SAGEMAKER_INVOCATION_TIMEOUT_S: Final = 60  # the container's answer
SAGEMAKER_VARIANT: Final = "AllTraffic"
# The body a client may send through the API: it reaches the function inside the event,
# base64-encoded (the API takes every body as binary, binaryMediaTypes */*), and the event
# must fit Lambda's payload with its headers and request context (64 KiB set aside).
EVENT_RESERVE_BYTES: Final = 64 * 1024
API_BODY_BYTES: Final = (LAMBDA_PAYLOAD_BYTES - EVENT_RESERVE_BYTES) // 4 * 3  # 4,669,440
# The answer a function may give: its proxy result (body, headers, status) must fit the same
# payload; a binary answer rides in it base64-encoded.
LAMBDA_RESPONSE_BYTES: Final = LAMBDA_PAYLOAD_BYTES - EVENT_RESERVE_BYTES
# What a serving process holds besides onnxruntime's arena and the model's weights: Python,
# onnxruntime, numpy, tokenizers, powertools (a local Lambda sandbox: 141 MiB RSS with minilm
# loaded before any request, of which ~47 MiB are its weights and their packed copies), one
# decoded request (peak growth for a 4.6 MB body: 34 MiB of texts, 57 MiB of 1.1 M FP32
# numbers, 39 MiB of 2.3 M INT8 ones) and the encoded answer (at most LAMBDA_RESPONSE_BYTES,
# checked before it is built; the outputs themselves are in the arena). 94 + 57 + 6 is 157
# MiB; 256 leaves room for Python's heap fragmentation between requests.
SERVING_RESERVE_MB: Final = 256
# Versions one serving process keeps loaded at once (least recently used out); the memory cap
# leaves room for each one's weights (MAX_LOADED_VERSIONS overrides it per function).
DEFAULT_MAX_LOADED_VERSIONS: Final = 2


def threads_for_memory(memory_mb: int) -> int:
    """onnxruntime intra-op threads for a Lambda function of `memory_mb`: its vCPU share.

    onnxruntime would size its pool from the host's cores instead, oversubscribing the share."""
    return max(1, min(LAMBDA_MAX_VCPUS, memory_mb // LAMBDA_MB_PER_VCPU))


# The deployment environments (`-c onnxlift.env=...`): one stack each, side by side in an
# account and region, so every physical name carries its environment (resource_name).
ENVIRONMENTS: Final = ("dev", "staging", "prod")
STACK_PREFIX: Final = "Onnxlift"
NAME_PREFIX: Final = "onnxlift"


def resource_name(env: str | None, *parts: str) -> str:
    """The one naming function for physical names: `onnxlift[-<env>]-<part>-...`.

    env None is the local stack's (and a pre-environment deployment's) unqualified form."""
    return "-".join(p for p in (NAME_PREFIX, env, *parts) if p)


def stack_name(env: str) -> str:
    """The CloudFormation stack of an environment: Onnxlift-<env>."""
    return f"{STACK_PREFIX}-{env}"


def function_name(model: str, env: str | None = None) -> str:
    """The Lambda function (and powertools service) name of a model."""
    return resource_name(env, model)


def endpoint_name(model: str, env: str | None = None) -> str:
    """The SageMaker endpoint name of a model."""
    return resource_name(env, model)


# The ECR tags of the prebuilt images (`-c onnxlift.image_source=ecr`, `onnxlift image push`).
SAGEMAKER_IMAGE_TAG: Final = "sagemaker"  # one image serves every SageMaker model
IMAGE_TARGETS: Final = ("lambda", "sagemaker")
LAMBDA_ARCHITECTURES: Final = ("x86_64", "arm64")


def image_tag(target: str, model: str, version: str, architecture: str = "x86_64") -> str:
    """The tag ECR mode deploys: `<model>-<version>` per x86_64 Lambda model (its version is
    baked in) and `<model>-<version>-arm64` per arm64 one, so both builds of a version can
    share a repository; `sagemaker` for the image every SageMaker model shares (models come
    from the registry as model.tar.gz)."""
    if target == "lambda":
        if architecture not in LAMBDA_ARCHITECTURES:
            raise ValueError(f"architecture {architecture!r} not in {LAMBDA_ARCHITECTURES}")
        suffix = "" if architecture == "x86_64" else f"-{architecture}"
        return f"{model}-{version}{suffix}"
    if target == "sagemaker":
        return SAGEMAKER_IMAGE_TAG
    raise ValueError(f"image target {target!r} not in {IMAGE_TARGETS}")


# -- environment of a serving function or container -----------------------------------------
class Env(StrEnum):
    """Environment variable names the serving runtime reads (ServiceConfig.from_env)."""

    MODEL_NAME = "MODEL_NAME"
    MODEL_VERSION = "MODEL_VERSION"  # baked-in (or pinned) version
    MODEL_ALIAS = "MODEL_ALIAS"  # the alias that answers unversioned routes (default prod)
    MODEL_SOURCE = "MODEL_SOURCE"  # image | registry
    MODEL_DIR = "MODEL_DIR"  # where the baked-in version lies
    MODEL_BUCKET = "MODEL_BUCKET"  # the registry; unset = no registry
    MODEL_CACHE_DIR = "MODEL_CACHE_DIR"  # where fetched versions are unpacked
    MODEL_SIGNATURE_KEY = "MODEL_SIGNATURE_KEY"  # kms:<arn> | file:<pem>; unset = not checked
    MODEL_SIGNATURE_REQUIRED = "MODEL_SIGNATURE_REQUIRED"  # "false": unsigned versions load
    ORT_INTRA_OP_THREADS = "ORT_INTRA_OP_THREADS"
    ORT_PROVIDERS = "ORT_PROVIDERS"  # comma-separated preference; CPU is always last
    MAX_PAYLOAD_BYTES = "MAX_PAYLOAD_BYTES"
    ALIAS_TTL_S = "ALIAS_TTL_S"
    MAX_LOADED_VERSIONS = "MAX_LOADED_VERSIONS"
    SM_MODEL_DIR = "SM_MODEL_DIR"  # SageMaker's name for MODEL_DIR
    ENDPOINT_NAME = "ENDPOINT_NAME"  # the SageMaker proxy's target
    LAMBDA_MEMORY = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"  # set by Lambda itself
    LAMBDA_TASK_ROOT = "LAMBDA_TASK_ROOT"  # set by Lambda itself
    TRACE_DISABLED = "POWERTOOLS_TRACE_DISABLED"  # powertools' Tracer: "true" turns it off
    # The memory one serving process may use, in MiB: onnxruntime's arena is capped to it less
    # the reserve and the weights. Default: Lambda's memory size; the SageMaker launcher sets
    # it to each worker's share of the container's memory.
    MEMORY_LIMIT_MB = "ONNXLIFT_MEMORY_LIMIT_MB"
    # The SageMaker container's dynamic batching (spec [serving.batching]; batching.py):
    # unset or 0 = off. Rows in one merged run, how long the oldest queued request may wait
    # for more (ms), and how many requests may wait (0: twice the batch size).
    BATCH_MAX_SIZE = "ONNXLIFT_BATCH_MAX_SIZE"
    BATCH_MAX_QUEUE_DELAY_MS = "ONNXLIFT_BATCH_MAX_QUEUE_DELAY_MS"
    BATCH_MAX_QUEUE_SIZE = "ONNXLIFT_BATCH_MAX_QUEUE_SIZE"
    # The SageMaker container's launcher (functions/sagemaker/launcher.py): overrides of its
    # gunicorn plan, and the GPU count it hands each worker's pre_fork hook.
    SAGEMAKER_WORKERS = "SAGEMAKER_WORKERS"  # worker processes
    SAGEMAKER_THREADS = "SAGEMAKER_THREADS"  # gthread request threads per worker
    SAGEMAKER_BIND = "SAGEMAKER_BIND"  # host:port (default 0.0.0.0:8080)
    SAGEMAKER_GRACEFUL_TIMEOUT = "SAGEMAKER_GRACEFUL_TIMEOUT"  # s a stopping worker may drain
    SAGEMAKER_ACCESS_LOG = "SAGEMAKER_ACCESS_LOG"  # "1"/"true": gunicorn's access log
    GPUS = "ONNXLIFT_GPUS"  # set by the launcher itself
    # The PreTraffic hook (functions/pretraffic/handler.py; its zip bundles this module)
    # reads MODEL_NAME, MODEL_VERSION and the MODEL_SIGNATURE_* settings too.
    TARGET_FUNCTION_ARN = "TARGET_FUNCTION_ARN"  # the new function version it invokes
    REGISTRY_BUCKET = "REGISTRY_BUCKET"  # where the version's parity set lies


# [serving.batching]: the longest a queued request may wait for its batch to fill (ms).
MAX_QUEUE_DELAY_MS: Final = 1000
# Where a version's batching settings and counters appear: the key in its V2 metadata's
# parameters (SageMaker container only), and Triton's block of that name in its model config.
DYNAMIC_BATCHING: Final = "dynamic_batching"


def memory_limit_mb(env: Mapping[str, str]) -> int | None:
    """The memory a serving process may use (MiB): MEMORY_LIMIT_MB (0: no cap), else Lambda's
    memory size, else None (no cap: a process with no known budget is not capped by a guess)."""
    explicit = parse_count(env.get(Env.MEMORY_LIMIT_MB, "").strip())
    if explicit is not None:
        return explicit or None
    return parse_count(env.get(Env.LAMBDA_MEMORY, "").strip()) or None


POWERTOOLS_NAMESPACE: Final = "onnxlift"  # CloudWatch metrics namespace
# The dimensions of the handler's metric (InferLatency): the model it adds, and
# the service powertools adds (POWERTOOLS_SERVICE_NAME, the function's name). A dashboard or
# alarm must ask for exactly this set: CloudWatch matches dimension sets whole.
METRIC_MODEL_DIMENSION: Final = "model"
METRIC_SERVICE_DIMENSION: Final = "service"


def serving_environment(
    *,
    name: str,
    version: str = "",
    source: str | None = None,  # image (the default) | registry
    alias: str | None = None,
    bucket: str | None = None,
    model_dir: str | None = None,
    cache_dir: str | None = None,
    threads: int | None = None,
    alias_ttl_s: float | None = None,
    providers: str | None = None,
    signature_key: str | None = None,  # kms:<arn> | file:<path> (onnxlift_serving.signing)
    signature_required: bool | None = None,  # False: unsigned versions load (checked if signed)
) -> dict[str, str]:
    """How a serving function or container is configured: ServiceConfig.from_env reads it
    back. Unset arguments are left out, so the runtime's defaults apply."""
    values = {
        Env.MODEL_NAME: name,
        Env.MODEL_VERSION: version,
        Env.MODEL_SOURCE: source,
        Env.MODEL_ALIAS: alias,
        Env.MODEL_BUCKET: bucket,
        Env.MODEL_DIR: model_dir,
        Env.MODEL_CACHE_DIR: cache_dir,
        Env.ORT_INTRA_OP_THREADS: None if threads is None else str(threads),
        Env.ALIAS_TTL_S: None if alias_ttl_s is None else str(alias_ttl_s),
        Env.ORT_PROVIDERS: providers,
        Env.MODEL_SIGNATURE_KEY: signature_key,
        Env.MODEL_SIGNATURE_REQUIRED: None
        if signature_required is None
        else str(signature_required).lower(),
    }
    return {str(key): value for key, value in values.items() if value is not None}


def batching_environment(
    max_batch_size: int, max_queue_delay_ms: float = 0.0, max_queue_size: int = 0
) -> dict[str, str]:
    """The container's dynamic batching settings (batching.BatchingConfig.from_env reads them
    back); max_batch_size 0 = off, and then nothing is set."""
    if not max_batch_size:
        return {}
    return {
        Env.BATCH_MAX_SIZE: str(max_batch_size),
        Env.BATCH_MAX_QUEUE_DELAY_MS: f"{max_queue_delay_ms:g}",
        Env.BATCH_MAX_QUEUE_SIZE: str(max_queue_size),
    }


def sandbox_environment(name: str, memory_mb: int, *, tracing: bool = False) -> dict[str, str]:
    """What Lambda itself (and the function's powertools settings) put in a sandbox of model
    `name`: for the local stack and bench, which run the handler outside Lambda."""
    return {
        Env.LAMBDA_MEMORY: str(memory_mb),
        "AWS_LAMBDA_FUNCTION_NAME": function_name(name),
        "POWERTOOLS_SERVICE_NAME": function_name(name),
        "POWERTOOLS_METRICS_NAMESPACE": POWERTOOLS_NAMESPACE,
        Env.TRACE_DISABLED: "false" if tracing else "true",
        "LOG_LEVEL": "INFO",
    }


def signature_required(env: Mapping[str, str]) -> bool:
    """MODEL_SIGNATURE_REQUIRED as the function, the container and the hook read it: only
    "false" lets an unsigned version load (kms-optional); a signature present must verify."""
    return env.get(Env.MODEL_SIGNATURE_REQUIRED, "true").strip().lower() != "false"


def tracing_enabled(env: Mapping[str, str]) -> bool:
    """Whether powertools' Tracer would record here: on Lambda (LAMBDA_TASK_ROOT) unless
    POWERTOOLS_TRACE_DISABLED is true. The handler builds no Tracer otherwise, so a sandbox
    without tracing never imports the X-Ray SDK (about 0.2 s of its cold start)."""
    disabled = env.get(Env.TRACE_DISABLED, "false").strip().lower() in ("1", "true", "yes", "on")
    return bool(env.get(Env.LAMBDA_TASK_ROOT)) and not disabled


# -- the error body ---------------------------------------------------------------------------
JSON_CONTENT_TYPE: Final = "application/json"


def error_body(message: str) -> dict[str, str]:
    """Every error on every path: `{"error": "..."}`, status in the HTTP response. A message
    that echoes a client's text may hold lone surrogates, which JSON encoders refuse: those
    become '?', so no error can fail to be written."""
    return {"error": message.encode("utf-8", "replace").decode("utf-8")}


# -- counts and retries ---------------------------------------------------------------------
_COUNT = re.compile(r"[0-9]{1,18}")  # ASCII digits only: str.isdigit() takes '²' too
RETRY_AFTER: Final = "Retry-After"
THROTTLE_RETRY_AFTER_S: Final = 1  # 429: a sandbox frees up within one request's time
UNAVAILABLE_RETRY_AFTER_S: Final = 5  # 503: a model (re)loads or a backend comes back


def parse_count(text: str) -> int | None:
    """A byte count or length as a client writes it (Content-Length, a header length): a
    non-negative decimal integer in ASCII digits, else None."""
    return int(text) if _COUNT.fullmatch(text) else None


def retry_after(seconds: int = UNAVAILABLE_RETRY_AFTER_S) -> dict[str, str]:
    """The header every 503 (and 429) carries."""
    return {RETRY_AFTER: str(seconds)}


# -- names ------------------------------------------------------------------------------------
# What a model name and an asset key may be, wherever they come from (a spec, the command line,
# a URL, a manifest in the bucket): checked before either becomes part of a path or a key.
MODEL_NAME_PATTERN: Final = r"[A-Za-z][A-Za-z0-9_-]{0,63}"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
# one path segment of an asset: no leading '.', so never '.', '..' or a hidden file
_ASSET_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# What a killed write leaves in the local registry mirror (onnxlift/local/snapshot.py): no
# registry object is ever named so, or the mirror could not tell the two apart.
_TEMPORARY_NAME = re.compile(r".*\.partial(\.[0-9a-fA-F]{8})?")
ASSET_MAX_DEPTH: Final = 4


def is_model_name(name: object) -> bool:
    return isinstance(name, str) and _MODEL_NAME.fullmatch(name) is not None


def is_asset_key(key: object) -> bool:
    """A relative path under assets/: ASCII segments, no '..', no absolute path, no '\\', and
    no name of the kind a killed write leaves (`*.partial`)."""
    if not isinstance(key, str) or _TEMPORARY_NAME.fullmatch(key):
        return False
    parts = key.split("/")
    return len(parts) <= ASSET_MAX_DEPTH and all(_ASSET_SEGMENT.fullmatch(p) for p in parts)


# -- versions ---------------------------------------------------------------------------------
# What a version in a path may be: a positive integer without leading zeros, at most 10 digits
# (the registry numbers versions 1, 2, 3, ...). Anything else is a 404 before any lookup.
VERSION_PATTERN: Final = r"[1-9][0-9]{0,9}"
_VERSION = re.compile(VERSION_PATTERN)


def is_canonical_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


# -- routes (Open Inference Protocol V2) -----------------------------------------------------
class Op(StrEnum):
    HEALTH_LIVE = "health-live"
    HEALTH_READY = "health-ready"
    SERVER_METADATA = "server-metadata"
    METADATA = "metadata"
    CONFIG = "config"
    READY = "ready"
    INFER = "infer"


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # {name} and {version} are path parameters
    op: Op

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(
            "^" + re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template)) + "$"
        )


ROUTES: Final[tuple[Route, ...]] = (
    Route("GET", "/v2/health/live", Op.HEALTH_LIVE),
    Route("GET", "/v2/health/ready", Op.HEALTH_READY),
    Route("GET", "/v2", Op.SERVER_METADATA),
    Route("GET", "/v2/models/{name}", Op.METADATA),
    Route("GET", "/v2/models/{name}/versions/{version}", Op.METADATA),
    Route("GET", "/v2/models/{name}/ready", Op.READY),
    Route("GET", "/v2/models/{name}/versions/{version}/ready", Op.READY),
    Route("GET", "/v2/models/{name}/config", Op.CONFIG),
    Route("GET", "/v2/models/{name}/versions/{version}/config", Op.CONFIG),
    Route("POST", "/v2/models/{name}/infer", Op.INFER),
    Route("POST", "/v2/models/{name}/versions/{version}/infer", Op.INFER),
)
_COMPILED = tuple((route, route.pattern) for route in ROUTES)
HEALTH_PATHS: Final = tuple(r.template for r in ROUTES if "{name}" not in r.template)
MODELS_PREFIX: Final = "/v2/models/"


# -- the rest of the V2 REST protocol -----------------------------------------------------------
# What GET /v2 announces (Triton's extension names): binary tensors in and out, and
# GET /v2/models/{name}/config.
EXTENSIONS: Final = ("binary_tensor_data", "model_configuration")
# The binary tensor data extension: the JSON header's length in bytes; the raw tensors follow it.
INFERENCE_HEADER_LENGTH: Final = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE: Final = "application/octet-stream"
# InvokeEndpoint carries no custom headers: SageMaker's Triton convention puts the header
# length in the content type instead (`...;json-header-size=N`), both ways.
SAGEMAKER_BINARY_CONTENT_TYPE: Final = "application/vnd.sagemaker-triton.binary+json"


class ContentEncoding(StrEnum):
    """Request body codings both paths decode (RFC 9110 names; deflate is zlib-wrapped)."""

    IDENTITY = "identity"
    GZIP = "gzip"
    X_GZIP = "x-gzip"
    DEFLATE = "deflate"


# The OpenAPI document of the API (onnxlift_serving.openapi), served by the local gateway.
OPENAPI_PATH: Final = "/openapi.json"


def infer_path(name: str, version: str | None = None) -> str:
    """Where a client POSTs an inference request for `name` (and `version`)."""
    versioned = "/versions/{version}" if version else ""
    return f"{MODELS_PREFIX}{{name}}{versioned}/infer".format(name=name, version=version)


@dataclass(frozen=True)
class RouteMatch:
    route: Route
    params: Mapping[str, str]

    @property
    def op(self) -> Op:
        return self.route.op

    @property
    def name(self) -> str | None:
        return self.params.get("name")

    @property
    def version(self) -> str | None:
        return self.params.get("version")


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods some route answers on `path` (empty: no such path; a 404, else a 405)."""
    path = route_path(path)
    return tuple(sorted({route.method for route, pattern in _COMPILED if pattern.match(path)}))


def no_route_message(method: str, path: str) -> str:
    """The 404 of a path no route takes (client text cut short)."""
    return f"no route for {method[:16]} {path[:256]}"


def not_allowed_message(method: str, path: str, allowed: tuple[str, ...]) -> str:
    """The 405 of a known path asked with another method; `allowed` also goes in Allow."""
    return f"{method[:16]} is not allowed on {path[:256]}; use {', '.join(allowed)}"


def route_path(path: str) -> str:
    """The path a route is matched on: API Gateway REST routes `/v2/health/live/` to the
    resource `/v2/health/live` (and passes the path as sent), so trailing slashes go."""
    return path.rstrip("/") or "/"


# match_route's answers by (method, path): a function sees the same few paths on every
# request. Bounded (a full table starts over) and only for short paths, so clients sending
# made-up paths cannot grow it; a RouteMatch is immutable, so requests can share one.
_MATCHED: dict[tuple[str, str], RouteMatch | None] = {}
_MATCHED_MAX: Final = 256
_MATCHED_PATH_MAX: Final = 256
_ROUTE_METHODS: Final = frozenset(route.method for route in ROUTES)  # others are not cached


def match_route(method: str, path: str) -> RouteMatch | None:
    """The route `method path` takes, or None (a path known under another method is None too:
    the caller answers 404 with what it was asked, as API Gateway does)."""
    key = (method, path)
    try:
        return _MATCHED[key]
    except KeyError:  # first time for this method and path
        pass
    found = _match_route(method, path)
    if method in _ROUTE_METHODS and len(path) <= _MATCHED_PATH_MAX:
        if len(_MATCHED) >= _MATCHED_MAX:
            _MATCHED.clear()
        _MATCHED[key] = found
    return found


def _match_route(method: str, path: str) -> RouteMatch | None:
    path = route_path(path)
    for route, pattern in _COMPILED:
        if route.method == method and (found := pattern.match(path)):
            return RouteMatch(route, MappingProxyType(found.groupdict()))
    return None
