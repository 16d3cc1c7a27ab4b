"""A child of the local stack (moto, a sandbox, gunicorn and its workers) dies with its parent,
even when the parent is killed with SIGKILL and cleans nothing up: real processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHILD = """
import json, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # gunicorn-like
with open(sys.argv[1], "w") as out:
    json.dump({"argv": sys.argv[1:], "worker": worker.pid, "name": __name__}, out)
time.sleep(120)
"""

PARENT = """
import sys, time
from pathlib import Path
from onnxlift.local.processes import base_env, start_child
args, log = [sys.argv[1], sys.argv[2], "--flag"], Path(sys.argv[3])
child = start_child("child", args, log=log, env=base_env())
print(child.process.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_sigkill_of_the_parent_takes_the_child_and_its_workers(tmp_path: Path) -> None:
    script, report = tmp_path / "child.py", tmp_path / "report.json"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "layers/runtime")]))
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(script), str(report), str(tmp_path / "child.log")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 30
        while not report.is_file() or not report.read_text().endswith("}"):
            assert time.monotonic() < deadline, (tmp_path / "child.log").read_text()
            time.sleep(0.05)
        seen = json.loads(report.read_text())
        # the script runs as itself: its own argv and __main__, in the process Popen started
        assert seen["argv"] == [str(report), "--flag"] and seen["name"] == "__main__"
        assert alive(child) and alive(seen["worker"])
    finally:
        os.kill(parent.pid, signal.SIGKILL)
        parent.communicate(timeout=10)
    killed_at = time.monotonic()
    while (alive(child) or alive(seen["worker"])) and time.monotonic() - killed_at < 5:
        time.sleep(0.05)
    gone_in = time.monotonic() - killed_at
    assert not alive(child) and not alive(seen["worker"]), f"still there after {gone_in:.1f} s"
    assert gone_in < 2.0
