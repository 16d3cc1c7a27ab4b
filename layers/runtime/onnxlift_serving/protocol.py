"""Open Inference Protocol V2 (KServe / Triton) over JSON: decode, validate, encode.

Validation is split on purpose: a body that is not a V2 request is a 400; a V2 request
that does not fit the model's signature (input name, shape, datatype) is a 422.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from onnxlift_serving.errors import BadRequest, PayloadTooLarge, Unprocessable

# V2 datatype -> numpy dtype. BYTES travels as JSON strings and decodes to a str array.
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
NUMPY_TO_DATATYPE = {np.dtype(v).name: k for k, v in DATATYPES.items() if k != "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a served model: V2 name, datatype and shape (-1 = free)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TensorSpec:
        return cls(name=raw["name"], datatype=raw["datatype"], shape=tuple(raw["shape"]))


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    requested_outputs: tuple[str, ...] | None


def decode_body(body: str | bytes | None, *, max_bytes: int) -> dict[str, Any]:
    """Parse the HTTP body into a JSON object, or raise 400/413."""
    if body is None or len(body) == 0:
        raise BadRequest("request body is empty; expected a V2 inference request")
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object with an 'inputs' list")
    return doc


def _flatten(data: Any) -> list[Any]:
    """Row-major flattening of nested JSON lists (V2 allows nested or flat data)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    for item in data:
        flat.extend(_flatten(item))
    return flat


def _check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequest(f"input '{name}': 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e in (-1, s) for s, e in zip(shape, expected, strict=True)
    )


def _decode_tensor(
    raw: Any, index: int, signature: dict[str, TensorSpec]
) -> tuple[str, np.ndarray]:
    if not isinstance(raw, dict):
        raise BadRequest(f"inputs[{index}] must be an object with name, shape, datatype, data")
    for key in ("name", "shape", "datatype", "data"):
        if key not in raw:
            raise BadRequest(f"inputs[{index}] is missing '{key}'")
    name, datatype = raw["name"], raw["datatype"]
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise BadRequest(f"inputs[{index}]: 'name' and 'datatype' must be strings")
    shape = _check_shape(name, raw["shape"])
    if datatype not in DATATYPES:
        raise BadRequest(f"input '{name}': unknown datatype '{datatype}'")

    spec = signature.get(name)
    if spec is None:
        expected = ", ".join(sorted(signature))
        raise Unprocessable(f"the model has no input '{name}'; its inputs are: {expected}")
    if datatype != spec.datatype:
        raise Unprocessable(f"input '{name}' must be {spec.datatype}, got {datatype}")
    if not _fits(shape, spec.shape):
        raise Unprocessable(
            f"input '{name}' has shape {list(shape)}; the model expects {list(spec.shape)} "
            "(-1 is any size)"
        )

    data = _flatten(raw["data"])
    count = math.prod(shape)
    if len(data) != count:
        raise Unprocessable(
            f"input '{name}': shape {list(shape)} holds {count} elements, data has {len(data)}"
        )
    if datatype == "BYTES":
        if not all(isinstance(item, str) for item in data):
            raise Unprocessable(f"input '{name}': BYTES data must be strings")
        array = np.array(data, dtype=object).reshape(shape)
    else:
        try:
            array = np.asarray(data, dtype=DATATYPES[datatype]).reshape(shape)
        except (TypeError, ValueError, OverflowError):
            raise Unprocessable(f"input '{name}': data does not fit datatype {datatype}") from None
    return name, array


def decode_infer_request(
    doc: dict[str, Any], signature: dict[str, TensorSpec], outputs: dict[str, TensorSpec]
) -> InferRequest:
    """Turn a parsed V2 request into named numpy arrays checked against the model."""
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")

    inputs: dict[str, np.ndarray] = {}
    for index, raw in enumerate(raw_inputs):
        name, array = _decode_tensor(raw, index, signature)
        if name in inputs:
            raise BadRequest(f"input '{name}' is given twice")
        inputs[name] = array
    missing = sorted(set(signature) - set(inputs))
    if missing:
        raise Unprocessable(f"missing input(s): {', '.join(missing)}")

    requested: tuple[str, ...] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw_outputs
        ):
            raise BadRequest("'outputs' must be a list of objects with a 'name'")
        requested = tuple(o["name"] for o in raw_outputs)
        unknown = sorted(set(requested) - set(outputs))
        if unknown:
            raise Unprocessable(
                f"the model has no output(s) {', '.join(unknown)}; "
                f"its outputs are: {', '.join(sorted(outputs))}"
            )
    return InferRequest(id=request_id, inputs=inputs, requested_outputs=requested)


def encode_tensor(name: str, array: np.ndarray) -> dict[str, Any]:
    if array.dtype == np.object_ or array.dtype.kind in "SU":
        datatype = "BYTES"
        data = [x.decode() if isinstance(x, bytes) else str(x) for x in array.ravel()]
    else:
        datatype = NUMPY_TO_DATATYPE[array.dtype.name]
        data = np.ascontiguousarray(array).ravel()  # serialized by `dumps`, straight from numpy
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}


def dumps(doc: Any) -> bytes:
    """JSON for responses. orjson writes numpy arrays directly, and FP32 values as the shortest
    text that reads back as the same float32 (0.04736905, not 0.04736905172467232): about 10x
    faster than `json.dumps(array.tolist())` and half the bytes on the wire."""
    return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_infer_response(
    *, model_name: str, model_version: str, request_id: str | None, outputs: dict[str, np.ndarray]
) -> dict[str, Any]:
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = [encode_tensor(name, array) for name, array in outputs.items()]
    return response
