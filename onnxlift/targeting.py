"""`serving.target = "auto"`: Lambda when the model fits Lambda with room to spare, else SageMaker.

Thresholds (Lambda's limits from the AWS documentation, the estimate from
onnxlift_serving.sizing, measured on MiniLM):

* artifact (model.onnx) over 2 GiB -> sagemaker. A single ONNX protobuf file cannot be
  larger, and Lambda's 10 s init phase has to read it and create the session; the 10 GB
  image limit is never the binding one.
* estimated session memory over 80% of Lambda's 10,240 MB (8,192 MB) -> sagemaker. The
  rest is for request and response buffers (6 MB payloads, decoded to numpy) and Python.
* the spec asks for a GPU -> sagemaker (Lambda has none).
Otherwise lambda, with the memory the estimate needs (at least the spec's memory_mb).
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxlift_serving.contract import LAMBDA_MEMORY_MB
from onnxlift_serving.sizing import MB, estimate_session_bytes

LAMBDA_MAX_MEMORY_MB = LAMBDA_MEMORY_MB[1]
LAMBDA_MEMORY_HEADROOM = 0.8
LAMBDA_MAX_ARTIFACT_BYTES = 2 * 1024 * MB
LAMBDA_MAX_SESSION_BYTES = int(LAMBDA_MAX_MEMORY_MB * LAMBDA_MEMORY_HEADROOM) * MB


@dataclass(frozen=True)
class TargetDecision:
    target: str  # "lambda" or "sagemaker"
    reason: str  # one line for `onnxlift list`
    estimated_memory_mb: int


def decide_target(declared: str, *, model_bytes: int, requires_gpu: bool = False) -> TargetDecision:
    """Where a model goes: `declared` wins unless it is "auto"."""
    estimate_mb = -(-estimate_session_bytes(model_bytes) // MB)  # rounded up
    size_mb = model_bytes / MB
    if declared in ("lambda", "sagemaker"):
        return TargetDecision(
            declared, f"declared in the spec (target = {declared!r})", estimate_mb
        )
    if declared != "auto":
        raise ValueError(f"target {declared!r} is not lambda, sagemaker or auto")
    if requires_gpu:
        return TargetDecision("sagemaker", "auto: the spec asks for a GPU", estimate_mb)
    if model_bytes > LAMBDA_MAX_ARTIFACT_BYTES:
        return TargetDecision(
            "sagemaker",
            f"auto: model.onnx is {size_mb:,.0f} MB, over Lambda's "
            f"{LAMBDA_MAX_ARTIFACT_BYTES // MB:,} MB artifact threshold",
            estimate_mb,
        )
    if estimate_mb * MB > LAMBDA_MAX_SESSION_BYTES:
        return TargetDecision(
            "sagemaker",
            f"auto: estimated session memory {estimate_mb:,} MB is over "
            f"{LAMBDA_MAX_SESSION_BYTES // MB:,} MB (80% of Lambda's {LAMBDA_MAX_MEMORY_MB:,} MB)",
            estimate_mb,
        )
    return TargetDecision(
        "lambda",
        f"auto: {size_mb:,.0f} MB model, estimated {estimate_mb:,} MB session fits Lambda",
        estimate_mb,
    )
