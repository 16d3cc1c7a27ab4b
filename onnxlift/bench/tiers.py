"""The request path in tiers, each one adding a layer to the one before (TIERS, in order)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from onnxlift_serving import protocol
from onnxlift_serving.contract import infer_path

from onnxlift.bench import serving
from onnxlift.bench.corpus import v2_body
from onnxlift.bench.timing import Plan

TIERS = {
    "floor": "session.run (floor)",  # on tensors already prepared: onnxruntime alone
    "prep_run": "pre-processing + run",  # tokenizer + session.run: the pipeline's `run`
    "v2": "V2 decode/validate/run/encode (no powertools)",  # ModelService.infer + json.dumps
    "handler": "Lambda handler (API Gateway event)",  # the real one: powertools, metrics
    "http": "HTTP via local gateway",  # the gateway, then a sandbox of the local Lambda service
}


def run_tiers(
    plan: Plan, name: str, artifact: Path, handler: Path, gateway: tuple[str, str]
) -> dict[str, Any]:
    """Every tier at every batch size on the same texts, one thread; `gateway`: the local
    stack's (url, api key), for http."""
    pipeline = serving.load_pipeline(artifact, threads=1)
    module = serving.load_handler_module(handler, artifact)
    client, path = serving.GatewayClient(*gateway), infer_path(name)

    def row(texts: list[str]) -> dict[str, Any]:
        feeds, output, body = pipeline.prepare(texts), pipeline.graph_output, v2_body(texts)
        invoke = serving.handler_call(module, name, texts)
        # The handler's metrics go to stdout as CloudWatch EMF lines, as on Lambda; here to
        # /dev/null so the bench's own output stays readable.
        with contextlib.redirect_stdout(serving.devnull()):
            if (first := invoke()).get("statusCode") != 200:
                status, answer = first.get("statusCode"), first.get("body")
                raise RuntimeError(f"handler answered {status}: {answer}")
            times = plan.timed(
                {
                    "floor": lambda: pipeline.session.run([output], feeds),
                    "prep_run": serving.run_call(pipeline, texts),
                    "v2": lambda: protocol.dumps(module.service.infer(body, name)),
                    "handler": invoke,
                    "http": lambda: client.post(path, body),
                }
            )
        return {"texts": len(texts), "sequence_length": int(feeds["input_ids"].shape[1])} | times

    try:
        return {"threads": 1, "batches": plan.per_batch(f"tiers {name}", row)}
    finally:
        client.close()
