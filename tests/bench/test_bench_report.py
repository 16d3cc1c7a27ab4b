"""Goals, the headline and the Markdown of the bench report, on made-up figures."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from onnxlift.bench import report
from onnxlift.bench.size import canonical, local_closure


def stats(p50: float) -> dict[str, float]:
    return {
        "n": 10,
        "p50": p50,
        "p95": p50 * 1.1,
        "p99": p50 * 1.2,
        "mean": p50,
        "min": p50,
        "max": p50 * 1.3,
    }


def model(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "minilm",
        "build": {"parity": {"int8": {"min": 0.992, "mean": 0.998}}},
        "tiers": {
            "threads": 1,
            "batches": {
                "1": {
                    "texts": 1,
                    "sequence_length": 9,
                    "floor": stats(1.0),
                    "prep_run": stats(1.1),
                    "v2": stats(1.15),
                    "handler": stats(1.2),
                    "http": stats(2.0),
                }
            },
        },
        "alternatives": {
            "threads": 1,
            "variants": {
                "int8": {"label": "INT8", "bytes": 31e6, "parity": {"min": 0.992, "mean": 0.998}},
                "fp32_fused": {"label": "FP32 fused", "bytes": 90e6, "parity": None},
                "torch_st": {"label": "PyTorch", "parity": {"min": 1.0, "mean": 1.0}},
            },
            "batches": {
                "1": {"int8": stats(1.1), "fp32_fused": stats(2.5), "torch_st": stats(7.7)}
            },
        },
        "coldstart": {
            "runs": 1,
            "threads": 1,
            "kinds": {
                k: {
                    "runs": 1,
                    "median_wall_s": w,
                    "median_imports_s": w / 2,
                    "median_load_s": 0.1,
                    "median_first_inference_s": 0.01,
                    "min_wall_s": w,
                    "max_wall_s": w,
                    "median_in_process_s": w,
                }
                | (
                    {
                        "median_phases": {
                            "imports_s": 0.2,
                            "tracer_s": 0.0,
                            "verify_s": 0.03,
                            "session_s": 0.05,
                            "pipeline_s": 0.01,
                            "init_s": 0.3,
                        }
                    }
                    if k.startswith("handler_int8")
                    else {}
                )
                for k, w in {
                    "int8": 0.3,
                    "torch": 4.5,
                    "handler_int8": 0.5,
                    "handler_int8_untraced": 0.29,
                }.items()
            },
        },
        "size": {
            "method": "test",
            "onnxlift": {
                "dependencies_bytes": 200e6,
                "model_bytes": 31e6,
                "code_bytes": 1e5,
                "total_bytes": 231.1e6,
                "packages": {"onnxruntime": 80e6},
            },
            "pytorch": {
                "dependencies_bytes": 1900e6,
                "model_bytes": 91e6,
                "total_bytes": 1991e6,
                "packages": {"torch": 750e6},
            },
        },
        "throughput": {
            "cores": 2,
            "floor_ms": 1.0,
            "limit_rps": 2000.0,
            "batch": 1,
            "levels": {
                c: {
                    "concurrency": int(c),
                    "requests": 10,
                    "seconds": 1.0,
                    "rps": r,
                    "fraction_of_limit": r / 2000.0,
                    "latency_ms": stats(1.5),
                }
                for c, r in {"1": 800.0, "2": 1500.0}.items()
            },
        },
    }
    for key, value in overrides.items():
        data[key] = value
    return data


def test_goals_all_listed_with_a_verdict_and_a_figure() -> None:
    goals = report.goals("minilm", model())
    assert [g["id"] for g in goals] == [key for key, _ in report.GOALS]
    assert all(isinstance(g["met"], bool) and g["figure"] for g in goals)
    verdict = {g["id"]: g["met"] for g in goals}
    assert verdict == {
        "int8_vs_fp32": True,  # 2.5 / 1.1 = 2.27x, min cos 0.992
        "warm_vs_pytorch": True,  # 7.7 / 1.1 = 7x
        "cold_vs_pytorch": True,  # handler: 4.5 / 0.29 = 15.5x
        "handler_init": True,  # 0.3 s
        "size_vs_pytorch": True,  # 8.6x
        "handler_overhead": True,  # 1.2 / 1.1 - 1 = 9.1%
        "throughput_c2": True,  # 75%
    }


def test_handler_init_goal_reads_the_handlers_own_phases() -> None:
    data = model()
    phases = data["coldstart"]["kinds"]["handler_int8_untraced"]["median_phases"]
    phases["init_s"] = 0.36
    goal = next(g for g in report.goals("minilm", data) if g["id"] == "handler_init")
    assert goal["met"] is False and goal["figure"] == "0.360 s"
    lines = report._cold_md(data["coldstart"])
    assert "| imports | tracer | verify | session | pipeline | init |" in lines


def test_goal_fails_on_parity_even_when_fast() -> None:
    data = model()
    data["alternatives"]["variants"]["int8"]["parity"] = {"min": 0.98, "mean": 0.99}
    goal = next(g for g in report.goals("minilm", data) if g["id"] == "int8_vs_fp32")
    assert goal["met"] is False and "0.9800" in goal["figure"]


def test_goals_not_met_and_not_measured() -> None:
    data = model()
    data["tiers"]["batches"]["1"]["handler"] = stats(1.5)
    data.pop("throughput")
    goals = {g["id"]: g for g in report.goals("minilm", data)}
    assert goals["handler_overhead"]["met"] is False
    assert goals["handler_overhead"]["figure"] == "+36%"
    assert goals["throughput_c2"]["met"] is None
    assert goals["throughput_c2"]["figure"] == "not measured"


def test_markdown_has_headline_goals_and_details() -> None:
    data = model()
    results = {
        "meta": {
            "command": "onnxlift bench",
            "mode": "full",
            "generated_at": "now",
            "git": {"commit": "abc", "dirty": False},
            "duration_s": 12.0,
            "machine": {"cpu": "cpu", "cores": 2, "python": "3.11"},
            "versions": {"onnxruntime": "1", "torch": "2"},
        },
        "goals": report.goals("minilm", data),
        "models": {"minilm": data},
        "method": ["one", "two"],
    }
    text = report.render_markdown(copy.deepcopy(results), ["overview.png"])
    assert "## Goals" in text and "![overview](overview.png)" in text
    for _, goal in report.GOALS:
        assert f"| minilm | {goal} |" in text
    for heading in (
        "Tiers of the request path",
        "INT8 vs FP32 vs PyTorch",
        "Cold start",
        "Deployable size",
        "Throughput through the local gateway",
        "## Method",
    ):
        assert heading in text
    assert "2.27x" in text  # INT8 vs fused FP32, beside its parity
    assert "0.9920" in text


def test_plots_are_pngs(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    results = {"models": {"minilm": model()}}
    written = report.write_plots(results, tmp_path)
    assert "overview.png" in written
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_closure_follows_requirements_and_markers() -> None:
    closure = local_closure(["pytest"])
    assert closure["pytest"] != "missing"
    assert "pluggy" in closure  # a dependency of pytest
    assert canonical("Typing_Extensions") == "typing-extensions"
