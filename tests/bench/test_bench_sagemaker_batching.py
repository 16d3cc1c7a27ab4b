"""The SageMaker dynamic batching section: its modes, ratios and report table (no server)."""

from __future__ import annotations

from typing import Any

import pytest
from onnxlift_serving.contract import Env

from onnxlift.bench import report, sagemaker_batching


def level(rps: float, p50: float, p99: float) -> dict[str, Any]:
    stats = {"n": 10, "p50": p50, "p95": p99, "p99": p99, "mean": p50, "min": 1.0, "max": p99}
    return {"requests": 800, "rps": rps, "latency_ms": stats}


def mode(label: str, rps: float, p50: float, p99: float, idle: float) -> dict[str, Any]:
    return {"label": label, "c32": level(rps, p50, p99), "c1": level(50.0, idle, idle)}


def rows() -> dict[str, Any]:
    on = mode("on", 90.0, 300.0, 500.0, 10.0)
    on["dynamic_batching"] = {"merged_runs": 10, "merged_requests": 150}
    return {
        "off": mode("off", 60.0, 500.0, 800.0, 10.0),
        "off_threads": mode("off 32", 100.0, 280.0, 900.0, 9.0),
        "on": on,
        "on_delay": mode("on 5 ms", 80.0, 350.0, 600.0, 14.5),
    }


def test_modes_set_batching_only_where_it_is_on() -> None:
    found = {m.key: m.env for m in sagemaker_batching.modes(16, 5.0)}
    # as many threads as the launcher gives a batching worker: 16 running + 32 queued + 1
    assert found["off"] == {} and found["off_threads"] == {Env.SAGEMAKER_THREADS: "49"}
    assert found["on"][Env.BATCH_MAX_SIZE] == "16"
    assert found["on"][Env.BATCH_MAX_QUEUE_DELAY_MS] == "0"
    assert found["on_delay"][Env.BATCH_MAX_QUEUE_DELAY_MS] == "5"


def test_ratios_compare_on_with_off_from_the_same_round() -> None:
    ratios = sagemaker_batching.ratios(rows())
    assert ratios["rps_on_over_off"] == pytest.approx(1.5)
    assert ratios["rps_on_over_off_threads"] == pytest.approx(0.9)
    assert ratios["p50_on_over_off"] == pytest.approx(0.6)
    assert ratios["idle_p50_delay_cost_ms"] == pytest.approx(4.5)


def test_the_report_shows_each_round_and_its_ratio() -> None:
    result = {
        "concurrency": 32,
        "cores": 2,
        "delay_ms": 5.0,
        "max_abs_diff_on_vs_off": 4.5e-8,
        "rounds": [{"modes": rows(), "ratios": sagemaker_batching.ratios(rows())}],
    }
    text = "\n".join(report._batching_md("minilm-fp32", result))
    assert "SageMaker dynamic batching, 32 concurrent clients" in text
    assert "on / off (as shipped) 1.50x req/s" in text
    assert "a 5 ms delay costs +4.5 ms" in text
    assert "| on | 800 | 90.0 |" in text and "| 15.0 |" in text  # 150 requests / 10 runs
    assert "4.5e-08" in text
