"""What one request may make: onnxruntime's arena is capped to the function's memory, and a
request over it (or an answer too large to send) is a 413, never a 500 or a killed sandbox.

Real onnxruntime throughout. The cap is process-wide and set once, so the capped service runs
in a real local Lambda sandbox (its own process) with AWS_LAMBDA_FUNCTION_MEMORY_SIZE as Lambda
sets it; the tests in this process use uncapped sessions only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving import binary
from onnxlift_serving.contract import (
    SERVING_RESERVE_MB,
    Env,
    memory_limit_mb,
    sandbox_environment,
    serving_environment,
)
from onnxlift_serving.errors import PayloadTooLarge
from onnxlift_serving.pipelines import run_session
from onnxlift_serving.service import ModelService, ServiceConfig
from onnxlift_serving.session import (
    MIB,
    ModelTooLarge,
    arena_bytes,
    arena_limit,
    create_session,
    is_allocation_failure,
)

from onnxlift.local.lambda_service import FunctionConfig, FunctionPool
from tests.conftest import HANDLER, load_event

MEMORY_MB = 512  # the sandbox's function memory: the arena gets 512 - 256 MiB less the weights


def sized_by_input(extra_weights: int = 0, fill: float = 1.0) -> onnx.ModelProto:
    """y = ConstantOfShape(shape): the request says how large y is. `extra_weights` bytes of
    an initializer added to y's first element make the file (and its weights) that large."""
    nodes = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["y" if not extra_weights else "ones"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [fill]),
        )
    ]
    initializers = []
    if extra_weights:
        weights = np.zeros(extra_weights // 4, np.float32)
        initializers.append(numpy_helper.from_array(weights, "w"))
        nodes += [
            helper.make_node("ReduceSum", ["w"], ["s"], keepdims=0),
            helper.make_node("Add", ["ones", "s"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "sized_by_input",
        [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", "C"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_artifact(folder: Path, model: onnx.ModelProto) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    manifest = {
        "name": "grow",
        "version": "1",
        "task": "tensor",
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_batch": 64,
        "inputs": [{"name": "shape", "datatype": "INT64", "shape": [2]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def shape_body(rows: int, cols: int, **parameters: Any) -> dict[str, Any]:
    tensor = {"name": "shape", "datatype": "INT64", "shape": [2], "data": [rows, cols]}
    return {"inputs": [tensor], **({"parameters": parameters} if parameters else {})}


# -- in this process: uncapped sessions -----------------------------------------------------
def test_the_arena_cap_leaves_the_reserve_and_the_weights_out() -> None:
    assert arena_bytes(1024, 30 * MIB) == (1024 - SERVING_RESERVE_MB - 30) * MIB
    with pytest.raises(ModelTooLarge, match=r"raise serving\.memory_mb to at least 521"):
        arena_bytes(512, 100 * MIB)  # 156 MiB left: not the packed copy and a request


def test_the_memory_limit_is_lambdas_unless_set_explicitly() -> None:
    lambda_env = {Env.LAMBDA_MEMORY: "1024"}
    assert memory_limit_mb(lambda_env) == 1024
    assert memory_limit_mb(lambda_env | {Env.MEMORY_LIMIT_MB: "700"}) == 700
    assert memory_limit_mb(lambda_env | {Env.MEMORY_LIMIT_MB: "0"}) is None  # no cap
    assert memory_limit_mb({}) is None and memory_limit_mb({Env.LAMBDA_MEMORY: "x"}) is None
    assert ServiceConfig.from_env({Env.MODEL_NAME: "m", **lambda_env}).memory_mb == 1024


def test_weights_over_the_budget_fail_at_load_with_a_clear_message(tmp_path: Path) -> None:
    folder = write_artifact(tmp_path / "big", sized_by_input(extra_weights=40 * MIB))
    before = arena_limit()  # another test in this process may have capped it already
    with pytest.raises(ModelTooLarge, match=r"weights \(40 MiB\) do not fit a 320 MiB"):
        create_session(folder / "model.onnx", memory_mb=320)
    assert arena_limit() == before  # refused before any cap was registered or changed
    service = ModelService(ServiceConfig(name="grow", version="1", model_dir=folder, memory_mb=320))
    assert not service.ready and "do not fit a 320 MiB function" in str(service.load_error)


def test_an_allocation_the_machine_cannot_make_is_413_not_422() -> None:
    """Uncapped, onnxruntime's arena refuses 4 TB at once: the request's size, not its values."""
    session = create_session(sized_by_input().SerializeToString())
    (y,) = run_session(session, ["y"], {"shape": np.array([2, 3], np.int64)})
    assert y.shape == (2, 3)
    with pytest.raises(PayloadTooLarge, match="needs more memory than") as caught:
        run_session(session, ["y"], {"shape": np.array([1_000_000, 1_000_000], np.int64)})
    assert caught.value.status == 413
    assert is_allocation_failure("... Available memory of 0 is smaller than requested bytes")
    assert not is_allocation_failure("Non-zero status code returned while running Add node")


@pytest.fixture(scope="module")
def uncapped(tmp_path_factory: pytest.TempPathFactory) -> ModelService:
    folder = write_artifact(tmp_path_factory.mktemp("grow"), sized_by_input())
    return ModelService(ServiceConfig(name="grow", version="1", model_dir=folder))


@pytest.mark.parametrize("binary_output", [False, True])
def test_an_answer_over_the_response_limit_is_413_before_it_is_encoded(
    uncapped: ModelService, binary_output: bool
) -> None:
    body = json.dumps(shape_body(1000, 2000, binary_data_output=binary_output)).encode()
    with pytest.raises(PayloadTooLarge, match="response limit") as caught:
        binary.serve_infer(uncapped, body, name="grow", version=None)
    assert "at least 8000000 bytes" in caught.value.message or binary_output
    small = binary.serve_infer(
        uncapped, json.dumps(shape_body(2, 3)).encode(), name="grow", version=None
    )
    assert json.loads(small.body)["outputs"][0]["data"] == [1.0] * 6


def test_an_answer_whose_json_outgrows_the_estimate_is_413_after_encoding(
    tmp_path: Path,
) -> None:
    """1/3 as float32 prints as 0.33333334: 11 bytes a value where the estimate before
    encoding counts 4, so only the encoded body's size tells."""
    folder = write_artifact(tmp_path / "grow", sized_by_input(fill=1 / 3))
    service = ModelService(ServiceConfig(name="grow", version="1", model_dir=folder))
    body = json.dumps(shape_body(1000, 1000)).encode()  # 4 MB estimated, 11 MB encoded
    with pytest.raises(PayloadTooLarge, match="the answer takes") as caught:
        binary.serve_infer(service, body, name="grow", version=None)
    assert "over the 6225920-byte response limit" in caught.value.message
    as_binary = json.dumps(shape_body(1000, 1000, binary_data_output=True)).encode()
    reply = binary.serve_infer(service, as_binary, name="grow", version=None)
    assert reply.header_length is not None  # 4 MB raw, 5.3 MB in base64: within the limit


def test_a_memory_error_anywhere_in_a_request_is_413(
    uncapped: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """numpy outside onnxruntime raising MemoryError (stood in for by the pipeline here)."""
    pipeline = uncapped.resolve("grow").pipeline

    def exhausted(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.empty(1 << 62, np.uint8)}  # numpy's own MemoryError, not raised by hand

    monkeypatch.setattr(pipeline, "run", exhausted)
    with pytest.raises(PayloadTooLarge, match="needs more memory than"):
        binary.serve_infer(
            uncapped, json.dumps(shape_body(2, 3)).encode(), name="grow", version=None
        )


# -- in a real local Lambda sandbox: the capped arena ----------------------------------------
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPool]:
    folder = write_artifact(tmp_path_factory.mktemp("sandbox") / "model", sized_by_input())
    env = serving_environment(name="grow", version="1", model_dir=str(folder), threads=1)
    pool = FunctionPool(
        FunctionConfig(
            name="grow",
            handler=HANDLER,
            env=env | sandbox_environment("grow", MEMORY_MB),
            memory_mb=MEMORY_MB,
            timeout_s=30,
            concurrency=1,
            log=folder.parent / "sandbox.log",
        )
    )
    pool.prestart()
    try:
        pool.wait_ready()
        yield pool
    finally:
        pool.stop()


def invoke(pool: FunctionPool, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    path = "/v2/models/grow/infer"
    event = load_event("infer", path=path, resource=path, body=json.dumps(body))
    reply = pool.invoke(json.dumps(event).encode())
    result = json.loads(reply.body)
    assert "errorMessage" not in result, result  # the handler answered, it did not crash
    return result["statusCode"], json.loads(result["body"])


def peak_rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


def test_a_request_over_the_cap_is_413_and_the_sandbox_answers_the_next(
    sandbox: FunctionPool,
) -> None:
    (pid,) = sandbox.describe()["pids"]
    status, body = invoke(sandbox, shape_body(2, 3))
    assert status == 200 and body["outputs"][0]["data"] == [1.0] * 6
    # 400 MB of output: it would fit the machine (malloc overcommits), not the 512 MiB function
    status, body = invoke(sandbox, shape_body(1000, 100_000))
    assert status == 413, body
    allowed = MEMORY_MB - SERVING_RESERVE_MB - 1  # less the (tiny) weights, rounded down
    assert f"the {allowed} MiB a request may use; send fewer" in body["error"]
    # 13.5 G elements: refused the same way, at once
    status, _ = invoke(sandbox, shape_body(135_000, 100_000))
    assert status == 413
    status, body = invoke(sandbox, shape_body(100, 1000))  # 400 KB: within the budget
    assert status == 200 and len(body["outputs"][0]["data"]) == 100_000
    assert sandbox.describe()["pids"] == [pid]  # the same process answered throughout
    assert peak_rss_mb(pid) < MEMORY_MB
