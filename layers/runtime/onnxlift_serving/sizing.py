"""How much memory a served model takes, and how many server workers fit a machine.

One formula, read by the toolkit (`target = "auto"`: Lambda or SageMaker?) and by the
SageMaker container (how many workers fit the instance), so both make the same estimate.

    session memory ~ SESSION_MEMORY_FACTOR x ONNX file size + RUNTIME_BASELINE_BYTES

Measured with onnxruntime 1.32 (CPU) on all-MiniLM-L6-v2 (scripts/session_memory.py): RSS
growth from before the session is created to after it plus one inference (batch 8, 64
tokens), per byte of ONNX file: FP32 1.38 (86 MB file), FP32 after the transformer
optimizer 1.66, dynamic INT8 2.34 (29 MB; its kernels keep packed weight copies). 2.5
covers all three. The baseline is the process before the session: 46 MB for Python with
onnxruntime and numpy; 150 MB budgets tokenizers, the server and arena growth on larger
batches.
"""

from __future__ import annotations

MB = 1024 * 1024
SESSION_MEMORY_FACTOR = 2.5
RUNTIME_BASELINE_BYTES = 150 * MB


def estimate_session_bytes(model_bytes: int) -> int:
    """Resident memory of one process serving a model whose ONNX file is `model_bytes`."""
    return int(SESSION_MEMORY_FACTOR * model_bytes) + RUNTIME_BASELINE_BYTES


def cpu_worker_plan(*, cores: int, memory_bytes: int, model_bytes: int) -> tuple[int, int]:
    """(workers, onnxruntime intra-op threads each) for a CPU-only machine.

    Tokenisation and JSON run under the GIL, so one process cannot keep many cores busy:
    one worker per two cores, each with two onnxruntime threads, so that workers x threads
    equals the cores (no oversubscription). Each worker holds its own session, so no more
    workers than 80% of the memory holds.
    """
    cores = max(1, cores)
    by_cpu = max(1, cores // 2)
    by_memory = max(1, int(memory_bytes * 0.8) // max(1, estimate_session_bytes(model_bytes)))
    workers = min(by_cpu, by_memory)
    return workers, max(1, cores // workers)
