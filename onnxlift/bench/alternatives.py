"""What a user would pick instead, on the same sentences: INT8 ONNX (served), FP32 ONNX (fused
and plain export) and PyTorch eager, each with its parity against sentence-transformers.

PyTorch is measured two ways: `SentenceTransformer.encode` (how a user serves it without this
toolkit; tokenizer included) and the bare module forward on the same int64 token ids under
`torch.inference_mode` (the fairest floor PyTorch has). Every variant runs with the same
number of intra-op threads (1, as a Lambda function below 1,769 MB gets one vCPU), and the
variants are timed round-robin so machine drift does not favour one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxlift.bench.corpus import batch
from onnxlift.bench.serving import load_pipeline, onnx_variants
from onnxlift.bench.timing import measure_interleaved

TORCH_ENCODE = "torch_st"
TORCH_FORWARD = "torch_forward"
LABELS = {
    TORCH_ENCODE: "PyTorch eager (sentence-transformers encode)",
    TORCH_FORWARD: "PyTorch eager (module forward, same token ids)",
}


def cosine_figures(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """min and mean row-wise cosine similarity between two embedding matrices."""
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    cosines = np.sum(got * want, axis=1)
    return {"min": float(cosines.min()), "mean": float(cosines.mean()), "count": len(cosines)}


def _embed(pipeline: Any, texts: list[str], chunk: int = 16) -> np.ndarray:
    rows = [
        pipeline.run({pipeline.text_input: np.array(texts[i : i + chunk], dtype=object)})
        for i in range(0, len(texts), chunk)
    ]
    return np.concatenate([r[pipeline.embedding_output] for r in rows])


class TorchModels:
    """sentence-transformers and the bare module, loaded once, with a fixed thread count."""

    def __init__(self, source: Any, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.torch = torch
        self.previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self.st = SentenceTransformer(str(source.weights_dir()), device="cpu")
        self.module = source.load_module() if hasattr(source, "load_module") else None

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.st.encode(
            texts,
            batch_size=max(1, len(texts)),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    def forward_call(self, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
        tensors = {k: self.torch.from_numpy(v) for k, v in feeds.items()}

        def call() -> Any:
            with self.torch.inference_mode():
                return self.module(**tensors)

        return call

    def close(self) -> None:
        self.torch.set_num_threads(self.previous_threads)


def run_alternatives(
    *,
    build_folder: Path,
    manifest: dict[str, Any],
    source: Any | None,
    sentences: list[str],
    parity_texts: list[str] | None,
    batch_sizes: tuple[int, ...],
    warmup: int,
    repeat: int,
    budget_s: float,
    threads: int = 1,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Latency of every variant per batch size, and parity of each next to it.

    parity_texts: compute parity in this run against sentence-transformers (min/mean cosine);
    None takes the build manifest's figures (INT8 and plain FP32) and leaves fused FP32 out.
    """
    variants = onnx_variants(build_folder)
    pipelines = {v.key: load_pipeline(build_folder, v.path, threads=threads) for v in variants}
    build_parity = manifest.get("parity", {})
    info: dict[str, Any] = {}
    for v in variants:
        figures = build_parity.get(v.parity_key or "", {})
        info[v.key] = {
            "label": v.label,
            "bytes": v.path.stat().st_size,
            "path": str(v.path),
            "parity": (
                {"min": figures["min"], "mean": figures["mean"], "source": "build manifest"}
                if "min" in figures
                else None
            ),
        }
    torch_models = None
    if source is not None and hasattr(source, "weights_dir"):
        torch_models = TorchModels(source, threads)
        info[TORCH_ENCODE] = {"label": LABELS[TORCH_ENCODE], "parity": _reference_parity()}
        if torch_models.module is not None:
            info[TORCH_FORWARD] = {"label": LABELS[TORCH_FORWARD], "parity": None}
    else:
        report("  alternatives: the model's source has no weights_dir(); PyTorch left out")

    try:
        if torch_models is not None and parity_texts:
            reference = torch_models.encode(parity_texts)
            for key, pipeline in pipelines.items():
                figures = cosine_figures(_embed(pipeline, parity_texts), reference)
                info[key]["parity"] = figures | {"source": "this run"}
            if torch_models.module is not None:
                feeds = pipelines[variants[0].key].prepare(parity_texts[:16])
                got = torch_models.forward_call(feeds)().numpy()
                info[TORCH_FORWARD]["parity"] = cosine_figures(got, reference[:16]) | {
                    "source": "this run (first 16)"
                }

        results: dict[str, Any] = {"threads": threads, "variants": info, "batches": {}}
        for size in batch_sizes:
            texts = batch(sentences, size)
            calls: dict[str, Callable[[], Any]] = {}
            for key, pipeline in pipelines.items():
                tensor = {pipeline.text_input: np.array(texts, dtype=object)}
                calls[key] = lambda p=pipeline, t=tensor: p.run(t)
            if torch_models is not None:
                calls[TORCH_ENCODE] = lambda t=texts: torch_models.encode(t)
                if torch_models.module is not None:
                    feeds = pipelines[variants[0].key].prepare(texts)
                    calls[TORCH_FORWARD] = torch_models.forward_call(feeds)
            row = measure_interleaved(calls, warmup=warmup, repeat=repeat, budget_s=budget_s)
            results["batches"][str(size)] = row
            report(
                f"  alternatives batch {size}: "
                + ", ".join(f"{k} {s['p50']:.2f}" for k, s in row.items())
                + " ms p50"
            )
        return results
    finally:
        if torch_models is not None:
            torch_models.close()


def _reference_parity() -> dict[str, Any]:
    return {"min": 1.0, "mean": 1.0, "source": "the reference itself"}
