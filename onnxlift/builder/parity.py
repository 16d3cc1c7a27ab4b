"""Parity between the served ONNX model and the source framework on fixed inputs.

One metric per kind of task: cosine for embeddings, top-1 agreement (with accuracy on the
held-out labels beside it) for classifiers, max absolute error for regression and plain
tensors.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def cosine(served: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Row-wise cosine similarity between two [n, d] matrices."""
    if served.shape != reference.shape:
        raise ValueError(f"shape mismatch: served {served.shape}, reference {reference.shape}")
    a = served / np.linalg.norm(served, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = (a * b).sum(axis=1)
    return {
        "value": float(cosines.min()),
        "min": float(cosines.min()),
        "mean": float(cosines.mean()),
        "count": int(cosines.size),
        "worst_index": int(cosines.argmin()),
    }


def top1_agreement(
    served: np.ndarray, reference: np.ndarray, truth: np.ndarray | None = None
) -> dict[str, Any]:
    """Share of inputs where the served label equals the source's; accuracy against truth."""
    served, reference = np.asarray(served).ravel(), np.asarray(reference).ravel()
    agree = served == reference
    result: dict[str, Any] = {
        "value": float(agree.mean()),
        "count": int(agree.size),
        "worst_index": int(np.argmin(agree)),
    }
    if truth is not None:
        truth = np.asarray(truth).ravel()
        result["accuracy"] = float((served == truth).mean())
        result["reference_accuracy"] = float((reference == truth).mean())
    return result


def max_abs_error(
    served: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Largest absolute difference over every numeric output the two share."""
    worst, index = 0.0, 0
    for name, expected in reference.items():
        expected = np.asarray(expected)
        if expected.dtype.kind not in "fiu":
            continue
        diff = np.abs(np.asarray(served[name], dtype=np.float64) - expected.astype(np.float64))
        flat = diff.reshape(diff.shape[0], -1).max(axis=1) if diff.ndim > 1 else diff
        if flat.size and float(flat.max()) > worst:
            worst, index = float(flat.max()), int(flat.argmax())
    return {"value": worst, "worst_index": index}


def measure(
    metric: str,
    served: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    truth: np.ndarray | None,
) -> dict[str, Any]:
    if metric == "min_cosine":
        (name,) = [n for n in reference if np.asarray(reference[n]).dtype.kind == "f"][:1]
        return {"metric": metric} | cosine(served[name], np.asarray(reference[name]))
    if metric == "top1_agreement":
        figures = top1_agreement(served["label"], reference["label"], truth)
        if "probabilities" in reference:
            figures["probabilities_max_abs_error"] = max_abs_error(
                {"p": served["probabilities"]}, {"p": reference["probabilities"]}
            )["value"]
        return {"metric": metric} | figures
    if metric == "max_abs_error":
        return {"metric": metric} | max_abs_error(served, reference)
    raise ValueError(f"unknown parity metric {metric}")
