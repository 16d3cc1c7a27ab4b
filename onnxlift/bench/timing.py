"""Latency: time.perf_counter samples after warm-up, summarised as p50/p95/p99."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onnxlift.bench.corpus import batch

Calls = dict[str, Callable[[], Any]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between ranks as numpy's default."""
    if not values or not 0 <= q <= 100:
        raise ValueError(f"percentile {q} of {len(values)} values")
    ordered, rank = sorted(values), (len(values) - 1) * q / 100
    low, high = ordered[math.floor(rank)], ordered[math.ceil(rank)]
    return low + (high - low) * (rank - math.floor(rank))


def summarize(ms: Sequence[float]) -> dict[str, float]:
    stats = {"n": len(ms), **{f"p{q}": percentile(ms, q) for q in (50, 95, 99)}}
    return stats | {"mean": sum(ms) / len(ms), "min": min(ms), "max": max(ms)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is zero."""
    return None if numerator is None or not denominator else numerator / denominator


# Three calls: a Williams design whose rounds also join without a call following itself.
_THREE = [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1], [2, 1, 0], [1, 0, 2]]


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of n calls in which, within a round, each call comes right after every other call
    equally often over one cycle of orders (a Williams design: n orders for even n, 2n for odd),
    and no call follows itself where one order joins the next. A fixed cycle would give each
    call the same neighbour before it every round, and with it that neighbour's cache."""
    if n == 3:
        return [list(order) for order in _THREE]
    if n < 3:  # two calls alternate: each always follows the other, never itself
        return [list(range(n))]
    base, low, high = [0], 1, n - 1
    while len(base) < n:
        base.append(low)
        low += 1
        if len(base) < n:
            base.append(high)
            high -= 1
    orders = [[(b + i) % n for b in base] for i in range(n)]
    return orders if n % 2 == 0 else orders + [order[::-1] for order in orders]


def time_interleaved(
    calls: Calls, *, warmup: int, repeat: int, budget_s: float | None = None, min_repeat: int = 5
) -> dict[str, list[float]]:
    """Milliseconds of each call, round-robin: one call each per round, the rounds' orders
    balanced (balanced_orders), so drift on the machine and the cache a neighbour evicts hit all
    alike. The budget stops the rounds once `min_repeat` are in and a cycle of orders is done
    (or `repeat` is reached)."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    items, started = list(calls.items()), time.perf_counter()
    orders = balanced_orders(len(items))
    for done in range(1, repeat + 1):
        for key, fn in (items[i] for i in orders[(done - 1) % len(orders)]):
            t0 = time.perf_counter()
            fn()
            samples[key].append((time.perf_counter() - t0) * 1000)
        cycle_done = done % len(orders) == 0
        over = budget_s is not None and time.perf_counter() - started > budget_s
        if over and done >= min_repeat and cycle_done:
            break
    return samples


def time_calls(fn: Callable[[], Any], **bounds: Any) -> list[float]:
    return time_interleaved({"": fn}, **bounds)[""]


@dataclass(frozen=True)
class Plan:
    """How a section measures: on which texts, at which batch sizes, how often, how long."""

    sentences: list[str]
    batch_sizes: tuple[int, ...]
    warmup: int
    repeat: int
    budget_s: float  # per batch size
    report: Callable[[str], None] = print

    def timed(self, calls: Calls, interleaved: bool = True) -> dict[str, Any]:
        """Interleaved, or each call in its own block."""
        bounds: dict[str, Any] = {"warmup": self.warmup, "repeat": self.repeat}
        bounds["budget_s"] = self.budget_s
        if interleaved:
            return {k: summarize(s) for k, s in time_interleaved(calls, **bounds).items()}
        return {k: summarize(time_calls(fn, **bounds)) for k, fn in calls.items()}

    def per_batch(self, label: str, row: Callable[[list[str]], dict]) -> dict[str, dict]:
        """row(the first b sentences) for each batch size b, each reported as it comes."""
        rows = {}
        for size in self.batch_sizes:
            rows[str(size)] = found = row(batch(self.sentences, size))
            p50s = [f"{k} {s['p50']:.2f}" for k, s in found.items() if isinstance(s, dict)]
            self.report(f"  {label} batch {size}: " + ", ".join(p50s) + " ms p50")
        return rows
