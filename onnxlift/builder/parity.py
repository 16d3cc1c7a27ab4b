"""Parity between the served ONNX model and the source framework on fixed inputs.

One metric per kind of task: cosine for embeddings, top-1 agreement (with accuracy on the
held-out labels beside it) for classifiers, max absolute error for regression and plain
tensors. The math is onnxlift_serving.verify's (plain Python): the build's gate, `onnxlift
verify` and the PreTraffic hook measure with the same functions, so they cannot disagree.
These wrappers turn numpy arrays into its rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnxlift_serving import verify

__all__ = ["compared_outputs", "cosine", "max_abs_error", "measure", "rows", "top1_agreement"]


def rows(array: Any) -> list[list[Any]]:
    """An [n, ...] array as n rows, each flattened row-major, as Python scalars."""
    array = np.asarray(array)
    return array.reshape(array.shape[0], -1).tolist() if array.ndim else [[array.item()]]


def cosine(served: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Row-wise cosine similarity between two [n, d] matrices."""
    if served.shape != reference.shape:
        raise ValueError(f"shape mismatch: served {served.shape}, reference {reference.shape}")
    return verify.cosine_rows(rows(served), rows(reference))


def top1_agreement(
    served: np.ndarray, reference: np.ndarray, truth: np.ndarray | None = None
) -> dict[str, Any]:
    """Share of inputs where the served label equals the source's; accuracy against truth."""
    labels = np.asarray(truth).ravel().tolist() if truth is not None else None
    return verify.top1_agreement_rows(
        np.asarray(served).ravel().tolist(), np.asarray(reference).ravel().tolist(), labels
    )


def max_abs_error(
    served: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Largest absolute difference over every numeric output the two share."""
    names = [n for n, v in reference.items() if np.asarray(v).dtype.kind in "fiu"]
    return verify.max_abs_error_rows(
        {n: rows(served[n]) for n in names}, {n: rows(reference[n]) for n in names}
    )


def compared_outputs(metric: str, reference: dict[str, np.ndarray]) -> list[str]:
    """The outputs `metric` reads: the first float output for cosine, label (and probabilities)
    for top-1 agreement, every numeric output for max absolute error."""
    kinds = {n: np.asarray(v).dtype.kind for n, v in reference.items()}
    if metric == "min_cosine":
        (name,) = [n for n, kind in kinds.items() if kind == "f"][:1]
        return [name]
    if metric == "top1_agreement":
        return ["label"] + (["probabilities"] if "probabilities" in reference else [])
    if metric == "max_abs_error":
        return [n for n, kind in kinds.items() if kind in "fiu"]
    raise ValueError(f"unknown parity metric {metric}")


def measure(
    metric: str,
    served: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    truth: np.ndarray | None,
) -> dict[str, Any]:
    names = compared_outputs(metric, reference)
    return verify.measure_rows(
        metric,
        {n: rows(served[n]) for n in names},
        {n: rows(reference[n]) for n in names},
        None if truth is None else np.asarray(truth).ravel().tolist(),
    )


def _finite(value: Any) -> bool:
    array = np.asarray(value)
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())


def _request(datatypes: dict[str, str], inputs: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Input `i` of the parity inputs as a V2 request body of one row."""
    tensors = []
    for name, array in inputs.items():
        row = np.asarray(array)[i : i + 1]
        data = [str(x) for x in row.ravel()] if row.dtype.kind in "OSU" else row.ravel().tolist()
        tensors.append(
            {"name": name, "shape": list(row.shape), "datatype": datatypes[name], "data": data}
        )
    return {"inputs": tensors}


def parity_set(
    *,
    metric: str,
    threshold: float,
    datatypes: dict[str, str],
    parity_inputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    truth: np.ndarray | None,
) -> dict[str, Any] | None:
    """The version's parity set (onnxlift_serving.verify): its first inputs (at most
    MAX_PARITY_INPUTS, fewer when they would not fit MAX_PARITY_SET_BYTES) as V2 requests,
    with the reference outputs the metric reads. Rows holding NaN or Inf are left out (JSON
    has no spelling for them); None when no row is left."""
    import json

    names = compared_outputs(metric, reference)
    count = len(next(iter(parity_inputs.values())))
    kept = [
        i
        for i in range(count)
        if all(_finite(v[i]) for v in parity_inputs.values())
        and all(_finite(reference[n][i]) for n in names)
    ][: verify.MAX_PARITY_INPUTS]
    while kept:
        doc = {
            "format": verify.PARITY_SET_FORMAT,
            "metric": metric,
            "threshold": threshold,
            "outputs": names,
            "requests": [_request(datatypes, parity_inputs, i) for i in kept],
            "reference": {n: [rows(reference[n][i : i + 1])[0] for i in kept] for n in names},
            "truth": None if truth is None else np.asarray(truth).ravel()[kept].tolist(),
        }
        if len(json.dumps(doc, allow_nan=False)) <= verify.MAX_PARITY_SET_BYTES:
            return doc
        kept = kept[: len(kept) // 2]
    return None
