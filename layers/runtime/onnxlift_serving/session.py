"""The one way onnxlift opens an onnxruntime session.

Build parity, the Lambda handler, the SageMaker container, the local stack, bench and
`onnxlift add` all call `create_session`, so a model is measured with exactly the settings it
is served with. tests/serving/test_session_policy.py fails if any code opens a session otherwise.

Integer kernels: on x86 CPUs without VNNI, onnxruntime's default u8 x s8 kernel saturates
pairs of products at 16 bits (vpmaddubsw), so the same INT8 model answers differently on AVX2
and on AVX-512 VNNI machines (MiniLM: min cosine 0.97 against 0.99). `INTEGER_KERNEL_CONFIG`
turns on onnxruntime's exact path (s8 weights outside [-64, 64] moved to u8 at session
creation, U8U8 kernels). It does so on VNNI machines too, where the default kernel sums exactly
and the U8U8 path is only slower (measured on an AVX-512 VNNI EPYC: an 8-bit MiniLM at batch 8,
23.6 ms without the setting, 32.6 ms with it); a model whose weights fit [-64, 64] (7-bit,
`reduce_range`, as minilm is built) stays on the fast kernel everywhere.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import onnxruntime as ort

from onnxlift_serving.contract import SERVING_RESERVE_MB, Env, threads_for_memory
from onnxlift_serving.errors import ArtifactError
from onnxlift_serving.layout import weights_bytes

__all__ = [
    "ALLOCATION_FAILURES",
    "INTEGER_KERNEL_CONFIG",
    "PREOPTIMIZED_KEY",
    "ModelTooLarge",
    "arena_bytes",
    "arena_limit",
    "choose_providers",
    "create_session",
    "default_threads",
    "integer_kernel_setting",
    "is_allocation_failure",
    "optimization_for",
    "run_options",
    "session_options",
]

MIB = 1024 * 1024
log = logging.getLogger(__name__)

# onnxruntime's kOrtSessionOptionsAvx2PrecisionMode (onnxruntime_session_options_config_keys.h).
INTEGER_KERNEL_CONFIG: Final[dict[str, str]] = {"session.x64quantprecision": "1"}
# onnxruntime's kOrtRunOptionsConfigEnableMemoryArenaShrinkage: at the end of each run the CPU
# arena gives back what the run grew it by. Without it a sandbox keeps its largest request's
# activations for good (minilm: 155 MB at start, 1,141 MB after one batch of 64 x 256 tokens);
# with it, RSS is back at its start after such a batch. Cost, measured on minilm (1 thread,
# min / median ms): 2 x 12 tokens 7.7 / 18.0 default, 7.5 / 16.7 with it; 8 x 64 175 / 338
# and 165 / 338; 32 x 256 4,740 / 6,659 and 5,394 / 6,422 (turning the arena off instead
# cost 25-70% on the larger batches).
# It shrinks the capped serving arena too (arena_bytes; scripts/arena_cap_figures.py, minilm,
# 2048 MiB): 99 MiB at start, 129 MiB after a 64 x 256 batch; uncapped 93 and 122.
ARENA_SHRINKAGE_CONFIG: Final[dict[str, str]] = {"memory.enable_memory_arena_shrinkage": "cpu:0"}


# -- the memory a request may make ------------------------------------------------------------
# Serving sessions allocate from one process-wide CPU arena capped at what the memory limit
# leaves (arena_bytes): a request that needs more fails inside onnxruntime with one of these
# messages (bfc_arena.cc) instead of growing the process until Lambda kills the sandbox.
# Measured with onnxruntime 1.32 (minilm, INT8, 30 MB file): the initializers are not taken
# from the arena, the kernels' packed weight copies are (17 MiB of a 30 MB file); a cap below
# those copies is not enforced at all (the 64 x 256 batch then peaked at 880 MiB under an
# 8 MiB cap), hence MIN_REQUEST_BYTES on top of the weights.
ALLOCATION_FAILURES: Final = ("Failed to allocate memory", "Available memory of")
MIN_REQUEST_BYTES: Final = 64 * MIB
_ARENA_LOCK = threading.Lock()
_arena_limit: int | None = None


class ModelTooLarge(ArtifactError):
    """The model's weights leave no room for a request in the memory the process may use."""


def is_allocation_failure(message: str) -> bool:
    """Whether an onnxruntime error is its arena refusing an allocation."""
    return any(text in message for text in ALLOCATION_FAILURES)


def arena_bytes(memory_mb: int, model_bytes: int, copies: int = 1) -> int:
    """The arena cap for a process of `memory_mb` serving `copies` models of `model_bytes`
    (the versions it may keep loaded at once): the memory less SERVING_RESERVE_MB and the
    weights (they are resident outside the arena). Raises ModelTooLarge when what is left
    cannot hold the packed weight copies and a request."""
    weights = copies * model_bytes
    cap = (memory_mb - SERVING_RESERVE_MB) * MIB - weights
    if cap < weights + MIN_REQUEST_BYTES:
        held = f"{copies} versions' weights" if copies > 1 else "the model's weights"
        raise ModelTooLarge(
            f"{held} ({weights / MIB:.0f} MiB) do not fit a {memory_mb} MiB "
            f"function: {SERVING_RESERVE_MB} MiB go to the runtime and one request's body and "
            f"answer, and the kernels need room for their copy of the weights plus "
            f"{MIN_REQUEST_BYTES // MIB} MiB for a request; raise serving.memory_mb to at "
            f"least {SERVING_RESERVE_MB + (2 * weights + MIN_REQUEST_BYTES) // MIB + 1}"
        )
    return cap


def arena_limit() -> int | None:
    """The cap (bytes) of the process's serving arena, None while no capped session exists."""
    return _arena_limit


def _register_arena(cap: int) -> int:
    """Register the capped CPU arena once per process; a later cap leaves the first in place
    (onnxruntime keeps one allocator per device) and is logged."""
    global _arena_limit
    with _ARENA_LOCK:
        if _arena_limit is None:
            config = ort.OrtArenaCfg(cap, -1, -1, -1)  # max bytes; default growth and chunks
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            ort.create_and_register_allocator(info, config)
            _arena_limit = cap
            log.info("onnxruntime CPU arena capped at %d MiB", cap // MIB)
        elif cap != _arena_limit:
            log.warning(
                "arena already capped at %d MiB; a later model asked %d MiB",
                _arena_limit // MIB,
                cap // MIB,
            )
        return _arena_limit


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


# The manifest entry of a graph the build saved as onnxruntime's CPU optimizer leaves it
# (onnxlift/builder/preoptimize.py): {"level": "extended", "onnxruntime": <its version>,
# "machine": <the build's CPU architecture, platform.machine()>}.
PREOPTIMIZED_KEY: Final = "graph_optimization"


def optimization_for(
    manifest: Mapping[str, object], providers: list[str]
) -> ort.GraphOptimizationLevel:
    """No optimization at session creation for a graph the build already optimized with this
    onnxruntime, on this CPU architecture, for the CPU provider alone (a third of minilm's
    session creation). Anywhere else (another onnxruntime or architecture, a GPU provider) the
    optimizer runs as for any graph: on a fused graph it finds nothing left to fuse (fused CPU
    ops a GPU provider lacks run on the CPU)."""
    done = manifest.get(PREOPTIMIZED_KEY)
    if (
        isinstance(done, Mapping)
        and done.get("onnxruntime") == ort.__version__
        and done.get("machine") == platform.machine()
        and choose_providers(providers) == ["CPUExecutionProvider"]
    ):
        return ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.GraphOptimizationLevel.ORT_ENABLE_ALL


def integer_kernel_setting() -> dict[str, str]:
    """What a manifest records of how its parity was measured: the session config entries."""
    return dict(INTEGER_KERNEL_CONFIG)


def session_options(
    *,
    threads: int,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    integer_config: dict[str, str] = INTEGER_KERNEL_CONFIG,
    profile_prefix: str | None = None,
) -> ort.SessionOptions:
    """`integer_config` other than the default is for the bench's scheme comparison only;
    `profile_prefix` (bench only) turns on onnxruntime's per-node profiler, whose JSON
    `InferenceSession.end_profiling()` writes to a file starting with it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = optimization
    for key, value in integer_config.items():
        options.add_session_config_entry(key, value)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
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
    memory_mb: int | None = None,
    resident_versions: int = 1,
    profile_prefix: str | None = None,
    save_optimized: Path | None = None,
) -> ort.InferenceSession:
    """A session on `model` (a path or serialized bytes) with onnxlift's settings.

    `memory_mb` (serving only: the handler and the container) is what the process may use:
    the session then allocates from the process's capped arena (see arena_bytes), which
    leaves room for the weights of `resident_versions` such models. Build-time sessions leave
    it None and are not capped here (the build's child process has its own limit).
    `profile_prefix` is for the bench's per-op profile (see session_options); `save_optimized`
    (build only) writes the graph as the optimizer leaves it there."""
    source = model if isinstance(model, bytes) else str(model)
    options = session_options(
        threads=threads,
        optimization=optimization,
        integer_config=integer_config,
        profile_prefix=profile_prefix,
    )
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    if memory_mb is not None:
        size = len(model) if isinstance(model, bytes) else weights_bytes(Path(model))
        _register_arena(arena_bytes(memory_mb, size, resident_versions))
        options.add_session_config_entry("session.use_env_allocators", "1")
    return ort.InferenceSession(
        source,
        sess_options=options,
        providers=choose_providers(providers),
    )
