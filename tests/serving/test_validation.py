"""What a client can put in a body, checked before a model sees it: bytes, depth, datatypes.

Each case here once answered 500 (or 200 with NaN reaching the model); each is now a 4xx."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from onnxlift_serving.contract import error_body, is_canonical_version
from onnxlift_serving.errors import BadRequest, PayloadTooLarge, Unprocessable
from onnxlift_serving.pipelines import empty_outputs
from onnxlift_serving.protocol import (
    MAX_DATA_DEPTH,
    TensorSpec,
    body_bytes,
    decode_body,
    decode_infer_request,
)

OUT = {"y": TensorSpec("y", "FP32", (-1,))}


def decode(datatype: str, data: object, shape: list[int], **spec: object) -> np.ndarray:
    signature = {"x": TensorSpec("x", datatype, tuple(-1 for _ in shape), **spec)}  # type: ignore[arg-type]
    doc = {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}]}
    return decode_infer_request(doc, signature, OUT).inputs["x"]


# -- the body: bytes, UTF-8, the limit --------------------------------------------------------
@pytest.mark.parametrize("raw", [b'{"a": "\xff"}', b"\xc3\x28", b'{"inputs": "\xed\xa0\x80"}'])
def test_bytes_that_are_not_utf8_are_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid UTF-8"):
        decode_body(raw, max_bytes=1000)


def test_a_str_with_a_lone_surrogate_is_a_400_not_a_crash() -> None:
    with pytest.raises(BadRequest, match="UTF-8"):
        body_bytes('{"inputs": "\ud800"}')


def test_the_limit_counts_bytes_not_characters() -> None:
    text = '{"x": "' + "\U0001f600" * 300 + '"}'  # 309 characters, 1,209 bytes
    assert len(text) < 1000 < len(text.encode())
    with pytest.raises(PayloadTooLarge, match="1209 bytes"):
        decode_body(text, max_bytes=1000)
    assert decode_body(text, max_bytes=2000)["x"].startswith("\U0001f600")


# -- nesting: iterative, bounded, regular -----------------------------------------------------
@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 990, 1020])
def test_deep_nesting_is_a_400_without_recursion(depth: int) -> None:
    data: object = 1.0
    for _ in range(depth):
        data = [data]
    if depth > 1023:  # deeper than orjson parses: the body itself is refused
        with pytest.raises(BadRequest, match="not valid JSON"):
            decode_body(
                orjson.dumps({"d": "x"}).replace(b'"x"', b"[" * depth + b"]" * depth),
                max_bytes=10**6,
            )
        return
    with pytest.raises(BadRequest, match=f"deeper than {MAX_DATA_DEPTH}"):
        decode("FP32", data, [1])


def test_nesting_at_the_limit_still_decodes() -> None:
    data: object = 2.0
    for _ in range(MAX_DATA_DEPTH - 1):
        data = [data]
    assert decode("FP32", data, [1]).tolist() == [2.0]  # one element, however deep
    assert decode("FP32", [[[2.0]]], [1, 1, 1]).tolist() == [[[2.0]]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([[1, 2, 3], [4, 5]], "ragged"),
        ([[1, 2, 3], 4, 5, 6], "mixes lists and scalars"),
        ([[[1], [2]], [[3], [4, 5]]], "ragged at depth 2"),
    ],
)
def test_irregular_nested_data_is_a_422(data: object, fragment: str) -> None:
    with pytest.raises(Unprocessable, match=fragment):
        decode("FP32", data, [2, 3])


def test_regular_nested_data_flattens_row_major() -> None:
    assert decode("INT64", [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], [2, 4]).ravel().tolist() == list(
        range(1, 9)
    )
    assert decode("FP32", [[], []], [0]).shape == (0,)


# -- datatypes: only what the datatype can hold -----------------------------------------------
@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        ("FP32", None),
        ("FP32", "nan"),
        ("FP32", "1e999"),
        ("FP32", "1.5"),
        ("FP32", True),
        ("FP32", {"a": 1}),
        ("FP32", 1e39),  # finite JSON, infinite as FP32
        ("FP16", 70000.0),
        ("FP64", 10**400),
        ("INT64", 1.5),
        ("INT64", 2**63),
        ("INT32", 2**31),
        ("UINT8", -1),
        ("UINT8", 256),
        ("INT64", "3"),
        ("INT64", False),
        ("BOOL", 1),
        ("BOOL", "true"),
        ("BYTES", 7),
        ("BYTES", None),
    ],
)
def test_values_a_datatype_cannot_hold_are_a_422(datatype: str, value: object) -> None:
    with pytest.raises(Unprocessable, match="input 'x'"):
        decode(datatype, [value], [1])


def test_what_each_datatype_accepts() -> None:
    assert decode("FP32", [1, 2.5, -0.0], [3]).dtype == np.float32
    assert decode("FP16", [65504.0], [1]).tolist() == [65504.0]
    assert decode("INT8", [-128, 127], [2]).tolist() == [-128, 127]
    assert decode("UINT64", [2**64 - 1], [1]).tolist() == [2**64 - 1]
    assert decode("BOOL", [True, False], [2]).tolist() == [True, False]
    assert decode("BYTES", ["a", ""], [2]).tolist() == ["a", ""]


def test_non_finite_values_pass_only_where_the_model_allows_them() -> None:
    with pytest.raises(Unprocessable, match="must be finite"):
        decode("FP32", [1e39, 1.0], [2])
    allowed = decode("FP32", [1e39, -1e39], [2], allow_non_finite=True)
    assert math.isinf(allowed[0]) and math.isinf(allowed[1])


def test_allow_non_finite_travels_through_the_manifest_and_is_shown_only_when_set() -> None:
    plain = TensorSpec("x", "FP32", (-1, 3))
    assert plain.to_json() == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
    lenient = TensorSpec("x", "FP32", (-1, 3), allow_non_finite=True)
    assert lenient.to_json()["allow_non_finite"] is True
    assert TensorSpec.from_json(lenient.to_json()) == lenient
    assert TensorSpec.from_json(plain.to_json()) == plain


# -- small pieces -------------------------------------------------------------------------------
def test_empty_batches_get_empty_outputs_where_the_shape_is_known() -> None:
    outputs = {
        "label": TensorSpec("label", "BYTES", (-1,)),
        "probabilities": TensorSpec("probabilities", "FP32", (-1, 4)),
    }
    empty = empty_outputs(outputs)
    assert empty["label"].shape == (0,) and empty["probabilities"].shape == (0, 4)
    with pytest.raises(Unprocessable, match="empty batch"):
        empty_outputs({"y": TensorSpec("y", "FP32", (-1, -1))})


@pytest.mark.parametrize("version", ["1", "7", "42", "1234567890"])
def test_canonical_versions(version: str) -> None:
    assert is_canonical_version(version)


@pytest.mark.parametrize(
    "version",
    ["", "0", "01", "-1", "+1", "1.0", "1 ", "1\n", "a" * 300, "12345678901", "\u0661", "\u00b9"],
)
def test_not_canonical_versions(version: str) -> None:
    assert not is_canonical_version(version)


def test_error_bodies_can_always_be_written() -> None:
    body = error_body("model '\ud800' is not served here")
    assert orjson.loads(orjson.dumps(body))["error"] == "model '?' is not served here"
