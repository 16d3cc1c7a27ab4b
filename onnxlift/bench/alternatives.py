"""What a user would pick instead, on the same sentences, one intra-op thread each: INT8 ONNX
(served), FP32 ONNX (fused and plain export), PyTorch eager as `SentenceTransformer.encode`
(how a user serves it without this toolkit) and as the bare module forward on the same token
ids (the fairest floor PyTorch has); and what a second thread buys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxlift.bench.serving import load_pipeline, onnx_variants, run_call
from onnxlift.bench.timing import Calls, Plan, ratio
from onnxlift.builder.parity import cosine

LABELS = {
    "torch_st": "PyTorch eager (sentence-transformers encode)",
    "torch_forward": "PyTorch eager (module forward, same token ids)",
}


class _Torch:
    """sentence-transformers and the bare module, loaded once, on one thread until closed."""

    def __init__(self, source: Any) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.torch, self.threads = torch, torch.get_num_threads()
        torch.set_num_threads(1)
        self.st = SentenceTransformer(str(source.weights_dir()), device="cpu")
        self.module: Any = source.load_module() if hasattr(source, "load_module") else None

    def calls(self, texts: list[str], ids: dict[str, np.ndarray]) -> Calls:
        """encode of the texts; the bare module's forward on their token ids."""
        options: dict[str, Any] = {"normalize_embeddings": True, "convert_to_numpy": True}
        options |= {"batch_size": max(1, len(texts)), "show_progress_bar": False}
        calls: Calls = {"torch_st": lambda: self.st.encode(texts, **options)}
        if self.module is not None:
            tensors = {k: self.torch.from_numpy(v) for k, v in ids.items()}
            calls["torch_forward"] = lambda: self._forward(tensors)
        return calls

    def _forward(self, tensors: dict[str, Any]) -> Any:
        with self.torch.inference_mode():
            return self.module(**tensors)


def _parity(pipelines: dict[str, Any], torch: _Torch, texts: list[str]) -> dict[str, Any]:
    """Cosine of every variant against sentence-transformers on the parity texts."""
    calls = torch.calls(texts, pipelines["int8"].prepare(texts[:16]))
    reference, parity = calls["torch_st"](), {}
    for key, pipeline in pipelines.items():
        chunks = [run_call(pipeline, texts[i : i + 16])() for i in range(0, len(texts), 16)]
        got = np.concatenate([c[pipeline.embedding_output] for c in chunks])
        parity[key] = (cosine(got, reference), "this run")
    if "torch_forward" in calls:
        got = calls["torch_forward"]().numpy()
        parity["torch_forward"] = (cosine(got, reference[:16]), "this run (first 16)")
    return {
        k: {m: c[m] for m in ("min", "mean", "count")} | {"source": s}
        for k, (c, s) in parity.items()
    }


def run_alternatives(
    plan: Plan, build: Path, manifest: dict[str, Any], source: Any, parity_texts: list[str] | None
) -> dict[str, Any]:
    """Latency of every variant per batch size, and parity of each next to it: computed in this
    run given parity_texts, else the build manifest's (INT8 and plain FP32 only)."""
    variants = onnx_variants(build)
    pipelines = {v.key: load_pipeline(build, v.path, threads=1) for v in variants}
    info: dict[str, Any] = {}
    for v in variants:
        known = manifest.get("parity", {}).get(v.parity_key or "", {})
        parity = {"min": known.get("min"), "mean": known.get("mean"), "source": "build manifest"}
        info[v.key] = {"label": v.label, "bytes": v.path.stat().st_size, "path": str(v.path)}
        info[v.key]["parity"] = parity if "min" in known else None
    torch = _Torch(source) if source is not None and hasattr(source, "weights_dir") else None
    if torch is None:
        plan.report("  alternatives: the model's source has no weights_dir(); PyTorch left out")
    else:
        reference = {"min": 1.0, "mean": 1.0, "source": "the reference itself"}
        info["torch_st"] = {"label": LABELS["torch_st"], "parity": reference}
        if torch.module is not None:
            info["torch_forward"] = {"label": LABELS["torch_forward"], "parity": None}

    def row(texts: list[str]) -> dict[str, Any]:
        calls = {key: run_call(pipeline, texts) for key, pipeline in pipelines.items()}
        if torch is not None:
            calls |= torch.calls(texts, pipelines["int8"].prepare(texts))
        return plan.timed(calls)

    try:
        if torch is not None and parity_texts:
            for key, figures in _parity(pipelines, torch, parity_texts).items():
                info[key]["parity"] = figures
        return {"threads": 1, "variants": info, "batches": plan.per_batch("alternatives", row)}
    finally:
        if torch is not None:
            torch.torch.set_num_threads(torch.threads)


def run_threads(plan: Plan, build: Path) -> dict[str, Any]:
    """intra_op_num_threads 1 vs 2: a function below 1,769 MB gets one vCPU, so one thread;
    this shows what a second would buy here. Each setting is timed in its own block, not
    round-robin: a 2-thread session's worker spins for a while after each run and would steal
    the core from whatever call came next."""
    keys = [v.key for v in onnx_variants(build) if v.key in ("int8", "fp32_fused")]
    paths = {v.key: v.path for v in onnx_variants(build)}
    pipelines = {
        f"{k}@{n}": load_pipeline(build, paths[k], threads=n) for k in keys for n in (1, 2)
    }

    def row(texts: list[str]) -> dict[str, Any]:
        found = plan.timed({k: run_call(p, texts) for k, p in pipelines.items()}, interleaved=False)
        speedups = {
            f"{k}:speedup_2_over_1": ratio(found[f"{k}@1"]["p50"], found[f"{k}@2"]["p50"])
            for k in keys
        }
        return found | speedups

    return {"thread_counts": [1, 2], "batches": plan.per_batch("threads", row)}
