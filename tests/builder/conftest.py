"""What the builder room's CLI tests share: a scratch project and what a refusal must look like."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch project root with the repo's serving code, so `add` writes models/ there."""
    root = tmp_path / "project"
    (root / "models").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    for part in ("functions", "layers"):
        (root / part).symlink_to(ROOT / part)
    monkeypatch.setenv("ONNXLIFT_ROOT", str(root))
    return root


def nothing_left(project: Path, name: str) -> None:
    """No model folder, no staging folder, no build of `name`."""
    leftovers = [p.name for p in (project / "models").iterdir()]
    assert name not in leftovers and not [n for n in leftovers if n.startswith(".adding")]
    assert not (project / ".onnxlift" / "build" / name).exists()


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith("error:")]
