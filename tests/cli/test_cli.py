"""The CLI, driven in-process with click's runner."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from onnxlift import __version__
from onnxlift.cli import cli


def run(*args: str, **env: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env)


def test_version_and_help() -> None:
    assert __version__ in run("--version").output
    result = run("--help")
    for command in ("build", "publish", "list", "up"):
        assert command in result.output


def test_unknown_model_is_a_clean_error() -> None:
    result = run("build", "nope")
    assert result.exit_code == 2
    assert "unknown model(s): nope" in result.output


def test_list_without_a_registry_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.delenv("ONNXLIFT_BUCKET", raising=False)
    result = run("list", ONNXLIFT_STATE_DIR=str(tmp_path))
    assert result.exit_code == 2
    assert "--bucket" in result.output and "onnxlift up" in result.output
