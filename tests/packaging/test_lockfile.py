"""Exact installs: the hashed locks agree with what pyproject.toml and the images ask for.

`make setup` installs requirements/dev.lock with --require-hashes, so a dependency that
pyproject.toml gains but the lock lacks fails the install, and a stale pin would stay forever.
These tests fail in both cases, before an install does; `make lock` re-pins.
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from onnxlift.lockfile import Pin, canonical, read_pins
from tests.conftest import ROOT

DEV_LOCK = ROOT / "requirements" / "dev.lock"
IMAGES = [ROOT / "functions" / "inference", ROOT / "functions" / "sagemaker"]


def project_requirements() -> list[Requirement]:
    """Everything pyproject.toml asks for: runtime, every extra, the build backend."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        lines += extra
    lines += project["build-system"]["requires"]
    return [r for r in map(Requirement, lines) if canonical(r.name) != "onnxlift"]


def unmet(requirements: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    problems = []
    for req in requirements:
        pin = pins.get(canonical(req.name))
        if pin is None:
            problems.append(f"{req} is not in the lock")
        elif not req.specifier.contains(Version(pin.version), prereleases=True):
            problems.append(f"{req} but the lock pins {pin.version}")
    return problems


def closure(roots: list[Requirement]) -> tuple[set[str], list[str]]:
    """Names reachable from `roots` through installed metadata (markers evaluated here), and
    every edge as a requirement string, so the lock's own consistency can be checked."""
    reached: set[str] = set()
    edges: list[str] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = list(roots)
    while queue:
        req = queue.pop()
        key = (canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        reached.add(key[0])
        for line in md.distribution(req.name).requires or []:
            child = Requirement(line)
            contexts = [{"extra": e} for e in req.extras or {""}]
            if child.marker is None or any(child.marker.evaluate(c) for c in contexts):
                edges.append(str(child))
                queue.append(child)
    return reached, edges


def test_the_lock_reader_understands_continuations(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_text(
        "Foo_Bar==1.2 \\\n    --hash=sha256:" + "a" * 64 + " \\\n    --hash=sha256:" + "b" * 64
        + "\n    # via x\nbaz[extra]==3.0 \\\n    --hash=sha256:" + "c" * 64 + "\n"
    )  # fmt: skip
    pins = read_pins(lock)
    assert set(pins) == {"foo-bar", "baz"}
    assert pins["foo-bar"].version == "1.2" and len(pins["foo-bar"].hashes) == 2
    assert unmet([Requirement("foo.bar>=2")], pins) == ["foo.bar>=2 but the lock pins 1.2"]
    assert unmet([Requirement("qux")], pins) == ["qux is not in the lock"]


def test_every_pin_carries_hashes() -> None:
    for lock in [DEV_LOCK, *(folder / "requirements.txt" for folder in IMAGES)]:
        pins = read_pins(lock)
        assert len(pins) >= 5, lock  # the Lambda image installs 8: what serving imports
        assert [p.name for p in pins.values() if not p.hashes] == [], lock


def test_pyproject_and_the_lock_agree() -> None:
    assert unmet(project_requirements(), read_pins(DEV_LOCK)) == []


def test_the_lock_is_closed_and_has_no_stale_pins() -> None:
    pins = read_pins(DEV_LOCK)
    reached, edges = closure(project_requirements())
    assert unmet([Requirement(e) for e in edges], pins) == []
    assert sorted(reached - set(pins)) == []  # needed but not locked
    assert sorted(set(pins) - reached) == []  # locked but needed by nothing


def test_this_environment_is_the_lock() -> None:
    """The venv holds exactly the locked versions (a stale .venv would test other code)."""
    installed = {canonical(d.metadata["Name"]): d.version for d in md.distributions()}
    drift = {
        name: (pin.version, installed.get(name))
        for name, pin in read_pins(DEV_LOCK).items()
        if installed.get(name) != pin.version
    }
    assert drift == {}


def test_torch_is_the_cpu_build() -> None:
    assert read_pins(DEV_LOCK)["torch"].version.endswith("+cpu")
    assert not [n for n in read_pins(DEV_LOCK) if n.startswith("nvidia-")]


@pytest.mark.parametrize("folder", IMAGES, ids=lambda p: p.name)
def test_image_locks_pin_what_the_image_asks_for(folder: Path) -> None:
    wanted = [
        Requirement(line)
        for line in (folder / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all(str(r.specifier).startswith("==") for r in wanted)
    assert unmet(wanted, read_pins(folder / "requirements.txt")) == []
    dockerfile = (folder / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "--no-deps" in dockerfile
