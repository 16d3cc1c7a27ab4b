"""V2 codec: what is a 400, what is a 422, and what goes back on the wire."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnxlift_serving.errors import BadRequest, PayloadTooLarge, Unprocessable
from onnxlift_serving.protocol import (
    TensorSpec,
    decode_body,
    decode_infer_request,
    dumps,
    encode_infer_response,
)

TEXT = {"text": TensorSpec("text", "BYTES", (-1,))}
MATRIX = {"x": TensorSpec("x", "FP32", (-1, 3))}
OUT = {"y": TensorSpec("y", "FP32", (-1,))}


def tensor(**overrides: object) -> dict[str, object]:
    return {
        "name": "x",
        "shape": [2, 3],
        "datatype": "FP32",
        "data": [1, 2, 3, 4, 5, 6],
    } | overrides


def test_flat_and_nested_data_decode_row_major() -> None:
    flat = decode_infer_request({"inputs": [tensor()]}, MATRIX, OUT).inputs["x"]
    nested = decode_infer_request({"inputs": [tensor(data=[[1, 2, 3], [4, 5, 6]])]}, MATRIX, OUT)
    assert flat.dtype == np.float32 and flat.shape == (2, 3)
    np.testing.assert_array_equal(flat, nested.inputs["x"])
    assert flat[1, 0] == 4


def test_body_limits_and_json() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_body(b"{}" * 10, max_bytes=5)
    with pytest.raises(BadRequest):
        decode_body(b"\xff\xfe", max_bytes=100)
    assert decode_body('{"inputs": []}', max_bytes=100) == {"inputs": []}


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"inputs": "x"}, BadRequest),
        ({"inputs": [tensor()], "id": 5}, BadRequest),
        ({"inputs": [tensor(), tensor()]}, BadRequest),
        ({"inputs": [tensor(datatype="FP128")]}, BadRequest),
        ({"inputs": [tensor(shape=[2, -3])]}, BadRequest),
        ({"inputs": [tensor(shape=[True, 3])]}, BadRequest),
        ({"inputs": [tensor(datatype="INT64")]}, Unprocessable),
        ({"inputs": [tensor(shape=[3, 2])]}, Unprocessable),
        ({"inputs": [tensor(data=["a", "b", "c", "d", "e", "f"])]}, Unprocessable),
        ({"inputs": [tensor()], "outputs": [{"nom": "y"}]}, BadRequest),
        ({"inputs": [tensor()], "outputs": [{"name": "z"}]}, Unprocessable),
    ],
)
def test_400_for_malformed_422_for_mismatched(doc: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        decode_infer_request(doc, MATRIX, OUT)


def test_missing_input_is_422() -> None:
    two = MATRIX | {"w": TensorSpec("w", "FP32", (-1,))}
    with pytest.raises(Unprocessable, match="missing input"):
        decode_infer_request({"inputs": [tensor()]}, two, OUT)


def test_bytes_tensor_keeps_strings() -> None:
    doc = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", "é"]}]}
    array = decode_infer_request(doc, TEXT, OUT).inputs["text"]
    assert array.tolist() == ["a", "é"]


def test_response_shape_and_datatypes() -> None:
    response = encode_infer_response(
        model_name="m",
        model_version="3",
        request_id="r",
        outputs={
            "y": np.arange(6, dtype=np.float32).reshape(2, 3),
            "label": np.array(["cat", "dog"], dtype=object),
        },
    )
    response = json.loads(dumps(response))  # what goes on the wire
    assert response["model_version"] == "3" and response["id"] == "r"
    y, label = response["outputs"]
    assert y == {"name": "y", "datatype": "FP32", "shape": [2, 3], "data": [0, 1, 2, 3, 4, 5]}
    assert label["datatype"] == "BYTES" and label["data"] == ["cat", "dog"]
    assert "id" not in encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs={}
    )


def test_fp32_goes_out_as_the_shortest_float32_text() -> None:
    values = np.array([0.04736905172467232, 1 / 3], dtype=np.float32)
    wire = dumps(
        encode_infer_response(
            model_name="m", model_version="1", request_id=None, outputs={"e": values}
        )
    )
    assert b"0.04736905," in wire and b"0.33333334" in wire
    decoded = np.asarray(json.loads(wire)["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_array_equal(decoded, values)  # exact round trip through float32


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],  # a strided view
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        np.arange(4, dtype=">i4"),  # non-native byte order
        np.array([b"ab", b"c"], dtype="S2"),
        np.array(["x", "yz"]),
    ],
)
def test_any_layout_or_byte_order_goes_out_row_major(array: np.ndarray) -> None:
    response = encode_infer_response(
        model_name="m", model_version="1", request_id=None, outputs={"a": array}
    )
    (out,) = json.loads(dumps(response))["outputs"]
    assert out["shape"] == list(array.shape)
    if array.dtype.kind in "SU":
        assert out["datatype"] == "BYTES"
        assert out["data"] == [x.decode() if isinstance(x, bytes) else x for x in array.ravel()]
    else:
        assert (
            out["datatype"]
            == {"f": "FP32", "i": "INT64" if array.itemsize == 8 else "INT32"}[array.dtype.kind]
        )
        assert out["data"] == array.ravel().tolist()
