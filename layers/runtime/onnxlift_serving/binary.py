"""The binary tensor data extension of the V2 REST protocol, as tritonclient sends it.

Request: `Inference-Header-Content-Length: N`; the body's first N bytes are the JSON request,
the rest the raw tensors, in input order, each input's length in its
`parameters.binary_data_size`: little-endian values, row-major; BYTES elements each a 4-byte
little-endian length and the bytes. Raw inputs are turned into ordinary `data` lists here, so
every input meets the same checks (protocol.decode_infer_request) whichever way it came.

Response: binary when the request asks for it (`parameters.binary_data_output`, or an output's
`parameters.binary_data`): such outputs carry `parameters.binary_data_size` instead of `data`,
and the JSON header's length is in Inference-Header-Content-Length, Content-Type
application/octet-stream. Over InvokeEndpoint the length rides in the content type
(`application/vnd.sagemaker-triton.binary+json;json-header-size=N`) both ways.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxlift_serving import protocol
from onnxlift_serving.contract import (
    BINARY_CONTENT_TYPE,
    INFERENCE_HEADER_LENGTH,
    JSON_CONTENT_TYPE,
    SAGEMAKER_BINARY_CONTENT_TYPE,
    parse_count,
)
from onnxlift_serving.encoding import decode_content
from onnxlift_serving.errors import BadRequest, PayloadTooLarge
from onnxlift_serving.pipelines import too_much_memory

if TYPE_CHECKING:
    from onnxlift_serving.service import ModelService

log = logging.getLogger(__name__)
_HEADER_SIZE = re.compile(r";\s*json-header-size\s*=\s*(\S+?)\s*(?:;|$)")
_LENGTH = 4  # bytes of each BYTES element's length prefix


def parse_length(value: str | None, *, what: str = INFERENCE_HEADER_LENGTH) -> int | None:
    """A header length as sent (None when absent); anything but a non-negative integer is 400."""
    if value is None or value.strip() == "":
        return None
    count = parse_count(value.strip())
    if count is None:
        raise BadRequest(f"{what} must be a non-negative integer, got '{value.strip()[:40]}'")
    return count


def sagemaker_header_length(content_type: str | None) -> int | None:
    """The JSON header's length from SageMaker's Triton content type, else None."""
    if not content_type or not content_type.strip().lower().startswith(
        SAGEMAKER_BINARY_CONTENT_TYPE
    ):
        return None
    found = _HEADER_SIZE.search(content_type)
    if found is None:
        raise BadRequest(f"{SAGEMAKER_BINARY_CONTENT_TYPE} needs a json-header-size parameter")
    return parse_length(found[1], what="json-header-size")


def _numpy_dtype(datatype: str) -> np.dtype:
    return np.dtype(protocol.DATATYPES[datatype]).newbyteorder("<")


def _bytes_elements(chunk: bytes, name: str) -> list[str]:
    items: list[str] = []
    offset = 0
    while offset < len(chunk):
        if offset + _LENGTH > len(chunk):
            raise BadRequest(f"input '{name}': BYTES data ends inside an element's length")
        size = int.from_bytes(chunk[offset : offset + _LENGTH], "little")
        offset += _LENGTH
        if offset + size > len(chunk):
            raise BadRequest(f"input '{name}': a BYTES element runs past its binary data")
        try:
            items.append(chunk[offset : offset + size].decode())
        except UnicodeDecodeError:
            raise BadRequest(f"input '{name}': BYTES elements must be UTF-8 text") from None
        offset += size
    return items


def _tensor_data(chunk: bytes, name: str, datatype: Any) -> list[Any]:
    """The raw bytes of one input as a flat list, checked against its datatype."""
    if not isinstance(datatype, str) or datatype not in protocol.DATATYPES:
        raise BadRequest(f"input '{name}': unknown datatype '{datatype}'")
    if datatype == "BYTES":
        return _bytes_elements(chunk, name)
    dtype = _numpy_dtype(datatype)
    if len(chunk) % dtype.itemsize:
        raise BadRequest(
            f"input '{name}': {len(chunk)} bytes of binary data is not a whole number of "
            f"{datatype} values ({dtype.itemsize} bytes each)"
        )
    return np.frombuffer(chunk, dtype=dtype).tolist()


def _binary_size(raw: dict[str, Any], index: int) -> int | None:
    parameters = raw.get("parameters")
    if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
        return None
    size = parameters["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequest(f"inputs[{index}]: binary_data_size must be a non-negative integer")
    if "data" in raw:
        raise BadRequest(f"inputs[{index}] has both 'data' and binary_data_size")
    return size


def decode_request(body: bytes, header_length: int | None, *, max_bytes: int) -> dict[str, Any]:
    """The V2 request in `body`: all JSON, or a JSON header of `header_length` bytes and the
    raw tensors its inputs' binary_data_size name, turned into `data` lists."""
    if header_length is None:
        return protocol.decode_body(body, max_bytes=max_bytes)
    if header_length > len(body):
        raise BadRequest(
            f"{INFERENCE_HEADER_LENGTH} is {header_length}; the body is only {len(body)} bytes"
        )
    doc = protocol.decode_body(body[:header_length], max_bytes=max_bytes)
    view = memoryview(body)[header_length:]
    offset = 0
    inputs = doc.get("inputs")
    for index, raw in enumerate(inputs if isinstance(inputs, list) else ()):
        size = _binary_size(raw, index) if isinstance(raw, dict) else None
        if size is None:
            continue
        if offset + size > len(view):
            raise BadRequest(
                f"inputs[{index}]: binary_data_size {size} runs past the end of the body"
            )
        name = raw.get("name")
        raw["data"] = _tensor_data(bytes(view[offset : offset + size]), name, raw.get("datatype"))
        offset += size
    if offset != len(view):
        raise BadRequest(
            f"the body has {len(view) - offset} bytes after the JSON header that no input's "
            "binary_data_size accounts for"
        )
    return doc


def _flag(parameters: Any, key: str) -> bool | None:
    if not isinstance(parameters, dict) or key not in parameters:
        return None
    value = parameters[key]
    if not isinstance(value, bool):
        raise BadRequest(f"parameters.{key} must be true or false")
    return value


def binary_outputs(doc: dict[str, Any]) -> dict[str, bool] | bool:
    """Which outputs the client wants as binary: a per-name map, and `binary_data_output` (or
    False) for any output not named there."""
    default = bool(_flag(doc.get("parameters"), "binary_data_output"))
    named: dict[str, bool] = {}
    outputs = doc.get("outputs")
    for output in outputs if isinstance(outputs, list) else ():
        if isinstance(output, dict) and isinstance(output.get("name"), str):
            flag = _flag(output.get("parameters"), "binary_data")
            named[output["name"]] = default if flag is None else flag
    return named or default


def tensor_bytes(datatype: str, data: Any) -> bytes:
    """One output tensor's raw bytes, as the extension lays them out."""
    if datatype == "BYTES":
        parts = [str(item).encode() for item in data]
        return b"".join(len(part).to_bytes(_LENGTH, "little") + part for part in parts)
    return np.ascontiguousarray(np.asarray(data, dtype=_numpy_dtype(datatype))).tobytes()


@dataclass
class EncodedResponse:
    body: bytes
    header_length: int | None = None  # set when the body is binary
    headers: dict[str, str] = field(default_factory=dict)


def encode_response(result: dict[str, Any], wanted: dict[str, bool] | bool) -> EncodedResponse:
    """The response body: JSON, or a JSON header and the raw outputs asked for as binary."""
    chunks: list[bytes] = []
    for output in result.get("outputs", []):
        binary = wanted.get(output["name"], False) if isinstance(wanted, dict) else wanted
        if binary:
            raw = tensor_bytes(output["datatype"], output.pop("data"))
            output["parameters"] = {**output.get("parameters", {}), "binary_data_size": len(raw)}
            chunks.append(raw)
    header = protocol.dumps(result)
    if not chunks:
        return EncodedResponse(header, None, {"Content-Type": JSON_CONTENT_TYPE})
    headers = {"Content-Type": BINARY_CONTENT_TYPE, INFERENCE_HEADER_LENGTH: str(len(header))}
    return EncodedResponse(b"".join([header, *chunks]), len(header), headers)


def sagemaker_content_type(header_length: int | None) -> str:
    """The content type InvokeEndpoint carries for a body (binary: with its header length)."""
    if header_length is None:
        return JSON_CONTENT_TYPE
    return f"{SAGEMAKER_BINARY_CONTENT_TYPE};json-header-size={header_length}"


def serve_infer(
    service: ModelService,
    body: bytes,
    *,
    name: str,
    version: str | None,
    content_encoding: str | None = None,
    header_length: int | None = None,
) -> EncodedResponse:
    """One V2 inference over HTTP, on either path: undo the Content-Encoding (bounded), split a
    binary body, infer, answer in JSON or binary as the request asks."""
    service.check_route(name)
    limit = service.config.max_payload_bytes
    if len(body) > limit:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {limit}")
    try:
        decoded = decode_content(body, content_encoding, max_bytes=limit)
        doc = decode_request(decoded, header_length, max_bytes=limit)
        wanted = binary_outputs(doc)
        reply = encode_response(service.infer_doc(doc, name, version, binary=wanted), wanted)
    except MemoryError:  # anywhere in the request: its size, not a bug (never a 500)
        log.warning("a request ran out of memory")
        raise PayloadTooLarge(too_much_memory()) from None
    _check_sent_size(reply, service.config.max_response_bytes, service.config.response_base64)
    return reply


def _check_sent_size(reply: EncodedResponse, limit: int, base64: bool) -> None:
    """The answer as the platform will send it (a binary body base64-encoded in Lambda's proxy
    result) within its limit: 413, not the platform's 502. The service refused what it could
    from the outputs' shapes before encoding; JSON's real size is only known now."""
    sent = len(reply.body)
    if reply.header_length is not None and base64:
        sent = -(-sent // 3) * 4
    if sent > limit:
        raise PayloadTooLarge(
            f"the answer takes {sent} bytes, over the {limit}-byte response limit; send fewer "
            "rows, ask for fewer outputs, or ask for binary outputs"
        )
