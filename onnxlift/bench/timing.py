"""Latency statistics: time.perf_counter samples after warm-up, summarised as p50/p95/p99."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, mean, min and max of latency samples in milliseconds."""
    if not samples_ms:
        raise ValueError("no samples to summarise")
    return {
        "n": len(samples_ms),
        "p50": percentile(samples_ms, 50),
        "p95": percentile(samples_ms, 95),
        "p99": percentile(samples_ms, 99),
        "mean": sum(samples_ms) / len(samples_ms),
        "min": min(samples_ms),
        "max": max(samples_ms),
    }


def time_calls(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeat: int,
    budget_s: float | None = None,
    min_repeat: int = 5,
) -> list[float]:
    """Call fn `warmup` times untimed, then up to `repeat` times timed (milliseconds each).

    `budget_s` bounds the timed phase: it stops early once the budget is spent and at least
    `min_repeat` samples are in, so a slow variant cannot stretch the run.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
        if (
            budget_s is not None
            and len(samples) >= min_repeat
            and time.perf_counter() - started > budget_s
        ):
            break
    return samples


def measure(fn: Callable[[], Any], **kwargs: Any) -> dict[str, float]:
    return summarize(time_calls(fn, **kwargs))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def time_interleaved(
    calls: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    repeat: int,
    budget_s: float | None = None,
    min_repeat: int = 5,
) -> dict[str, list[float]]:
    """Round-robin over `calls`, one timed call each per round (milliseconds).

    Comparing variants measured one after the other mixes their difference with whatever
    drifted meanwhile (clock, cache, a neighbour's load); interleaving spreads drift evenly.
    Each round starts one call later than the one before, so no call always follows the same
    neighbour (an HTTP call evicts caches for whatever runs next). The budget bounds the whole
    timed phase, checked after each round.
    """
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    started = time.perf_counter()
    items = list(calls.items())
    for done in range(1, repeat + 1):
        shift = (done - 1) % len(items)
        for key, fn in items[shift:] + items[:shift]:
            t0 = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - t0) * 1000)
        if budget_s is not None and done >= min_repeat and time.perf_counter() - started > budget_s:
            break
    return samples


def measure_interleaved(calls: dict[str, Callable[[], Any]], **kwargs: Any) -> dict[str, Any]:
    return {key: summarize(s) for key, s in time_interleaved(calls, **kwargs).items()}
