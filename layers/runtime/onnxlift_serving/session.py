"""The one way onnxlift opens an onnxruntime session.

Build parity, the Lambda handler, the SageMaker container, the local stack, bench and
`onnxlift add` all call `create_session`, so a model is measured with exactly the settings it
is served with. tests/serving/test_session_policy.py fails if any code opens a session otherwise.

Integer kernels: on x86 CPUs without VNNI, onnxruntime's default u8 x s8 kernel saturates
pairs of products at 16 bits (vpmaddubsw), so the same INT8 model answers differently on AVX2
and on AVX-512 VNNI machines (MiniLM: min cosine 0.97 against 0.99). `INTEGER_KERNEL_CONFIG`
turns on onnxruntime's exact path there (s8 weights moved to u8 at session creation, U8U8
kernels); on VNNI and arm64 CPUs, whose kernels sum exactly already, it changes nothing.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import onnxruntime as ort

from onnxlift_serving.contract import Env, threads_for_memory

__all__ = [
    "INTEGER_KERNEL_CONFIG",
    "choose_providers",
    "create_session",
    "default_threads",
    "integer_kernel_setting",
    "run_options",
    "session_options",
]

# onnxruntime's kOrtSessionOptionsAvx2PrecisionMode (onnxruntime_session_options_config_keys.h).
INTEGER_KERNEL_CONFIG: Final[dict[str, str]] = {"session.x64quantprecision": "1"}
# onnxruntime's kOrtRunOptionsConfigEnableMemoryArenaShrinkage: at the end of each run the CPU
# arena gives back what the run grew it by. Without it a sandbox keeps its largest request's
# activations for good (minilm: 155 MB at start, 1,141 MB after one batch of 64 x 256 tokens);
# with it, RSS is back at its start after such a batch. Cost, measured on minilm (1 thread,
# min / median ms): 2 x 12 tokens 7.7 / 18.0 default, 7.5 / 16.7 with it; 8 x 64 175 / 338
# and 165 / 338; 32 x 256 4,740 / 6,659 and 5,394 / 6,422 (turning the arena off instead
# cost 25-70% on the larger batches).
ARENA_SHRINKAGE_CONFIG: Final[dict[str, str]] = {"memory.enable_memory_arena_shrinkage": "cpu:0"}


def default_threads(env: Mapping[str, str] | None = None) -> int:
    """ORT_INTRA_OP_THREADS if set, else what the Lambda memory size buys, else the cores."""
    env = os.environ if env is None else env
    if explicit := env.get(Env.ORT_INTRA_OP_THREADS):
        return max(1, int(explicit))
    if memory := env.get(Env.LAMBDA_MEMORY):
        return threads_for_memory(int(memory))
    return max(1, len(os.sched_getaffinity(0)))


def choose_providers(preferred: list[str] | None = None) -> list[str]:
    """The preferred providers this onnxruntime build has, always ending with CPU."""
    available = set(ort.get_available_providers())
    chosen = [p for p in (preferred or []) if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def integer_kernel_setting() -> dict[str, str]:
    """What a manifest records of how its parity was measured: the session config entries."""
    return dict(INTEGER_KERNEL_CONFIG)


def session_options(
    *,
    threads: int,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    integer_config: dict[str, str] = INTEGER_KERNEL_CONFIG,
) -> ort.SessionOptions:
    """`integer_config` other than the default is for the bench's scheme comparison only."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = optimization
    for key, value in integer_config.items():
        options.add_session_config_entry(key, value)
    return options


@functools.cache
def run_options() -> ort.RunOptions:
    """What every serving `session.run` passes: the arena shrinks back after each run."""
    options = ort.RunOptions()
    for key, value in ARENA_SHRINKAGE_CONFIG.items():
        options.add_run_config_entry(key, value)
    return options


def create_session(
    model: Path | str | bytes,
    *,
    threads: int = 1,
    providers: list[str] | None = None,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    integer_config: dict[str, str] = INTEGER_KERNEL_CONFIG,
) -> ort.InferenceSession:
    """A session on `model` (a path or serialized bytes) with onnxlift's settings."""
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(
        threads=threads, optimization=optimization, integer_config=integer_config
    )
    return ort.InferenceSession(
        source,
        sess_options=options,
        providers=choose_providers(providers),
    )
