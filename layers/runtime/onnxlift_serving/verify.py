"""Parity where the model runs: the metric math, and a version's parity set replayed anywhere.

A build keeps a small parity set with each version (assets/parity.json): V2 request bodies,
the source framework's outputs on them, the spec's metric and threshold. `verify` sends each
request through whatever answers V2 (the local stack over HTTP, a deployed API, the new Lambda
version invoked by the PreTraffic hook) and measures the answers against the reference.

The math is plain Python (the standard library only, no numpy): the build's gate
(onnxlift.builder.parity) runs these same functions, and the PreTraffic hook, a zip asset
with boto3 only, has this file bundled beside its handler (infra.rollout.HOOK_SERVING_MODULES).
Values are lists of rows, each row one input's output flattened row-major.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "HIGHER_IS_BETTER",
    "MAX_PARITY_INPUTS",
    "MAX_PARITY_SET_BYTES",
    "PARITY_SET_ASSET",
    "PARITY_SET_FORMAT",
    "ParitySetError",
    "VerifyResult",
    "cosine_rows",
    "max_abs_error_rows",
    "measure_rows",
    "passes",
    "read_parity_set",
    "response_rows",
    "top1_agreement_rows",
    "verify",
]

PARITY_SET_ASSET = "parity.json"  # under the version's assets/
PARITY_SET_FORMAT = 1
MAX_PARITY_INPUTS = 16  # requests a check sends: a deployment hook has minutes, not hours
MAX_PARITY_SET_BYTES = 1024 * 1024  # fewer inputs are kept when 16 would not fit
HIGHER_IS_BETTER = {"min_cosine": True, "top1_agreement": True, "max_abs_error": False}

Rows = list[list[Any]]


class ParitySetError(ValueError):
    """A parity set that is not one, or an answer that does not fit it."""


def passes(metric: str, value: float, threshold: float) -> bool:
    """The gate's rule (onnxlift.spec.ParitySpec.passes); NaN never passes."""
    if HIGHER_IS_BETTER[metric]:
        return value >= threshold
    return value <= threshold


def _norm(row: Sequence[float]) -> float:
    return math.sqrt(math.fsum(x * x for x in row))


def cosine_rows(served: Rows, reference: Rows) -> dict[str, Any]:
    """Row-wise cosine similarity; a zero row is NaN (it fails every threshold)."""
    if len(served) != len(reference) or any(
        len(a) != len(b) for a, b in zip(served, reference, strict=True)
    ):
        raise ParitySetError("served and reference outputs differ in shape")
    cosines = []
    for a, b in zip(served, reference, strict=True):
        norms = _norm(a) * _norm(b)
        dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
        cosines.append(dot / norms if norms > 0 else math.nan)
    worst = min(
        range(len(cosines)), key=lambda i: -math.inf if math.isnan(cosines[i]) else cosines[i]
    )
    return {
        "value": cosines[worst],
        "min": cosines[worst],
        "mean": math.fsum(cosines) / len(cosines),
        "count": len(cosines),
        "worst_index": worst,
    }


def top1_agreement_rows(
    served: Sequence[Any], reference: Sequence[Any], truth: Sequence[Any] | None = None
) -> dict[str, Any]:
    """Share of inputs whose served label equals the source's; accuracy against truth."""
    agree = [a == b for a, b in zip(served, reference, strict=True)]
    result: dict[str, Any] = {
        "value": sum(agree) / len(agree),
        "count": len(agree),
        "worst_index": agree.index(False) if not all(agree) else 0,
    }
    if truth is not None:
        result["accuracy"] = sum(a == t for a, t in zip(served, truth, strict=True)) / len(truth)
        result["reference_accuracy"] = sum(
            r == t for r, t in zip(reference, truth, strict=True)
        ) / len(truth)
    return result


def _numeric(rows: Rows) -> bool:
    first = next((x for row in rows for x in row), None)
    return isinstance(first, int | float) and not isinstance(first, bool)


def max_abs_error_rows(served: Mapping[str, Rows], reference: Mapping[str, Rows]) -> dict[str, Any]:
    """Largest absolute difference over every numeric output; a NaN difference is infinite."""
    worst, index = 0.0, 0
    for name, expected in reference.items():
        if not _numeric(expected):
            continue
        got = served[name]
        if len(got) != len(expected):
            raise ParitySetError(f"output '{name}': {len(got)} rows served, {len(expected)} kept")
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            if len(a) != len(b):
                raise ParitySetError(f"output '{name}' row {i}: {len(a)} values, not {len(b)}")
            diffs = [abs(float(x) - float(y)) for x, y in zip(a, b, strict=True)]
            row = max((math.inf if math.isnan(d) else d for d in diffs), default=0.0)
            if row > worst:
                worst, index = row, i
    return {"value": worst, "worst_index": index}


def measure_rows(
    metric: str,
    served: Mapping[str, Rows],
    reference: Mapping[str, Rows],
    truth: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """The parity figure of `metric` over the outputs in `reference` (the compared ones)."""
    if metric == "min_cosine":
        name = next(iter(reference))
        return {"metric": metric} | cosine_rows(served[name], reference[name])
    if metric == "top1_agreement":
        labels = [row[0] for row in served["label"]]
        figures = top1_agreement_rows(labels, [row[0] for row in reference["label"]], truth)
        if "probabilities" in reference:
            figures["probabilities_max_abs_error"] = max_abs_error_rows(
                {"p": served["probabilities"]}, {"p": reference["probabilities"]}
            )["value"]
        return {"metric": metric} | figures
    if metric == "max_abs_error":
        return {"metric": metric} | max_abs_error_rows(served, reference)
    raise ParitySetError(f"unknown parity metric {metric}")


# -- the parity set -----------------------------------------------------------------------------
def read_parity_set(raw: bytes | str) -> dict[str, Any]:
    """A version's assets/parity.json, checked for what `verify` reads."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ParitySetError(f"the parity set is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != PARITY_SET_FORMAT:
        raise ParitySetError(f"the parity set is not format {PARITY_SET_FORMAT}")
    requests, reference = doc.get("requests"), doc.get("reference")
    if doc.get("metric") not in HIGHER_IS_BETTER or not isinstance(
        doc.get("threshold"), float | int
    ):
        raise ParitySetError("the parity set names no known metric and threshold")
    if not isinstance(requests, list) or not requests or not isinstance(reference, dict):
        raise ParitySetError("the parity set holds no requests or no reference outputs")
    if any(not isinstance(rows, list) or len(rows) != len(requests) for rows in reference.values()):
        raise ParitySetError("the parity set's reference outputs do not match its requests")
    return doc


def _flatten(data: Any) -> list[Any]:
    flat, stack = [], [data]
    while stack:  # bounded by the answer's size; no recursion
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def response_rows(response: Mapping[str, Any], names: Sequence[str]) -> dict[str, list[Any]]:
    """One row per named output of a V2 answer to a one-input request, flattened."""
    outputs = {o.get("name"): o for o in response.get("outputs") or [] if isinstance(o, dict)}
    missing = [n for n in names if n not in outputs]
    if missing:
        raise ParitySetError(f"the answer has no output(s) {', '.join(missing)}")
    return {n: _flatten(outputs[n].get("data")) for n in names}


@dataclass(frozen=True)
class VerifyResult:
    metric: str
    value: float
    threshold: float
    passed: bool
    count: int
    worst_index: int
    worst_input: str  # the worst request's inputs, cut short

    def line(self, what: str) -> str:
        relation = ">=" if HIGHER_IS_BETTER[self.metric] else "<="
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{what}: parity {verdict}: {self.metric} {self.value:.4f} (needs {relation} "
            f"{self.threshold}) on {self.count} inputs; worst input #{self.worst_index}: "
            f"{self.worst_input}"
        )


def verify(
    parity_set: Mapping[str, Any], send: Callable[[dict[str, Any]], Mapping[str, Any]]
) -> VerifyResult:
    """Send every request of the parity set through `send` (a V2 request body in, the parsed
    V2 answer out) and measure the answers against the set's reference outputs."""
    names = list(parity_set["reference"])
    served: dict[str, Rows] = {n: [] for n in names}
    for body in parity_set["requests"]:
        for name, row in response_rows(send(body), names).items():
            served[name].append(row)
    metric, threshold = parity_set["metric"], float(parity_set["threshold"])
    figure = measure_rows(metric, served, parity_set["reference"], parity_set.get("truth"))
    worst = int(figure.get("worst_index", 0))
    inputs = parity_set["requests"][worst].get("inputs", [])
    shown = json.dumps({t.get("name"): t.get("data") for t in inputs})
    return VerifyResult(
        metric=metric,
        value=float(figure["value"]),
        threshold=threshold,
        passed=passes(metric, float(figure["value"]), threshold),
        count=len(parity_set["requests"]),
        worst_index=worst,
        worst_input=shown if len(shown) <= 120 else shown[:117] + "...",
    )
