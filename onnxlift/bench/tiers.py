"""The request path in tiers, each one adding a layer to the one before:

floor     session.run on tensors already prepared (what onnxruntime alone costs)
prep_run  tokenizer + session.run (the serving pipeline's `run`)
v2        ModelService.infer + json.dumps: V2 decode, validation, run, encode, no powertools
handler   the real Lambda handler on an API Gateway proxy event: powertools, JSON decode,
          V2 validation, run, JSON encode, metrics
http      an HTTP request through the local API gateway to the local Lambda runtime
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from onnxlift_serving import protocol
from onnxlift_serving.contract import infer_path, sandbox_environment, serving_environment

from onnxlift.bench.corpus import batch, v2_body
from onnxlift.bench.timing import measure_interleaved

TIERS = {
    "floor": "session.run (floor)",  # on tensors already prepared: onnxruntime alone
    "prep_run": "pre-processing + run",  # tokenizer + session.run: the pipeline's `run`
    "v2": "V2 decode/validate/run/encode (no powertools)",  # ModelService.infer + json.dumps
    "handler": "Lambda handler (API Gateway event)",  # the real one: powertools, metrics
    "http": "HTTP via local gateway",  # through the local gateway to the local Lambda runtime
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
_sink: Any = None


def _devnull() -> Any:
    """One /dev/null handle kept open: powertools' Logger keeps the stream it was created with."""
    global _sink
    if _sink is None:
        _sink = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return _sink


def load_pipeline(artifact_folder: Path, model: Path | None = None, *, threads: int) -> Any:
    """The serving pipeline exactly as the handler builds it, optionally on another model file."""
    from onnxlift_serving.artifact import load_artifact
    from onnxlift_serving.pipelines import build_pipeline
    from onnxlift_serving.session import create_session

    artifact = load_artifact(artifact_folder)
    return build_pipeline(artifact, create_session(model or artifact.model_path, threads=threads))


def pipeline_calls(pipeline: Any, texts: list[str]) -> dict[str, Callable[[], Any]]:
    """floor and prep_run for one batch: the same texts, the same session."""
    feeds = pipeline.prepare(texts)
    output = pipeline.graph_output
    tensor = {pipeline.text_input: np.array(texts, dtype=object)}
    return {
        "floor": lambda: pipeline.session.run([output], feeds),
        "prep_run": lambda: pipeline.run(tensor),
    }


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def sandbox_env(artifact_folder: Path, *, threads: int) -> dict[str, str]:
    """The environment of a Lambda sandbox at 2,048 MB with this artifact baked in."""
    manifest = json.loads((artifact_folder / "manifest.json").read_text())
    name = str(manifest["name"])
    return serving_environment(
        name=name,
        version=str(manifest["version"]),
        source="image",
        model_dir=str(artifact_folder),
        threads=threads,
    ) | sandbox_environment(name, 2048)


def load_handler_module(handler_path: Path, artifact_folder: Path, *, threads: int) -> Any:
    """Import the real handler as a Lambda sandbox would, the model baked in at artifact_folder."""
    from onnxlift.local.lambda_runtime import load_handler

    settings = sandbox_env(artifact_folder, threads=threads)
    sys.modules.pop("handler", None)
    with _env(settings), contextlib.redirect_stdout(_devnull()):
        load_handler(handler_path)
        module = sys.modules.pop("handler")
    if not module.service.ready:
        raise RuntimeError(f"the handler could not load its model: {module.service.load_error}")
    return module


def handler_call(module: Any, name: str, texts: list[str]) -> Callable[[], dict[str, Any]]:
    """One invocation of the handler on the event the local gateway builds for this request."""
    from onnxlift.local.gateway import FunctionTarget, GatewayConfig, build_event
    from onnxlift.local.lambda_runtime import LocalContext

    path = infer_path(name)
    config = GatewayConfig(
        api_key="bench",
        functions={name: FunctionTarget(name, "127.0.0.1", 0)},
        default_function=name,
    )
    event = build_event(
        method="POST",
        path=path,
        query="",
        headers={"content-type": "application/json", "x-api-key": "bench"},
        body=v2_body(texts).encode(),
        resource=path,
        path_parameters={},
        config=config,
        source_ip="127.0.0.1",
        api_key="bench",
    )

    def call() -> dict[str, Any]:
        return module.lambda_handler(event, LocalContext(f"onnxlift-{name}", 2048, 29))

    return call


class GatewayClient:
    """Keep-alive HTTP to the local gateway; refuses anything but loopback."""

    def __init__(self, url: str, api_key: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.hostname not in LOOPBACK:
            raise ValueError(f"refusing a non-loopback gateway URL: {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.headers = {"x-api-key": api_key, "content-type": "application/json"}
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def post(self, path: str, body: str) -> bytes:
        self.connection.request("POST", path, body, self.headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status} from {path}: {data[:200]!r}")
        return data

    def close(self) -> None:
        self.connection.close()


def run_tiers(
    *,
    name: str,
    artifact_folder: Path,
    handler_path: Path,
    sentences: list[str],
    batch_sizes: tuple[int, ...],
    warmup: int,
    repeat: int,
    budget_s: float,
    threads: int = 1,
    gateway: tuple[str, str] | None = None,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Every tier at every batch size on the same texts; `gateway` = (url, api key) adds http."""
    pipeline = load_pipeline(artifact_folder, threads=threads)
    module = load_handler_module(handler_path, artifact_folder, threads=threads)
    client = GatewayClient(*gateway) if gateway else None
    results: dict[str, Any] = {"threads": threads, "batches": {}}
    try:
        for size in batch_sizes:
            texts = batch(sentences, size)
            calls = pipeline_calls(pipeline, texts)
            invoke = handler_call(module, name, texts)
            with contextlib.redirect_stdout(_devnull()):
                first = invoke()
            if first.get("statusCode") != 200:
                raise RuntimeError(
                    f"handler answered {first.get('statusCode')}: {first.get('body')}"
                )
            body = v2_body(texts)
            calls["v2"] = lambda body=body: protocol.dumps(module.service.infer(body, name))
            calls["handler"] = invoke
            if client is not None:
                path = infer_path(name)
                calls["http"] = lambda body=body, path=path: client.post(path, body)
            row: dict[str, Any] = {
                "texts": size,
                "sequence_length": int(pipeline.prepare(texts)["input_ids"].shape[1]),
            }
            # The handler's metrics go to stdout as CloudWatch EMF lines, as on Lambda; here
            # they go to /dev/null so the bench's own output stays readable. The tiers are
            # timed round-robin, so drift on a shared machine does not favour one of them.
            with contextlib.redirect_stdout(_devnull()):
                row |= measure_interleaved(calls, warmup=warmup, repeat=repeat, budget_s=budget_s)
            results["batches"][str(size)] = row
            report(
                f"  tiers {name} batch {size}: "
                + ", ".join(f"{t} {row[t]['p50']:.2f}" for t in TIERS if t in row)
                + " ms p50"
            )
    finally:
        if client is not None:
            client.close()
    return results
