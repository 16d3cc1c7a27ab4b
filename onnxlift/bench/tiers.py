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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from onnxlift_serving import protocol
from onnxlift_serving.contract import infer_path

from onnxlift.bench.corpus import batch, v2_body
from onnxlift.bench.serving import (
    GatewayClient,
    devnull,
    handler_call,
    load_handler_module,
    load_pipeline,
)
from onnxlift.bench.timing import measure_interleaved

TIERS = {
    "floor": "session.run (floor)",  # on tensors already prepared: onnxruntime alone
    "prep_run": "pre-processing + run",  # tokenizer + session.run: the pipeline's `run`
    "v2": "V2 decode/validate/run/encode (no powertools)",  # ModelService.infer + json.dumps
    "handler": "Lambda handler (API Gateway event)",  # the real one: powertools, metrics
    "http": "HTTP via local gateway",  # through the local gateway to the local Lambda runtime
}


def pipeline_calls(pipeline: Any, texts: list[str]) -> dict[str, Callable[[], Any]]:
    """floor and prep_run for one batch: the same texts, the same session."""
    feeds = pipeline.prepare(texts)
    output = pipeline.graph_output
    tensor = {pipeline.text_input: np.array(texts, dtype=object)}
    return {
        "floor": lambda: pipeline.session.run([output], feeds),
        "prep_run": lambda: pipeline.run(tensor),
    }


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
    module = load_handler_module(handler_path, artifact_folder)
    client = GatewayClient(*gateway) if gateway else None
    results: dict[str, Any] = {"threads": threads, "batches": {}}
    try:
        for size in batch_sizes:
            texts = batch(sentences, size)
            calls = pipeline_calls(pipeline, texts)
            invoke = handler_call(module, name, texts)
            with contextlib.redirect_stdout(devnull()):
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
            with contextlib.redirect_stdout(devnull()):
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
