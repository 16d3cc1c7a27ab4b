"""The SageMaker container in-process: the /ping contract, /invocations, V2 routes, sizing,
the model.tar.gz packing, the auto target rule and the proxy function's error mapping."""

from __future__ import annotations

import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving import protocol

from onnxlift.lockfile import read_pins
from tests.conftest import ROOT
from tests.sagemaker.conftest import wsgi_call

sys.path.insert(0, str(ROOT / "functions" / "sagemaker"))

import launcher
import wsgi
from onnxlift_serving.contract import Env
from onnxlift_serving.service import ModelService, ServiceConfig
from onnxlift_serving.sizing import cpu_worker_plan, estimate_session_bytes

BODY = {
    "id": "r1",
    "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a cat", "a dog"]}],
}


def call(
    app: wsgi.ContainerApp,
    method: str,
    path: str,
    body: bytes | str | dict | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """wsgi_call with a JSON body in and the JSON answer out."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body or b""
    raw = raw.encode() if isinstance(raw, str) else raw
    status, response_headers, payload = wsgi_call(app, method, path, raw, headers)
    return status, response_headers, json.loads(payload) if payload else None


def test_config_defaults_to_opt_ml_model_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    config = wsgi.config_from_env({})
    assert config.model_dir == Path("/opt/ml/model")
    assert config.providers == ("CUDAExecutionProvider",)
    assert config.source == "image"
    assert wsgi.config_from_env({"SM_MODEL_DIR": "/m", "ORT_PROVIDERS": "A,B"}).providers == (
        "A",
        "B",
    )


def test_ping_is_503_until_loaded_then_200_and_never_loads(artifact: Path) -> None:
    app = wsgi.ContainerApp(wsgi.config_from_env({"SM_MODEL_DIR": str(artifact)}))
    status, headers, doc = call(app, "GET", "/ping")
    assert status == 503 and "loading" in doc["error"] and headers["Retry-After"] == "5"
    assert app.service is None  # the ping did not start a load
    status, headers, doc = call(app, "POST", "/invocations", BODY)
    assert status == 503 and headers["Retry-After"] == "5"
    app.start_loading()
    assert app.wait_loaded(timeout=60)
    started = time.perf_counter()
    status, _, doc = call(app, "GET", "/ping")
    assert status == 200 and doc == {"status": "healthy", "model": "minilm"}
    assert time.perf_counter() - started < 0.05


def test_ping_answers_fast_while_the_model_loads(artifact: Path) -> None:
    app = wsgi.create_app({"SM_MODEL_DIR": str(artifact)})  # background load
    latencies = []
    while not app.ready:
        started = time.perf_counter()
        status, _, _ = call(app, "GET", "/ping")
        latencies.append(time.perf_counter() - started)
        assert status in (200, 503)
        time.sleep(0.005)
    assert max(latencies) < 0.5  # SageMaker allows 2 s


def test_ping_is_503_with_the_reason_when_the_model_cannot_load(tmp_path: Path) -> None:
    app = wsgi.create_app({"SM_MODEL_DIR": str(tmp_path)}, background=False)
    status, headers, doc = call(app, "GET", "/ping")
    assert status == 503 and "no manifest" in doc["error"] and headers["Retry-After"] == "5"
    status, headers, _ = call(app, "GET", "/v2/health/ready")
    assert status == 503 and headers["Retry-After"] == "5"


def test_invocations_equals_the_in_process_result(app: wsgi.ContainerApp, artifact: Path) -> None:
    status, headers, doc = call(app, "POST", "/invocations", BODY)
    assert status == 200 and headers["Content-Type"] == "application/json"
    expected = ModelService(
        ServiceConfig(name="minilm", version="1", model_dir=artifact, threads=1)
    ).infer(json.dumps(BODY), "minilm")
    assert doc == json.loads(protocol.dumps(expected))
    assert doc["model_version"] == "1" and doc["id"] == "r1"


def test_v2_routes_answer_like_the_lambda_path(app: wsgi.ContainerApp) -> None:
    assert call(app, "POST", "/v2/models/minilm/infer", BODY)[0] == 200
    assert call(app, "POST", "/v2/models/minilm/versions/1/infer", BODY)[0] == 200
    assert call(app, "GET", "/v2/health/live")[2] == {"live": True}
    assert call(app, "GET", "/v2/health/ready")[2] == {"ready": True}
    assert call(app, "GET", "/v2/models/minilm/ready")[2] == {"name": "minilm", "ready": True}
    status, _, meta = call(app, "GET", "/v2/models/minilm")
    assert status == 200 and meta["versions"] == ["1"]
    assert meta["parameters"]["providers"] == ["CPUExecutionProvider"]  # reported, no GPU here
    assert call(app, "GET", "/v2/models/other")[0] == 404
    assert call(app, "GET", "/v2/models/minilm/versions/9/ready")[0] == 404
    status, headers, _ = call(app, "DELETE", "/v2/models/minilm")
    assert status == 405 and headers["Allow"] == "GET"


def test_custom_attributes_select_the_operation(app: wsgi.ContainerApp) -> None:
    def invoke(attributes: str, body: Any = "{}") -> tuple[int, Any]:
        status, _, doc = call(
            app,
            "POST",
            "/invocations",
            body,
            {"X-Amzn-SageMaker-Custom-Attributes": attributes},
        )
        return status, doc

    assert invoke("onnxlift-route=metadata")[1]["name"] == "minilm"
    assert invoke("trace=abc; onnxlift-route=ready")[1] == {"name": "minilm", "ready": True}
    assert invoke("onnxlift-route=infer; onnxlift-version=1", BODY)[0] == 200
    assert invoke("onnxlift-route=infer; onnxlift-version=2", BODY)[0] == 404
    assert invoke("onnxlift-route=ready; onnxlift-model=bge")[0] == 404
    assert invoke("onnxlift-route=drop-tables")[0] == 400


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        ({"inputs": [{"name": "nope", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 422, ""),
        (b"x" * (6 * 1024 * 1024 + 10), 413, "limit"),
    ],
)
def test_errors_are_json_with_the_lambda_paths_codes(
    app: wsgi.ContainerApp, body: Any, status: int, fragment: str
) -> None:
    got, headers, doc = call(app, "POST", "/invocations", body)
    assert got == status and headers["Content-Type"] == "application/json"
    assert fragment in doc["error"]


# -- sizing and workers -----------------------------------------------------------------


def test_cpu_plan_one_worker_per_two_cores_capped_by_memory() -> None:
    gib = 1024**3
    assert cpu_worker_plan(cores=2, memory_bytes=8 * gib, model_bytes=30 * 2**20) == (1, 2)
    assert cpu_worker_plan(cores=16, memory_bytes=64 * gib, model_bytes=30 * 2**20) == (8, 2)
    # A 4 GB model: each worker needs ~10 GB; 32 GB holds two.
    assert cpu_worker_plan(cores=16, memory_bytes=32 * gib, model_bytes=4 * gib)[0] == 2
    assert estimate_session_bytes(0) > 0


def test_each_worker_gets_its_share_of_the_containers_memory(tmp_path: Path) -> None:
    """The arena cap (onnxlift_serving.session) of each worker: the cgroup's limit, where one
    is set, shared by the workers; an explicit ONNXLIFT_MEMORY_LIMIT_MB wins (0: no cap)."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       16777216 kB\n")
    assert launcher.memory_bytes(tmp_path) == 16 * 1024**3
    cgroup = tmp_path / "sys" / "fs" / "cgroup"
    cgroup.mkdir(parents=True)
    (cgroup / "memory.max").write_text("max\n")
    assert launcher.memory_bytes(tmp_path) == 16 * 1024**3
    (cgroup / "memory.max").write_text(f"{4 * 1024**3}\n")
    assert launcher.memory_bytes(tmp_path) == 4 * 1024**3
    plan = launcher.plan_workers(
        {}, cores=8, gpus=0, cuda=False, memory=4 * 1024**3, model_bytes=30 * 2**20
    )
    assert plan.workers == 4 and launcher.worker_memory_mb({}, plan, 4 * 1024**3) == "1024"
    explicit = {Env.MEMORY_LIMIT_MB: "0"}
    assert launcher.worker_memory_mb(explicit, plan, 4 * 1024**3) == "0"
    assert wsgi.config_from_env(explicit | {"MODEL_NAME": "m"}).memory_mb is None
    assert wsgi.config_from_env({"MODEL_NAME": "m", Env.MEMORY_LIMIT_MB: "1024"}).memory_mb == 1024


def test_gpu_plan_one_worker_per_gpu_and_overrides() -> None:
    plan = launcher.plan_workers(
        {}, cores=4, gpus=1, cuda=True, memory=16 * 1024**3, model_bytes=10**8
    )
    assert (plan.workers, plan.gpus, plan.threads) == (1, 1, 4)
    plan = launcher.plan_workers({}, cores=48, gpus=4, cuda=True, memory=2**38, model_bytes=10**8)
    assert (plan.workers, plan.ort_threads) == (4, 4)
    # GPUs present but an onnxruntime without CUDA: a CPU plan.
    plan = launcher.plan_workers({}, cores=4, gpus=1, cuda=False, memory=2**34, model_bytes=10**8)
    assert plan.gpus == 0 and plan.workers == 2
    plan = launcher.plan_workers(
        {"SAGEMAKER_WORKERS": "3", "SAGEMAKER_THREADS": "8"},
        cores=4,
        gpus=0,
        cuda=False,
        memory=2**34,
        model_bytes=10**8,
    )
    assert (plan.workers, plan.threads, plan.reason) == (3, 8, "SAGEMAKER_WORKERS")


def test_gpu_pinning_hooks_give_each_worker_its_own_device() -> None:
    class Worker:
        pid = 1

    class Server:
        def __init__(self) -> None:
            self.WORKERS: dict[int, Any] = {}

        class log:
            @staticmethod
            def info(*_: Any) -> None: ...

    server = Server()
    import os

    os.environ["ONNXLIFT_GPUS"] = "2"
    try:
        first, second = Worker(), Worker()
        launcher.pre_fork(server, first)
        server.WORKERS[1] = first
        launcher.pre_fork(server, second)
        assert (first.gpu_index, second.gpu_index) == (0, 1)
    finally:
        os.environ.pop("ONNXLIFT_GPUS")


def test_gunicorn_settings_never_preload_and_stay_under_sagemaker_limits() -> None:
    plan = launcher.Plan(workers=2, threads=4, ort_threads=2, gpus=0, reason="")
    settings = launcher.settings(plan, bind="0.0.0.0:8080", graceful_s=20, access_log=False)
    assert settings["preload_app"] is False
    assert settings["worker_class"] == "gthread"
    assert settings["timeout"] <= 60 and settings["graceful_timeout"] == 20
    assert settings["bind"] == ["0.0.0.0:8080"]


def test_gpu_count_reads_device_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert launcher.gpu_count(tmp_path) == 2
    assert launcher.gpu_count(tmp_path / "missing") == 0


# -- model.tar.gz --------------------------------------------------------------------------


def test_pack_puts_files_at_the_archive_root_reproducibly(artifact: Path, tmp_path: Path) -> None:
    from onnxlift.sagemaker_artifact import pack_model, unpack_model

    first = pack_model(artifact, tmp_path / "a" / "model.tar.gz")
    second = pack_model(artifact, tmp_path / "b" / "model.tar.gz")
    assert first["sha256"] == second["sha256"]
    assert first["key"] == "models/minilm/1/model.tar.gz"
    with tarfile.open(tmp_path / "a" / "model.tar.gz") as tar:
        names = tar.getnames()
    assets = json.loads((artifact / "manifest.json").read_text())["assets"]
    assert "tokenizer.json" in assets  # (and parity.json in a build made since it existed)
    assert names == sorted(["manifest.json", "model.onnx", *(f"assets/{a}" for a in assets)])
    unpacked = unpack_model(tmp_path / "a" / "model.tar.gz", tmp_path / "opt-ml-model")
    from onnxlift_serving.artifact import load_artifact

    assert load_artifact(unpacked).version == "1"


def test_pack_refuses_an_unpublished_build(minilm_build: Any, tmp_path: Path) -> None:
    from onnxlift.errors import OnnxliftError
    from onnxlift.sagemaker_artifact import pack_model

    with pytest.raises(OnnxliftError, match="publish"):
        pack_model(minilm_build.folder, tmp_path / "model.tar.gz")


# -- target = "auto" -------------------------------------------------------------------------


def test_auto_target_rule() -> None:
    from onnxlift.targeting import decide_target

    mb = 2**20
    small = decide_target("auto", model_bytes=30 * mb)
    assert small.target == "lambda" and small.estimated_memory_mb < 300
    assert decide_target("auto", model_bytes=3 * 1024 * mb).target == "sagemaker"  # > 2 GiB
    big = decide_target("auto", model_bytes=1900 * mb)
    assert big.target == "lambda"  # 2.5 x 1.9 GB + 150 MB < 8 GB
    assert decide_target("auto", model_bytes=10 * mb, requires_gpu=True).target == "sagemaker"
    assert decide_target("sagemaker", model_bytes=mb).reason.startswith("declared")
    with pytest.raises(ValueError):
        decide_target("ec2", model_bytes=mb)


# -- the image -------------------------------------------------------------------------------

DOCKERFILE = ROOT / "functions" / "sagemaker" / "Dockerfile"


def test_requirements_are_the_gpu_serving_runtime_only() -> None:
    lines = (DOCKERFILE.parent / "requirements.in").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    assert set(pins) == {"onnxruntime-gpu", "numpy", "tokenizers", "orjson", "gunicorn"}
    assert pins["onnxruntime-gpu"] == "1.31.1"  # CUDA 13 + cuDNN 9 wheels
    locked = read_pins(DOCKERFILE.parent / "requirements.txt")
    assert locked["onnxruntime-gpu"].version == "1.31.1" and "onnxruntime" not in locked


def test_dockerfile_is_the_byoc_contract_on_a_cuda_runtime_base() -> None:
    text = DOCKERFILE.read_text()
    assert "FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04" in text
    assert 'ENTRYPOINT ["serve"]' in text and "EXPOSE 8080" in text
    assert "USER 10001" in text
    assert "COPY layers/runtime/onnxlift_serving/" in text  # the shared runtime, not a copy
