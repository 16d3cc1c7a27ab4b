"""The local stack as a user runs it, shared by the e2e modules here: `onnxlift up` in a
subprocess on 127.0.0.1 (one per module: test_local_stack stops its own at the end)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from onnxlift.local.gateway import Gateway, GatewayConfig
from onnxlift.local.processes import free_port
from tests.conftest import ROOT


def start_stack(
    state: Path, models: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """`onnxlift up` (only `models`, if given) on free ports; its local.json once it is up."""
    port, aws_port = free_port(), free_port()
    env = dict(os.environ, ONNXLIFT_STATE_DIR=str(state), ONNXLIFT_ROOT=str(ROOT))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "onnxlift.cli",
            "up",
            "--port",
            str(port),
            "--aws-port",
            str(aws_port),
            *(f"--model={m}" for m in models),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    info_path = state / "local.json"
    deadline = time.monotonic() + 300
    while (info := read_info(info_path)) is None or info.get("pid") != process.pid:
        # a local.json of another process is a killed stack's leftover: not this one's
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"onnxlift up did not come up:\n{process.stdout.read()}")
        time.sleep(0.2)
    return process, info


def run_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`onnxlift ARGS` as a user runs it beside the stack whose state dir is `state`."""
    env = dict(os.environ, ONNXLIFT_STATE_DIR=str(state), ONNXLIFT_ROOT=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "onnxlift.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read_info(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there, or not written in full yet
        return None


def stop_stack(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return output


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm_build: Any) -> Iterator[dict[str, Any]]:
    state = tmp_path_factory.mktemp("state")
    process, info = start_stack(state)
    info["_process"], info["_state"] = process, state
    try:
        yield info
    finally:
        if process.poll() is None:
            stop_stack(process)


@contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[str]:
    """A local gateway on a free loopback port for the block; its URL."""
    gateway = Gateway(config, port=0)
    gateway.start()
    try:
        yield gateway.url
    finally:
        gateway.stop()
