"""The bench's statistics helpers and its inputs: pure and fast."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest

from onnxlift.bench.corpus import batch, bench_sentences, v2_body
from onnxlift.bench.timing import (
    balanced_orders,
    percentile,
    ratio,
    summarize,
    time_calls,
    time_interleaved,
)


@pytest.mark.parametrize("q", [0, 5, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.5]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_keys_and_order() -> None:
    stats = summarize([float(v) for v in range(1, 101)])
    assert stats["n"] == 100 and stats["min"] == 1 and stats["max"] == 100
    assert stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert stats["p50"] == pytest.approx(50.5)


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(6.0, 2.0) == 3.0
    assert ratio(None, 2.0) is None and ratio(1.0, None) is None and ratio(1.0, 0) is None


def test_time_calls_warms_up_then_counts() -> None:
    calls: list[int] = []
    samples = time_calls(lambda: calls.append(1), warmup=3, repeat=7)
    assert len(calls) == 10 and len(samples) == 7 and all(s >= 0 for s in samples)


def test_time_calls_budget_stops_early_but_keeps_a_minimum() -> None:
    samples = time_calls(lambda: None, warmup=0, repeat=10_000, budget_s=0.0, min_repeat=4)
    assert len(samples) == 4


def test_interleaved_gives_every_call_the_same_rounds() -> None:
    order: list[str] = []
    samples = time_interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, warmup=1, repeat=3
    )
    # warm-up a, b; then rounds a b, a b, a b: each always after the other, never after itself
    assert order == ["a", "b", "a", "b", "a", "b", "a", "b"]
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}


def test_corpus_is_shared_and_bounded(tmp_path) -> None:
    parity = tmp_path / "parity.txt"
    parity.write_text(
        "ok\nA sentence that is long enough.\n" + "x" * 500 + "\nAnother fine one here.\n"
    )
    sentences = bench_sentences(parity, count=5)
    assert len(sentences) == 5
    assert all(20 <= len(s) <= 120 for s in sentences)
    assert batch(sentences, 2) == sentences[:2]
    with pytest.raises(ValueError):
        batch(sentences, 6)
    assert '"shape": [2]' in v2_body(sentences[:2])


def test_two_calls_simply_alternate() -> None:
    assert balanced_orders(2) == [[0, 1]]  # each after the other, never after itself


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_balanced_orders_give_every_call_every_neighbour_alike(n: int) -> None:
    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    pairs = collections.Counter((a, b) for order in orders for a, b in itertools.pairwise(order))
    assert len(pairs) == n * (n - 1) and len(set(pairs.values())) == 1
    stream = [i for _ in range(3) for order in orders for i in order]  # rounds back to back
    assert all(a != b for a, b in itertools.pairwise(stream))  # nothing runs after itself


def test_a_spent_budget_still_ends_the_cycle_of_orders() -> None:
    """Five calls: 10 orders a cycle. Stopping after min_repeat (5) rounds would leave the
    neighbours unbalanced, so the rounds go on to 10."""
    calls = {k: (lambda: None) for k in "abcde"}
    samples = time_interleaved(calls, warmup=0, repeat=100, budget_s=0.0, min_repeat=5)
    assert {k: len(v) for k, v in samples.items()} == dict.fromkeys("abcde", 10)


def test_interleaved_calls_do_not_always_follow_the_same_neighbour() -> None:
    """With a fixed cycle, 'a' always ran right after 'e' (whatever 'e' left in the cache)."""
    trace: list[str] = []
    calls = {k: (lambda k=k: trace.append(k)) for k in "abcde"}
    time_interleaved(calls, warmup=0, repeat=10)
    assert collections.Counter(trace) == dict.fromkeys("abcde", 10)
    before_a = collections.Counter(trace[i - 1] for i in range(1, len(trace)) if trace[i] == "a")
    assert set(before_a) == set("bcde") and max(before_a.values()) <= 3
