"""Nothing lost: a version the CLI called published, and an alias it moved, are still there
after `onnxlift up` is killed with SIGKILL (no clean stop, no save on the way down) and
started again on the same state dir. The smallest model (textclf) keeps it quick."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from onnxlift_serving.artifact import fetch_from_registry, load_artifact

from onnxlift.local.moto_server import LOCAL_CREDENTIALS
from onnxlift.local.processes import free_port, port_in_use
from tests.local.conftest import run_cli as cli
from tests.local.conftest import start_stack, stop_stack

pytestmark = [pytest.mark.e2e]
MODEL = "textclf"
PROBE = ["The striker scored twice in the final", "HEAVY RAIN FLOODED THE VALLEY"]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited: only its exit status is left to collect


def wait_gone(pids: set[int], port: int, timeout: float = 15.0) -> set[int]:
    """The pids still alive once they and `port` are gone, or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {p for p in pids if alive(p)}
        if not left and not port_in_use(port):
            return left
        time.sleep(0.2)
    return {p for p in pids if alive(p)}


def listed(state: Path) -> list[dict[str, Any]]:
    rows = json.loads(ok(cli(state, "list", "--json")))
    return sorted((r for r in rows if r["name"] == MODEL), key=lambda r: int(r["version"]))


def classify(info: dict[str, Any], path: str) -> requests.Response:
    body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": PROBE}]}
    return requests.post(
        f"{info['url']}{path}", json=body, headers={"x-api-key": info["api_key"]}, timeout=30
    )


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process trees in /proc")
def test_sigkill_after_publish_loses_nothing(tmp_path: Path) -> None:
    started = time.perf_counter()
    state = tmp_path / "state"
    process, info = start_stack(state, (MODEL,))
    try:
        first = info["models"][MODEL]["version"]
        said = ok(cli(state, "publish", MODEL))
        assert said.startswith(f"published {MODEL} version "), said
        second = said.split()[3]
        assert int(second) > int(first)
        assert f"prod -> version {second}" in ok(cli(state, "promote", MODEL, second))
        before = listed(state)
        children = children_of(process.pid)
        port, aws = str(free_port()), str(free_port())
        second_up = cli(state, "up", "--port", port, "--aws-port", aws, f"--model={MODEL}")
        assert second_up.returncode == 2 and "already running" in second_up.stderr
        assert json.loads((state / "local.json").read_text())["pid"] == process.pid  # untouched
    finally:
        os.kill(process.pid, signal.SIGKILL)  # right after the CLI said so: no clean stop
        process.communicate(timeout=30)
    assert [r["version"] for r in before] == [first, second]
    assert children, "onnxlift up had no child processes (moto, sandboxes)"

    # Its children do not outlive it: nothing keeps the old ports or the old state.
    aws_port = int(info["aws_endpoint_url"].rsplit(":", 1)[1])
    assert wait_gone(children, aws_port) == set()
    assert not port_in_use(aws_port)
    orphaned = cli(state, "list")  # the killed stack's local.json: a clear word, no traceback
    assert orphaned.returncode == 2 and "not running" in orphaned.stderr, orphaned.stderr

    process, info = start_stack(state, (MODEL,))
    try:
        after = listed(state)
        assert [r["version"] for r in after] == [first, second]
        assert [r["aliases"] for r in after] == [[], ["prod"]]
        for old, new in zip(before, after, strict=True):
            assert (new["complete"], new["sha256"], new["created_at"]) == (
                True,
                old["sha256"],
                old["created_at"],
            )
        assert info["models"][MODEL]["version"] == second  # prod, as promoted before the kill
        s3 = boto3.client(
            "s3",
            endpoint_url=info["aws_endpoint_url"],
            region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        for version in (first, second):  # a fresh download: every file's sha256 is checked
            folder = fetch_from_registry(
                bucket=info["registry_bucket"],
                name=MODEL,
                version=version,
                cache_dir=tmp_path / "pulled",
                s3_client=s3,
            )
            assert load_artifact(folder).manifest["version"] == version
        response = classify(info, f"/v2/models/{MODEL}/infer")
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == second
        labels = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
        assert labels == ["sports", "weather"]
    finally:
        output = stop_stack(process)
    assert "did not stop cleanly" in output and "restored" in output, output
    assert "published version" not in output, output  # restored, not rebuilt and republished
    seconds = time.perf_counter() - started
    print(f"\nSIGKILL durability: publish, kill, up again and every check in {seconds:.1f} s")
