"""onnxruntime session creation with explicit threads and a checked provider choice."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

# Lambda gives one vCPU per 1,769 MB of memory, six at most; onnxruntime would size its pool
# from the host's cores instead, oversubscribing the sandbox's CPU share.
LAMBDA_MB_PER_VCPU = 1769
LAMBDA_MAX_VCPUS = 6


def threads_for_memory(memory_mb: int) -> int:
    return max(1, min(LAMBDA_MAX_VCPUS, memory_mb // LAMBDA_MB_PER_VCPU))


def default_threads() -> int:
    """ORT_INTRA_OP_THREADS if set, else what the Lambda memory size buys, else the cores."""
    if explicit := os.environ.get("ORT_INTRA_OP_THREADS"):
        return max(1, int(explicit))
    if memory := os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"):
        return threads_for_memory(int(memory))
    return max(1, len(os.sched_getaffinity(0)))


def choose_providers(preferred: list[str] | None = None) -> list[str]:
    """The preferred providers this onnxruntime build has, always ending with CPU."""
    available = set(ort.get_available_providers())
    chosen = [p for p in (preferred or []) if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def create_session(
    model_path: Path, *, threads: int, providers: list[str] | None = None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(
        str(model_path), sess_options=options, providers=choose_providers(providers)
    )
