"""`onnxlift bench --quick` end to end: it starts the local stack, so it is e2e and slow.

It checks the harness (the three outputs, well-formed), never the speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from onnxlift.bench.report import GOALS
from onnxlift.cli import cli
from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
PNG = b"\x89PNG\r\n\x1a\n"


def test_bench_quick_writes_the_three_outputs(
    tmp_path: Path, minilm_build: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "bench"
    monkeypatch.setenv("ONNXLIFT_BENCH_CACHE", str(tmp_path / "cache"))  # nothing cached: offline
    result = CliRunner().invoke(
        cli, ["bench", "--quick", "--out", str(out)], env={"ONNXLIFT_ROOT": str(ROOT)}
    )
    assert result.exit_code == 0, result.output + repr(result.exception)

    results = json.loads((out / "results.json").read_text())
    assert {"meta", "goals", "headline", "models", "method", "plots"} <= set(results)
    assert results["meta"]["mode"] == "quick"
    minilm = results["models"]["minilm"]
    for section in ("tiers", "alternatives", "threads", "throughput", "coldstart", "size"):
        assert minilm[section], section
    assert set(minilm["tiers"]["batches"]["1"]) >= {"floor", "prep_run", "v2", "handler", "http"}
    assert minilm["size"]["method"].startswith("local environment estimate")
    batching = results["sagemaker_batching"]["minilm-fp32"]
    assert set(batching["rounds"][0]["modes"]) == {"off", "off_threads", "on", "on_delay"}
    assert batching["rounds"][0]["modes"]["on"]["dynamic_batching"]["runs"] > 0
    assert [g["id"] for g in results["goals"]] == [key for key, _ in GOALS]
    for goal in results["goals"]:
        assert goal["met"] in (True, False), goal
        assert goal["figure"] and "not measured" not in goal["figure"], goal

    report = (out / "REPORT.md").read_text()
    assert report.startswith("# onnxlift bench")
    for goal in results["goals"]:
        assert goal["figure"] in report
    assert results["plots"]
    for name in results["plots"]:
        assert (out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in report
