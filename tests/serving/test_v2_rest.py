"""The rest of the V2 REST protocol, without a model: Content-Encoding, the binary tensor data
extension (against tritonclient's own encoder and parser), server metadata, model config and
the OpenAPI document."""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from typing import Any

import numpy as np
import pytest
from onnxlift_serving import __version__, binary, openapi, server_info
from onnxlift_serving.contract import EXTENSIONS, ROUTES, Op
from onnxlift_serving.encoding import decode_content, event_body
from onnxlift_serving.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

DOC = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}'
MB = 1024 * 1024


# -- Content-Encoding -------------------------------------------------------------------------
def raw_deflate(data: bytes) -> bytes:
    engine = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return engine.compress(data) + engine.flush()


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip", gzip.compress),
        ("deflate", zlib.compress),  # RFC 9110: the zlib format, as tritonclient sends it
        ("deflate", raw_deflate),  # what some clients send instead
        ("identity", lambda b: b),
        ("gzip, identity", gzip.compress),
        (None, lambda b: b),
    ],
)
def test_codings_decode(coding: str | None, compress: Any) -> None:
    assert decode_content(compress(DOC), coding, max_bytes=MB) == DOC


def test_codings_apply_in_reverse_order_and_gzip_members_concatenate() -> None:
    twice = gzip.compress(zlib.compress(DOC))
    assert decode_content(twice, "deflate, gzip", max_bytes=MB) == DOC
    members = gzip.compress(DOC[:10]) + gzip.compress(DOC[10:])
    assert decode_content(members, "gzip", max_bytes=MB) == DOC


def test_a_zip_bomb_stops_at_the_limit_without_inflating() -> None:
    bomb = gzip.compress(b"\0" * (64 * MB))  # ~64 KB on the wire
    assert len(bomb) < 100_000
    started = time.perf_counter()
    with pytest.raises(PayloadTooLarge, match="more than 6291456 bytes"):
        decode_content(bomb, "gzip", max_bytes=6 * MB)
    assert time.perf_counter() - started < 1.0
    assert len(decode_content(gzip.compress(b"\0" * MB), "gzip", max_bytes=MB)) == MB
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(b"\0" * (MB + 1)), "gzip", max_bytes=MB)


@pytest.mark.parametrize(
    ("body", "coding", "fragment"),
    [
        (b"\x1f\x8bnot gzip at all", "gzip", "not valid gzip"),
        (gzip.compress(DOC)[:-12], "gzip", "truncated gzip"),
        (b"\x00\x01\x02garbage", "gzip", "not valid gzip"),
        (b"\x78\x9cgarbage!", "deflate", "not valid deflate"),
        (zlib.compress(DOC) + b"tail", "deflate", "bytes after"),
    ],
)
def test_bad_compressed_data_is_a_400(body: bytes, coding: str, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        decode_content(body, coding, max_bytes=MB)


@pytest.mark.parametrize("coding", ["br", "compress", "zstd", "gzip, br", "*"])
def test_unknown_codings_are_a_415(coding: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="not supported"):
        decode_content(gzip.compress(DOC), coding, max_bytes=MB)


def test_a_body_api_gateway_already_decompressed_passes() -> None:
    # API Gateway documents that it decompresses request bodies before the integration.
    assert decode_content(DOC, "gzip", max_bytes=MB) == DOC


def test_event_bodies_are_bytes() -> None:
    assert event_body(base64.b64encode(b"\xff\x00").decode(), True) == b"\xff\x00"
    assert event_body("ünï", False) == "ünï".encode()
    assert event_body(None, False) == b""
    with pytest.raises(BadRequest, match="base64"):
        event_body("not base64!!", True)


# -- the binary tensor data extension --------------------------------------------------------
def triton_request(**outputs: bool) -> tuple[bytes, int | None, dict[str, np.ndarray]]:
    """A request as tritonclient builds it: FP32, INT64, BOOL and BYTES inputs, binary."""
    import tritonclient.http as httpclient

    arrays = {
        "f": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "i": np.array([[1, -(2**40)]], dtype=np.int64),
        "b": np.array([True, False, True]),
        "s": np.array(["héllo", "", "wörld"], dtype=object),
    }
    datatypes = {"f": "FP32", "i": "INT64", "b": "BOOL", "s": "BYTES"}
    inputs = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), datatypes[name])
        tensor.set_data_from_numpy(array, binary_data=name != "i")  # one JSON input among them
        inputs.append(tensor)
    requested = [httpclient.InferRequestedOutput(n, binary_data=b) for n, b in outputs.items()]
    body, length = httpclient.InferenceServerClient.generate_request_body(
        inputs, outputs=requested or None, request_id="r1"
    )
    return body, length, arrays


def test_binary_inputs_decode_to_the_arrays_tritonclient_sent() -> None:
    body, length, arrays = triton_request()
    assert length is not None and length < len(body)
    doc = binary.decode_request(body, length, max_bytes=MB)
    decoded = {t["name"]: t["data"] for t in doc["inputs"]}
    np.testing.assert_array_equal(np.asarray(decoded["f"], np.float32), arrays["f"].ravel())
    assert decoded["i"] == [1, -(2**40)]  # sent as JSON (tritonclient flattens it)
    assert decoded["b"] == [True, False, True]
    assert decoded["s"] == ["héllo", "", "wörld"]
    assert binary.binary_outputs(doc) is True  # no outputs named: all binary


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda body, n: (body, n + 10_000), "the body is only"),
        (lambda body, n: (body + b"\0", n), "1 bytes after the JSON header"),
        (lambda body, n: (body[:-3], n), "runs past the end"),
    ],
)
def test_binary_framing_errors_are_400(mutate: Any, fragment: str) -> None:
    body, length, _ = triton_request()
    with pytest.raises(BadRequest, match=fragment):
        binary.decode_request(*mutate(body, length), max_bytes=MB)


def binary_body(tensor: dict[str, Any], raw: bytes) -> tuple[bytes, int]:
    import json

    header = json.dumps({"inputs": [tensor]}).encode()
    return header + raw, len(header)


@pytest.mark.parametrize(
    ("tensor", "raw", "fragment"),
    [
        (
            {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 3}},
            b"abc",
            "not a whole number of FP32",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "NOPE", "parameters": {"binary_data_size": 4}},
            b"abcd",
            "unknown datatype",
        ),
        (
            {"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": -1}},
            b"",
            "non-negative integer",
        ),
        (
            {
                "name": "x",
                "shape": [1],
                "datatype": "FP32",
                "data": [1],
                "parameters": {"binary_data_size": 4},
            },
            b"abcd",
            "both 'data' and binary_data_size",
        ),
        (
            {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}},
            (9).to_bytes(4, "little") + b"ab",
            "runs past its binary data",
        ),
        (
            {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 2}},
            b"ab",
            "inside an element's length",
        ),
        (
            {"name": "s", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}},
            (1).to_bytes(4, "little") + b"\xff",
            "UTF-8",
        ),
    ],
)
def test_bad_binary_tensors_are_400(tensor: dict[str, Any], raw: bytes, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        binary.decode_request(*binary_body(tensor, raw), max_bytes=MB)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", " 1e3", "²", "١٢", "9" * 19])
def test_header_length_must_be_a_count(value: str) -> None:
    with pytest.raises(BadRequest, match="non-negative integer"):
        binary.parse_length(value)
    assert binary.parse_length(" 12 ") == 12 and binary.parse_length(None) is None


def test_sagemaker_carries_the_header_length_in_the_content_type() -> None:
    content_type = binary.sagemaker_content_type(42)
    assert content_type == "application/vnd.sagemaker-triton.binary+json;json-header-size=42"
    assert binary.sagemaker_header_length(content_type) == 42
    assert binary.sagemaker_header_length("application/json") is None
    with pytest.raises(BadRequest):
        binary.sagemaker_header_length("application/vnd.sagemaker-triton.binary+json")


def result() -> dict[str, Any]:
    return {
        "model_name": "m",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {"name": "f", "datatype": "FP32", "shape": [2], "data": np.array([0.5, -1.25], "f4")},
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ä", "b"]},
        ],
    }


@pytest.mark.parametrize("outputs", [{}, {"f": True, "s": True}, {"f": True, "s": False}])
def test_binary_responses_read_back_with_tritonclients_parser(outputs: dict[str, bool]) -> None:
    import tritonclient.http as httpclient

    body, length, _ = triton_request(**outputs)
    wanted = binary.binary_outputs(binary.decode_request(body, length, max_bytes=MB))
    reply = binary.encode_response(result(), wanted)
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["Inference-Header-Content-Length"] == str(reply.header_length)
    parsed = httpclient.InferResult.from_response_body(
        reply.body, header_length=reply.header_length
    )
    np.testing.assert_array_equal(parsed.as_numpy("f"), np.array([0.5, -1.25], "f4"))
    assert [s.decode() if isinstance(s, bytes) else s for s in parsed.as_numpy("s")] == ["ä", "b"]
    assert parsed.get_response()["id"] == "r1"


def test_json_requests_get_json_answers() -> None:
    reply = binary.encode_response(result(), binary.binary_outputs({"inputs": []}))
    assert reply.header_length is None and reply.headers == {"Content-Type": "application/json"}
    assert b'"data":[0.5,-1.25]' in reply.body
    with pytest.raises(BadRequest, match="true or false"):
        binary.binary_outputs({"parameters": {"binary_data_output": "yes"}})


def test_tritonclient_does_not_monkey_patch_this_process() -> None:
    import socket
    import threading

    import gevent.monkey
    import tritonclient.http  # noqa: F401

    assert not gevent.monkey.is_module_patched("socket")
    assert not gevent.monkey.is_module_patched("threading")
    assert socket.socket.__module__ == "socket" and threading.Lock.__module__ != "gevent.lock"


# -- server metadata, model config ------------------------------------------------------------
def test_server_metadata_names_the_toolkit_and_extensions() -> None:
    assert server_info.server_metadata() == {
        "name": "onnxlift",
        "version": __version__,
        "extensions": list(EXTENSIONS),
    }


def metadata(shape: list[int], max_batch: int | None) -> dict[str, Any]:
    return {
        "name": "m",
        "versions": ["3"],
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": shape}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [*shape, 384]}],
        "parameters": {"max_batch": max_batch, "task": "embedding", "providers": ["CPU"]},
    }


def test_model_config_is_tritons_shape() -> None:
    config = server_info.model_config(metadata([-1], 64))
    assert (config["platform"], config["backend"], config["max_batch_size"]) == (
        "onnxruntime_onnx",
        "onnxruntime",
        64,
    )
    assert config["input"] == [{"name": "text", "data_type": "TYPE_STRING", "dims": []}]
    assert config["output"] == [{"name": "embedding", "data_type": "TYPE_FP32", "dims": [384]}]
    unbatched = server_info.model_config(metadata([2], 64))  # no free first dimension
    assert unbatched["max_batch_size"] == 0 and unbatched["input"][0]["dims"] == [2]
    assert server_info.model_config(metadata([-1], None))["max_batch_size"] == 0


# -- the OpenAPI document ---------------------------------------------------------------------
def test_openapi_document_is_valid_and_covers_every_route() -> None:
    from openapi_spec_validator import validate

    doc = openapi.document(["minilm", "textclf"], server_url="http://127.0.0.1:1")
    validate(doc)
    for route in ROUTES:
        operation = doc["paths"][route.template][route.method.lower()]
        codes = set(operation["responses"])
        assert {"200", "403", "404", "405", "429", "503"} <= codes, route
        if route.op is Op.INFER:
            assert {"400", "413", "415", "422"} <= codes
            assert set(operation["requestBody"]["content"]) == {
                "application/json",
                "application/octet-stream",
            }
    assert len({op["operationId"] for p in doc["paths"].values() for op in p.values()}) == len(
        ROUTES
    )
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
    }
    assert doc["components"]["parameters"]["name"]["schema"]["enum"] == ["minilm", "textclf"]
    assert "enum" not in openapi.document()["components"]["parameters"]["name"]["schema"]
