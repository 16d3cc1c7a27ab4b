"""Dynamic batching through ModelService on a real onnxruntime session (a small MLP written
here): concurrent callers with distinct inputs each get the answer their input alone gets."""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving import server_info
from onnxlift_serving.batching import BatchingConfig
from onnxlift_serving.errors import PayloadTooLarge
from onnxlift_serving.service import ModelService, ServiceConfig

FEATURES, HIDDEN, CLASSES = 16, 32, 5


def mlp() -> onnx.ModelProto:
    """x [N, 16] -> Relu(x W1 + b1) W2 + b2 -> Softmax: `probabilities` [N, 5], `score` [N]."""
    rng = np.random.default_rng(7)
    weights = {
        "w1": rng.normal(size=(FEATURES, HIDDEN)).astype(np.float32),
        "b1": rng.normal(size=HIDDEN).astype(np.float32),
        "w2": rng.normal(size=(HIDDEN, CLASSES)).astype(np.float32),
        "b2": rng.normal(size=CLASSES).astype(np.float32),
        "axes": np.asarray([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ReduceMax", ["logits", "axes"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
        ],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mlp")
    (folder / "model.onnx").write_bytes(mlp().SerializeToString())
    write_manifest(folder)
    return folder


def write_manifest(folder: Path) -> None:
    """The manifest of folder/model.onnx as the MLP version 1 (no quantization recorded)."""
    data = (folder / "model.onnx").read_bytes()
    manifest = {
        "name": "mlp",
        "version": "1",
        "task": "tensor",
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_batch": 64,
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, FEATURES]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def service(folder: Path, batching: BatchingConfig | None) -> ModelService:
    config = ServiceConfig(name="mlp", model_dir=folder, threads=1, batching=batching)
    loaded = ModelService(config)
    assert loaded.ready, loaded.load_error
    return loaded


def request(seed: int) -> dict[str, Any]:
    rows = 1 + seed % 4
    data = np.random.default_rng(seed).normal(size=(rows, FEATURES)).astype(np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [rows, FEATURES], "data": data.tolist()}
    return {"id": f"req-{seed}", "inputs": [tensor]}


def test_concurrent_callers_each_get_exactly_their_own_answer(folder: Path) -> None:
    alone = service(folder, None)
    batched = service(folder, BatchingConfig(max_batch_size=16, max_queue_delay_ms=5))
    requests = [request(seed) for seed in range(64)]
    want = [alone.infer_doc(r, "mlp") for r in requests]
    start = threading.Barrier(32)

    def call(doc: dict[str, Any]) -> dict[str, Any]:
        if int(doc["id"].split("-")[1]) < 32:
            start.wait(10)  # the first 32 arrive together
        return batched.infer_doc(doc, "mlp")

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(call, requests))
    for expected, answer in zip(want, got, strict=True):
        assert answer["id"] == expected["id"]
        for mine, theirs in zip(answer["outputs"], expected["outputs"], strict=True):
            assert (mine["name"], mine["shape"]) == (theirs["name"], theirs["shape"])
            # The same rows through the same kernels; only the GEMM's row count differs,
            # which can reorder nothing within a row's dot products: allow 1 ulp-ish slack.
            np.testing.assert_allclose(mine["data"], theirs["data"], rtol=1e-6, atol=1e-7)
    stats = batched.metadata("mlp")["parameters"]["dynamic_batching"]
    assert stats["merged_runs"] >= 1 and stats["merged_requests"] >= 2
    assert stats["runs"] < len(requests) and stats["queued"] == 0
    assert "dynamic_batching" not in alone.metadata("mlp")["parameters"]
    config = server_info.model_config(batched.metadata("mlp"))  # GET .../config, Triton's shape
    assert config["dynamic_batching"] == {
        "max_queue_delay_microseconds": 5000,
        "default_queue_policy": {"max_queue_size": 32},
        "parameters": {"max_batch_size": 16},
    }
    assert "dynamic_batching" not in server_info.model_config(alone.metadata("mlp"))


def test_requested_outputs_and_oversize_requests_still_follow_the_model(folder: Path) -> None:
    batched = service(folder, BatchingConfig(max_batch_size=128, max_queue_delay_ms=0))
    # the merged size is capped at the model's max_batch (64)
    assert batched.metadata("mlp")["parameters"]["dynamic_batching"]["max_batch_size"] == 64
    doc = request(3) | {"outputs": [{"name": "score"}]}
    answer = batched.infer_doc(doc, "mlp")
    assert [o["name"] for o in answer["outputs"]] == ["score"]
    big = np.zeros((65, FEATURES), dtype=np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [65, FEATURES], "data": big.tolist()}
    with pytest.raises(PayloadTooLarge, match="over this model's maximum of 64"):
        batched.infer_doc({"inputs": [tensor]}, "mlp")  # alone, refused by the pipeline


def test_a_graph_with_per_batch_scales_is_never_batched(tmp_path: Path) -> None:
    """A model imported already quantized: its manifest says no quantization, its graph holds
    DynamicQuantizeLinear (one activation scale over the whole run). Merged, one caller's
    rows would move another's answer, so the graph itself turns batching off."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    plain = tmp_path / "plain.onnx"
    plain.write_bytes(mlp().SerializeToString())
    quantized = tmp_path / "mlp" / "model.onnx"
    quantized.parent.mkdir()
    quantize_dynamic(str(plain), str(quantized), weight_type=QuantType.QInt8)
    data = quantized.read_bytes()
    assert b"DynamicQuantizeLinear" in data or b"DynamicQuantizeMatMul" in data
    write_manifest(quantized.parent)
    loaded = service(quantized.parent, BatchingConfig(max_batch_size=8))
    assert "dynamic_batching" not in loaded.metadata("mlp")["parameters"]
