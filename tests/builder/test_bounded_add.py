"""`onnxlift add` and `build` do their checks and reference run in a child process that a time
limit, a memory limit and Ctrl-C stop; a model with external data can be added, published,
fetched and served; nothing of a stopped add stays behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxlift.cli import cli
from onnxlift.local.processes import free_port
from tests.builder.hostile_models import (
    constant_of_huge_shape,
    external_data_model,
    point_external_data,
    runaway_loop,
    save,
)
from tests.conftest import ROOT, error_lines, nothing_left

pytestmark = pytest.mark.slow  # child processes and time limits: out of `make test-fast`


def test_a_runaway_reference_run_is_stopped_at_the_time_limit(
    project: Path, tmp_path: Path
) -> None:
    path = save(runaway_loop(), tmp_path / "spin.onnx")
    started = time.monotonic()
    result = CliRunner().invoke(
        cli, ["add", str(path), "--name", "spin", "--no-publish", "--time-limit-s", "4"]
    )
    elapsed = time.monotonic() - started
    assert result.exit_code == 3, result.output
    (line,) = error_lines(result.output)
    assert "ran past its 4 s time limit" in line and "--time-limit-s" in line
    assert elapsed < 30, elapsed  # stopped, not run to its 10^12 trips
    nothing_left(project, "spin")


def test_a_huge_constant_is_stopped_at_the_memory_limit(project: Path, tmp_path: Path) -> None:
    path = save(constant_of_huge_shape(), tmp_path / "huge.onnx")
    result = CliRunner().invoke(
        cli, ["add", str(path), "--name", "huge", "--no-publish", "--memory-limit-mb", "1024"]
    )
    assert result.exit_code == 3, result.output
    (line,) = error_lines(result.output)
    assert "more than its 1,024 MiB memory limit" in line
    assert "40,000,000,000 bytes" in line  # what it tried, in the user's terms
    nothing_left(project, "huge")


SPIN_SPEC = (
    'name = "spin"\ntask = "tensor"\n[source]\nframework = "onnx"\nfile = "model.onnx"\n'
    '[parity]\nmetric = "max_abs_error"\nthreshold = 1e-5\n'
)


def test_build_of_a_model_folder_is_bounded_too(project: Path, tmp_path: Path) -> None:
    folder = project / "models" / "spin"
    folder.mkdir()
    save(runaway_loop(), folder / "model.onnx")
    (folder / "model.toml").write_text(SPIN_SPEC)
    result = CliRunner().invoke(cli, ["build", "spin", "--time-limit-s", "4"])
    assert result.exit_code == 3, result.output
    assert "ran past its 4 s time limit" in result.output


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: children of children too)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for a parent to read its status."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


def start_add(project: Path, path: Path, name: str) -> tuple[subprocess.Popen[str], list[str]]:
    return start_cli(project, "add", str(path), "--name", name, "--no-publish")


def start_cli(project: Path, *argv: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`onnxlift ARGV` in its own process group (as a shell runs a foreground job), its output
    collected line by line, returned once a build's reference run is under way."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT}:{ROOT / 'layers' / 'runtime'}")
    env["ONNXLIFT_STATE_DIR"] = str(project / ".onnxlift")
    process = subprocess.Popen(
        [sys.executable, "-m", "onnxlift.cli", *argv],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout or []), daemon=True).start()
    deadline = time.monotonic() + 60
    while not any("running it on the parity inputs" in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    time.sleep(1.0)  # the reference run is under way in the child
    return process, lines


def all_gone(pids: set[int], within_s: float = 10) -> dict[int, str]:
    deadline = time.monotonic() + within_s
    while (left := {pid: cmdline(pid) for pid in pids if alive(pid)}) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    return left


@pytest.mark.parametrize(
    ("how", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)]
)
def test_ctrl_c_or_kill_stops_add_and_its_child_and_leaves_nothing(
    project: Path, tmp_path: Path, how: signal.Signals, group: bool
) -> None:
    """Ctrl-C reaches the whole group; `kill PID` the parent alone."""
    process, lines = start_add(project, save(runaway_loop(), tmp_path / "spin.onnx"), "spin")
    below = descendants(process.pid)
    assert below, "the build runs in a child process"
    assert_interrupted(process, lines, how, group=group)
    assert not all_gone(below)
    nothing_left(project, "spin")


def assert_interrupted(
    process: subprocess.Popen[str], lines: list[str], how: signal.Signals, *, group: bool
) -> None:
    """Send `how` (to the process group as a terminal does, or to the process alone) and
    expect exit 130 with the one `interrupted` line within 30 s."""
    (os.killpg if group else os.kill)(process.pid, how)
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    time.sleep(0.2)
    output = "".join(lines)
    assert code == 130, output
    assert "interrupted" in output and "Traceback" not in output


def test_ctrl_c_stops_up_while_it_builds(project: Path, tmp_path: Path) -> None:
    """`up` builds before it serves; a runaway build must not make it deaf to Ctrl-C."""
    folder = project / "models" / "spin"
    folder.mkdir()
    save(runaway_loop(), folder / "model.onnx")
    (folder / "model.toml").write_text(SPIN_SPEC)
    ports = [str(free_port()), str(free_port())]
    process, lines = start_cli(project, "up", "--port", ports[0], "--aws-port", ports[1])
    below = descendants(process.pid)
    assert_interrupted(process, lines, signal.SIGINT, group=True)
    assert not all_gone(below)  # the build's child and moto server both
    assert not (project / ".onnxlift" / "local.json").exists()


def test_a_killed_add_takes_its_child_along_and_the_next_add_sweeps_its_leftovers(
    project: Path, tmp_path: Path
) -> None:
    process, _ = start_add(project, save(runaway_loop(), tmp_path / "spin.onnx"), "spin")
    below = descendants(process.pid)
    os.kill(process.pid, signal.SIGKILL)  # no handler runs: the staging folder stays...
    process.wait(timeout=10)
    assert not all_gone(below), "the build's child outlived its killed parent"
    assert [p.name for p in (project / "models").glob(".adding-spin-*")]
    path, _ = external_data_model(tmp_path / "outside")
    result = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (project / "models").iterdir()) == ["ext"]  # ...until now
    assert not (project / ".onnxlift" / "build" / "spin").exists()


def add_external_and_publish(tmp_path: Path, registry: Any) -> np.ndarray:
    """`onnxlift add` of a model whose weight lies in weights.bin, published as ext version 1."""
    path, weight = external_data_model(tmp_path / "outside")
    result = CliRunner().invoke(
        cli, ["add", str(path), "--name", "ext", "--bucket", registry.bucket]
    )
    assert result.exit_code == 0, result.output
    return weight


def fetch_ext(registry: Any, cache: Path) -> Path:
    from onnxlift_serving.artifact import fetch_from_registry

    return fetch_from_registry(
        bucket=registry.bucket, name="ext", version="1", cache_dir=cache, s3_client=registry.s3
    )


def test_a_model_with_external_data_is_added_published_fetched_and_served(
    project: Path, tmp_path: Path, registry: Any
) -> None:
    from onnxlift_serving.artifact import load_artifact
    from onnxlift_serving.session import create_session

    weight = add_external_and_publish(tmp_path, registry)
    assert (project / "models" / "ext" / "weights.bin").is_file()  # copied with the model
    manifest = registry.manifest("ext", "1")
    assert set(manifest["assets"]) == {"external/weights.bin", "parity.json"}
    artifact = load_artifact(fetch_ext(registry, tmp_path / "cache"))  # every sha256 checked
    session = create_session(artifact.model_path)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, x @ weight, rtol=1e-6)


def test_a_tampered_external_data_file_is_refused_at_fetch(
    project: Path, tmp_path: Path, registry: Any
) -> None:
    from onnxlift_serving.errors import ArtifactError

    add_external_and_publish(tmp_path, registry)
    key = "models/ext/1/assets/external/weights.bin"
    registry.s3.put_object(Bucket=registry.bucket, Key=key, Body=b"\0" * 128)
    with pytest.raises(ArtifactError, match="sha256"):
        fetch_ext(registry, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("weights.bin"))  # nothing of it kept


@pytest.mark.parametrize(
    ("entries", "fragment"),
    [
        ({"offset": "64", "length": "128"}, "points at 128 bytes from offset 64"),
        ({"length": "4096"}, "points at 4,096 bytes"),
        ({"offset": "-8"}, "from offset -8"),
        ({"offset": "many"}, "unreadable external data"),
        ({"length": "many"}, "unreadable external data"),
    ],
)
def test_external_data_beyond_its_file_is_one_line(
    project: Path, tmp_path: Path, entries: dict[str, str], fragment: str
) -> None:
    path, _ = external_data_model(tmp_path / "outside")
    point_external_data(path, **entries)
    result = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert fragment in line
    nothing_left(project, "ext")


def test_the_served_graph_points_at_its_external_data_under_assets(
    project: Path, tmp_path: Path
) -> None:
    path, _ = external_data_model(tmp_path / "outside")
    result = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
    assert result.exit_code == 0, result.output
    (built,) = (project / ".onnxlift" / "build" / "ext").iterdir()
    served = onnx.load(str(built / "model.onnx"), load_external_data=False)
    (location,) = {e.value for t in served.graph.initializer for e in t.external_data
                   if e.key == "location"}  # fmt: skip
    assert location == "assets/external/weights.bin"
    assert (built / location).is_file()


def test_the_sweep_leaves_a_live_adds_folder_and_build_alone(project: Path, tmp_path: Path) -> None:
    """Another add still running (its lock held: here by this test) keeps its staging folder
    and its build, whatever its process is called."""
    import fcntl

    staging = project / "models" / ".adding-busy-abcd1234"
    (staging / "busy").mkdir(parents=True)
    build = project / ".onnxlift" / "build" / "busy" / "0123456789abcdef"
    build.mkdir(parents=True)
    with (staging / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path, _ = external_data_model(tmp_path / "outside")
        result = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
        assert result.exit_code == 0, result.output
        assert staging.is_dir() and build.is_dir()
    again = CliRunner().invoke(cli, ["add", str(path), "--name", "ext2", "--no-publish"])
    assert again.exit_code == 0, again.output
    assert not staging.exists() and not build.parent.exists()  # its lock is free now: swept
