"""The registry commands refuse in one line with exit code 2, never a traceback: unknown models
and versions, versions that are not whole numbers, an overwrite, a bad alias, and whatever AWS
itself refuses (issue 11, deliverable 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from onnxlift.cli import cli
from tests.builder.hostile_models import external_data_model
from tests.conftest import error_lines

pytestmark = pytest.mark.slow  # one real add (a child process) per test


@pytest.fixture
def added(project: Path, tmp_path: Path, registry: Any) -> Any:
    """A project with one small model, `ext`, published as version 3 in the test registry."""
    path, _ = external_data_model(tmp_path / "outside")
    result = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
    assert result.exit_code == 0, result.output
    published = CliRunner().invoke(
        cli, ["publish", "ext", "--version", "3"], env={"ONNXLIFT_BUCKET": registry.bucket}
    )
    assert published.exit_code == 0, published.output
    return registry


REFUSALS = [
    (["publish", "nosuch"], "unknown model(s): nosuch"),
    (["publish", "../x"], "unknown model(s): ../x"),
    (["publish", "ext", "--version", "01"], "whole number without leading zeros, got '01'"),
    (["publish", "ext", "--version", "²"], "whole number without leading zeros, got '²'"),
    (["publish", "ext", "--version", "3"], "ext version 3 is already published"),
    (["pull", "ext", "99"], "ext version 99 is not in s3://"),
    (["pull", "ext", "01"], "ext version 01 is not in s3://"),
    (["pull", "../ext", "3"], "../ext version 3 is not in s3://"),
    (["promote", "ext", "42"], "ext version 42 is not in s3://"),
    (["promote", "ext", "3", "--alias", "../p"], "alias must be letters"),
    (["rollback", "ext"], "ext has no alias 'prod'"),
    (["list", "--bucket", "no-such-bucket"], "AWS refused ListObjectsV2: NoSuchBucket"),
]


@pytest.mark.parametrize(("argv", "fragment"), REFUSALS, ids=[" ".join(a) for a, _ in REFUSALS])
def test_a_registry_refusal_is_one_line_and_exit_2(
    added: Any, project: Path, argv: list[str], fragment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXLIFT_BUCKET", added.bucket)
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert fragment in line
    assert added.versions("ext") == ["3"]  # nothing published, nothing overwritten
    assert not (project / ".onnxlift" / "artifacts").exists()  # nothing pulled
