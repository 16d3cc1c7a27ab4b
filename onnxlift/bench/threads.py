"""intra_op_num_threads 1 vs 2 for the ONNX variants (pre-processing + run).

Lambda gives one vCPU below 1,769 MB, so a function at 2,048 MB runs with one thread
(onnxlift_serving.session.threads_for_memory); this shows what a second thread would buy on
the machine the bench runs on. Each setting is timed in its own block, not round-robin: a
2-thread session's worker spins for a while after each run and would steal the core from
whatever call came next.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxlift.bench.corpus import batch
from onnxlift.bench.serving import load_pipeline, onnx_variants
from onnxlift.bench.timing import measure, ratio

THREAD_COUNTS = (1, 2)


def run_threads(
    *,
    build_folder: Path,
    sentences: list[str],
    batch_sizes: tuple[int, ...],
    warmup: int,
    repeat: int,
    budget_s: float,
    variant_keys: tuple[str, ...] = ("int8", "fp32_fused"),
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    variants = [v for v in onnx_variants(build_folder) if v.key in variant_keys]
    pipelines = {
        (v.key, n): load_pipeline(build_folder, v.path, threads=n)
        for v in variants
        for n in THREAD_COUNTS
    }
    results: dict[str, Any] = {"thread_counts": list(THREAD_COUNTS), "batches": {}}
    for size in batch_sizes:
        texts = batch(sentences, size)
        row: dict[str, Any] = {}
        for (key, n), pipeline in pipelines.items():
            tensor = {pipeline.text_input: np.array(texts, dtype=object)}
            row[f"{key}@{n}"] = measure(
                lambda p=pipeline, t=tensor: p.run(t),
                warmup=warmup,
                repeat=repeat,
                budget_s=budget_s,
            )
        for v in variants:
            row[f"{v.key}:speedup_2_over_1"] = ratio(
                row[f"{v.key}@1"]["p50"], row[f"{v.key}@2"]["p50"]
            )
        results["batches"][str(size)] = row
        report(
            f"  threads batch {size}: "
            + ", ".join(f"{k} {s['p50']:.2f}" for k, s in row.items() if "@" in k)
            + " ms p50"
        )
    return results
