"""publish and list through the CLI against a moto registry, with the real build."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from onnxlift.cli import cli

pytestmark = pytest.mark.slow


def test_publish_then_list_then_refuse_overwrite(registry: Any, minilm_build: Any) -> None:
    runner = CliRunner()
    env = {"ONNXLIFT_BUCKET": registry.bucket}
    first = runner.invoke(cli, ["publish", "minilm"], env=env)
    assert first.exit_code == 0, first.output
    assert "published minilm version 1" in first.output

    listed = runner.invoke(cli, ["list", "--json"], env=env)
    rows = json.loads(listed.output)
    assert [(r["name"], r["version"], r["complete"]) for r in rows] == [("minilm", "1", True)]
    assert rows[0]["parity"] >= rows[0]["threshold"] == 0.99
    assert rows[0]["bytes"] == minilm_build.manifest["bytes"]
    assert rows[0]["integer_kernels"]["session_config"] == {"session.x64quantprecision": "1"}
    assert rows[0]["integer_kernels"]["weights_cannot_saturate"] is True
    assert rows[0]["parity_measured_on"] == minilm_build.manifest["parity"]["measured_on"]
    flags = " ".join(rows[0]["parity_measured_on"]["flags"]) or "x86_64"
    assert rows[0]["integer_kernels_summary"].startswith("7-bit weights; x64quantprecision=1")
    assert rows[0]["integer_kernels_summary"].endswith(f"parity on {flags}")
    table = runner.invoke(cli, ["list"], env=env | {"COLUMNS": "250"})
    assert table.exit_code == 0 and "integer kernels" in table.output

    again = runner.invoke(cli, ["publish", "minilm", "--version", "1"], env=env)
    assert again.exit_code == 2
    assert "already published" in again.output and "immutable" in again.output
    assert registry.manifest("minilm", "1")["sha256"] == minilm_build.manifest["sha256"]


def test_pull_puts_the_version_where_the_image_bakes_it(
    registry: Any, minilm_build: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxlift_serving.artifact import load_artifact

    monkeypatch.setenv("ONNXLIFT_ROOT", str(tmp_path))
    (tmp_path / "models").symlink_to(minilm_build.spec.folder.parent)
    (tmp_path / "pyproject.toml").write_text("")
    registry.publish(minilm_build.folder, name="minilm")
    result = CliRunner().invoke(
        cli, ["pull", "minilm", "1"], env={"ONNXLIFT_BUCKET": registry.bucket}
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / ".onnxlift" / "artifacts" / "minilm" / "1"
    assert load_artifact(folder).manifest["sha256"] == minilm_build.manifest["sha256"]
