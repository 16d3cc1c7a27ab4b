"""The serving code as the bench drives it: a build's model files staged as artifacts, the
serving pipeline, the real Lambda handler in-process, and HTTP to the local gateway."""

from __future__ import annotations

import contextlib
import functools
import http.client
import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from unittest import mock
from urllib.parse import urlsplit

import numpy as np
from onnxlift_serving import contract, layout
from onnxlift_serving.artifact import sha256_file

from onnxlift.bench.corpus import v2_body

MEMORY_MB = 2048  # the function as deployed: one vCPU, so one intra-op thread
TIMEOUT_S = contract.API_GATEWAY_TIMEOUT_S
API_KEY, LOCAL = "bench", "127.0.0.1"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    path: Path
    parity_key: str | None  # the build manifest's parity entry measured on this very file


def onnx_variants(build: Path) -> list[Variant]:
    """The build's ONNX files, the served INT8 first; fused FP32 went through the optimizer
    that precedes quantization: the fair FP32 to compare with."""
    fused, plain = build / "work" / "model.fp32.fused.onnx", build / "work" / "model.fp32.onnx"
    variants = [Variant("int8", "INT8 ONNX (served)", build / layout.MODEL_FILE, "int8")]
    variants.append(Variant("fp32_fused", "FP32 ONNX, fused (same optimizer)", fused, None))
    variants.append(Variant("fp32", "FP32 ONNX, plain export", plain, "fp32"))
    return [v for v in variants if v.path.is_file()]


def stage_artifact(build: Path, model: Path, dest: Path) -> Path:
    """An artifact folder around `model` (linked) that load_artifact accepts; the assets are
    copied, as load_artifact refuses assets that resolve outside the folder."""
    manifest = json.loads((build / layout.MANIFEST_FILE).read_text())
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / layout.MODEL_FILE).symlink_to(model.resolve())
    shutil.copytree(build / layout.ASSETS_DIR, dest / layout.ASSETS_DIR)
    # version 1: a staged copy is served as a baked-in version, and versions are whole numbers
    manifest |= {"version": "1", "sha256": sha256_file(model), "bytes": model.stat().st_size}
    (dest / layout.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return dest


def load_pipeline(artifact_folder: Path, model: Path | None = None, *, threads: int) -> Any:
    """The serving pipeline exactly as the handler builds it, optionally on another model file."""
    from onnxlift_serving.artifact import load_artifact
    from onnxlift_serving.pipelines import build_pipeline
    from onnxlift_serving.session import create_session, optimization_for

    artifact = load_artifact(artifact_folder)
    # another model file is some other graph: the optimizer runs on it
    level = optimization_for(artifact.manifest if model is None else {}, [])
    session = create_session(model or artifact.model_path, threads=threads, optimization=level)
    return build_pipeline(artifact, session)


def run_call(pipeline: Any, texts: list[str]) -> Callable[[], Any]:
    """The pipeline's run (pre-processing + session.run) on these texts."""
    tensor = {pipeline.text_input: np.array(texts, dtype=object)}
    return lambda: pipeline.run(tensor)


@functools.cache
def devnull() -> TextIO:
    """One /dev/null handle kept open: powertools' Logger keeps the stream it was created with."""
    return open(os.devnull, "w")  # lives as long as the process


def sandbox_env(artifact_folder: Path, *, threads: int) -> dict[str, str]:
    """The environment of a Lambda sandbox with this artifact baked in."""
    manifest = json.loads((artifact_folder / layout.MANIFEST_FILE).read_text())
    name, version, folder = str(manifest["name"]), str(manifest["version"]), str(artifact_folder)
    env = contract.serving_environment(
        name=name, version=version, source="image", model_dir=folder, threads=threads
    )
    return env | contract.sandbox_environment(name, MEMORY_MB)


def load_handler_module(handler: Path, artifact_folder: Path) -> Any:
    """Import the real handler as a Lambda sandbox would, the model baked in at artifact_folder."""
    from onnxlift.local.lambda_runtime import load_handler

    sys.modules.pop("handler", None)
    env = sandbox_env(artifact_folder, threads=1)
    with mock.patch.dict(os.environ, env), contextlib.redirect_stdout(devnull()):
        load_handler(handler)
        module = sys.modules.pop("handler")
    if not module.service.ready:
        raise RuntimeError(f"the handler could not load its model: {module.service.load_error}")
    return module


def api_event(name: str, texts: list[str]) -> dict[str, Any]:
    """The API Gateway proxy event the local gateway builds for an infer request of `texts`."""
    from onnxlift.local.gateway import FunctionTarget, GatewayConfig, build_event

    path, headers = contract.infer_path(name), {"content-type": contract.JSON_CONTENT_TYPE}
    return build_event(
        method="POST",
        path=path,
        query="",
        headers=headers | {"x-api-key": API_KEY},
        body=v2_body(texts).encode(),
        resource=path,
        path_parameters={},
        config=GatewayConfig(API_KEY, {name: FunctionTarget(name, LOCAL, 0)}, name),
        source_ip=LOCAL,
        api_key=API_KEY,
    )


def handler_call(module: Any, name: str, texts: list[str]) -> Callable[[], dict[str, Any]]:
    """One invocation of the loaded handler on the event for these texts. Its context comes
    from a ring made beforehand (each its own request id): Lambda's runtime builds the context
    before it calls the handler, so that is not the handler's time. (Their remaining time
    counts from when the ring was made: the inference handler never reads it.)"""
    from onnxlift.local.lambda_runtime import LocalContext

    event, function = api_event(name, texts), contract.function_name(name)
    contexts = itertools.cycle([LocalContext(function, MEMORY_MB, TIMEOUT_S) for _ in range(64)])
    return lambda: module.lambda_handler(event, next(contexts))


class GatewayClient:
    """Keep-alive HTTP to the local gateway; refuses anything but loopback."""

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        if parts.hostname not in (LOCAL, "localhost", "::1"):
            raise ValueError(f"refusing a non-loopback gateway URL: {url}")
        self.headers = {"x-api-key": api_key, "content-type": contract.JSON_CONTENT_TYPE}
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)

    def post(self, path: str, body: str) -> bytes:
        self.connection.request("POST", path, body, self.headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} from {path}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.connection.close()
