"""An OpenAPI 3.1 document of the whole API, generated from the contract's route table.

Every route in contract.ROUTES with its parameters, request and response bodies, the error
body and the status codes each can answer, and the API key header. The local gateway serves it
at contract.OPENAPI_PATH; `document(models=...)` names the served models in the `name`
parameter, for a fuzzer that should reach them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from onnxlift_serving import __version__, protocol
from onnxlift_serving.contract import (
    BINARY_CONTENT_TYPE,
    EXTENSIONS,
    INFERENCE_HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    ROUTES,
    ContentEncoding,
    Op,
    Route,
)

API_KEY_HEADER = "x-api-key"
REF = "#/components/schemas/"
ERRORS = {
    400: "Malformed request: not JSON, not a V2 request, bad compressed or binary data",
    403: "Missing or invalid API key (checked before anything else)",
    404: "Unknown route, model or version",
    405: "Known path, another method",
    413: "Body over the payload limit (counted in bytes, after decompression)",
    415: "A Content-Encoding other than gzip, deflate or identity",
    422: "A V2 request that does not fit the model: input name, shape, datatype, values",
    429: "Throttled: retry after Retry-After seconds",
    503: "The model is not loaded (yet): retry after Retry-After seconds",
}
SUMMARIES = {
    Op.HEALTH_LIVE: "Server liveness",
    Op.HEALTH_READY: "Server readiness (the default model version is loaded)",
    Op.SERVER_METADATA: "Server metadata: name, version, extensions",
    Op.METADATA: "Model metadata: versions, platform, inputs, outputs",
    Op.CONFIG: "Model configuration (Triton's model-config shape)",
    Op.READY: "Model readiness",
    Op.INFER: "Inference (JSON, or the binary tensor data extension)",
}
RESPONSE_SCHEMAS = {
    Op.HEALTH_LIVE: "Live",
    Op.HEALTH_READY: "Ready",
    Op.SERVER_METADATA: "ServerMetadata",
    Op.METADATA: "ModelMetadata",
    Op.CONFIG: "ModelConfig",
    Op.READY: "ModelReady",
    Op.INFER: "InferResponse",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _object(required: Sequence[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": properties}


def _tensor_schemas() -> dict[str, Any]:
    datatype = {"type": "string", "enum": list(protocol.DATATYPES)}
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    parameters = {"type": "object", "additionalProperties": True}
    spec = _object(
        ["name", "datatype", "shape"],
        name={"type": "string"},
        datatype=datatype,
        shape={"type": "array", "items": {"type": "integer", "minimum": -1}},
    )
    request_tensor = _object(
        ["name", "shape", "datatype", "data"],
        name={"type": "string", "minLength": 1},
        shape=shape,
        datatype=datatype,
        parameters=_object([], binary_data_size={"type": "integer", "minimum": 0}),
        data={
            "description": "row-major values, flat or nested (with binary_data_size, in the "
            "binary body instead)"
        },
    )
    requested = _object(
        ["name"], name={"type": "string"}, parameters=_object([], binary_data={"type": "boolean"})
    )
    return {
        "TensorSpec": spec,
        "RequestTensor": request_tensor,
        "RequestedOutput": requested,
        "InferRequest": _object(
            ["inputs"],
            id={"type": "string"},
            parameters=_object([], binary_data_output={"type": "boolean"}),
            inputs={"type": "array", "minItems": 1, "items": _ref("RequestTensor")},
            outputs={"type": "array", "items": _ref("RequestedOutput")},
        ),
        "ResponseTensor": _object(
            ["name", "shape", "datatype"],
            name={"type": "string"},
            shape=shape,
            datatype=datatype,
            parameters=parameters,
            data={"type": "array"},
        ),
        "InferResponse": _object(
            ["model_name", "model_version", "outputs"],
            model_name={"type": "string"},
            model_version={"type": "string"},
            id={"type": "string"},
            outputs={"type": "array", "items": _ref("ResponseTensor")},
        ),
    }


def _schemas() -> dict[str, Any]:
    strings = {"type": "array", "items": {"type": "string"}}
    config_tensor = _object(
        ["name", "data_type", "dims"],
        name={"type": "string"},
        data_type={"type": "string"},
        dims={"type": "array", "items": {"type": "integer"}},
    )
    return {
        "Error": _object(["error"], error={"type": "string"}),
        "Live": _object(["live"], live={"type": "boolean"}),
        "Ready": _object(["ready"], ready={"type": "boolean"}),
        "ModelReady": _object(
            ["name", "ready"], name={"type": "string"}, ready={"type": "boolean"}
        ),
        "ServerMetadata": _object(
            ["name", "version", "extensions"],
            name={"type": "string"},
            version={"type": "string"},
            extensions={**strings, "examples": [list(EXTENSIONS)]},
        ),
        "ModelMetadata": _object(
            ["name", "versions", "platform", "inputs", "outputs"],
            name={"type": "string"},
            versions=strings,
            platform={"type": "string"},
            inputs={"type": "array", "items": _ref("TensorSpec")},
            outputs={"type": "array", "items": _ref("TensorSpec")},
            parameters={"type": "object"},
        ),
        "ModelConfig": _object(
            ["name", "platform", "max_batch_size", "input", "output"],
            name={"type": "string"},
            platform={"type": "string"},
            backend={"type": "string"},
            max_batch_size={"type": "integer", "minimum": 0},
            input={"type": "array", "items": config_tensor},
            output={"type": "array", "items": config_tensor},
        ),
        **_tensor_schemas(),
    }


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": ERRORS[status],
        "content": {JSON_CONTENT_TYPE: {"schema": _ref("Error")}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return response


def _infer_request_body() -> dict[str, Any]:
    return {
        "required": True,
        "description": f"A V2 request in JSON; or, with {INFERENCE_HEADER_LENGTH}, that many "
        "bytes of JSON request followed by the raw tensors its inputs' "
        "parameters.binary_data_size count (any content type, tritonclient sends none). "
        "gzip or deflate with Content-Encoding.",
        "content": {
            JSON_CONTENT_TYPE: {"schema": _ref("InferRequest")},
            BINARY_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
        },
    }


def _infer_headers() -> list[dict[str, Any]]:
    return [
        {
            "name": INFERENCE_HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "Binary tensor data extension: the JSON header's length in bytes",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": [c.value for c in ContentEncoding]},
        },
    ]


def _ok_response(route: Route) -> dict[str, Any]:
    content: dict[str, Any] = {JSON_CONTENT_TYPE: {"schema": _ref(RESPONSE_SCHEMAS[route.op])}}
    response: dict[str, Any] = {"description": SUMMARIES[route.op], "content": content}
    if route.op is Op.INFER:
        content[BINARY_CONTENT_TYPE] = {"schema": {"type": "string", "format": "binary"}}
        response["headers"] = {
            INFERENCE_HEADER_LENGTH: {
                "description": "Set when the body is binary: the JSON header's length",
                "schema": {"type": "integer"},
            }
        }
    return response


def _operation(route: Route) -> dict[str, Any]:
    statuses = (
        [400, 403, 404, 405, 413, 415, 422, 429, 503]
        if route.op is Op.INFER
        else [403, 404, 405, 429, 503]
    )
    responses: dict[str, Any] = {"200": _ok_response(route)}
    responses |= {str(status): _error_response(status) for status in statuses}
    if route.op in (Op.HEALTH_READY, Op.READY):
        responses["503"] = {
            "description": "Not ready",
            "content": {JSON_CONTENT_TYPE: {"schema": _ref(RESPONSE_SCHEMAS[route.op])}},
        }
    versioned = "{version}" in route.template
    operation: dict[str, Any] = {
        "operationId": route.op.value.replace("-", "_") + ("_version" if versioned else ""),
        "summary": SUMMARIES[route.op],
        "parameters": [{"$ref": f"#/components/parameters/{p}"} for p in _path_params(route)],
        "responses": responses,
    }
    if route.op is Op.INFER:
        operation["parameters"] += _infer_headers()
        operation["requestBody"] = _infer_request_body()
    return operation


def _path_params(route: Route) -> list[str]:
    return [p for p in ("name", "version") if f"{{{p}}}" in route.template]


def document(
    models: Sequence[str] | None = None, *, server_url: str | None = None
) -> dict[str, Any]:
    """The OpenAPI document of the API; `models` (if given) enumerate the `name` parameter."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(route)
    name_schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if models:
        name_schema["enum"] = list(models)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "onnxlift inference API",
            "version": __version__,
            "description": "Open Inference Protocol V2 (KServe / Triton) over HTTPS. Every "
            f"route needs the API key in the {API_KEY_HEADER} header; errors are "
            '{"error": "..."}.',
        },
        "servers": [{"url": server_url}] if server_url else [],
        "security": [{"ApiKey": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
            },
            "parameters": {
                "name": {"name": "name", "in": "path", "required": True, "schema": name_schema},
                "version": {
                    "name": "version",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "minLength": 1},
                },
            },
            "schemas": _schemas(),
        },
    }
