"""`onnxlift verify` against the real inference handler behind the local gateway, over HTTP on
127.0.0.1: a version whose parity set the served model meets passes (exit 0); one whose kept
reference no longer matches what is served fails (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from onnxlift_serving.artifact import sha256_file
from onnxlift_serving.contract import sandbox_environment, serving_environment

from onnxlift.cli import cli
from onnxlift.local.gateway import FunctionTarget, Gateway, GatewayConfig
from onnxlift.local.lambda_runtime import load_handler, make_server
from tests.builder.hostile_models import external_data_model
from tests.conftest import HANDLER

KEY = "verify-key"


@pytest.fixture
def ext(project: Path, tmp_path: Path, registry: Any) -> Path:
    """`onnxlift add` of a tiny MatMul model, published as ext version 1; its build folder."""
    path, _ = external_data_model(tmp_path / "outside")
    added = CliRunner().invoke(
        cli, ["add", str(path), "--name", "ext", "--bucket", registry.bucket]
    )
    assert added.exit_code == 0, added.output
    (manifest,) = (project / ".onnxlift" / "build" / "ext").glob("*/manifest.json")
    return manifest.parent


@pytest.fixture
def api(ext: Path, registry: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The real handler serving ext from the registry (moto in this process) behind the
    gateway, which demands the key: the API's base URL."""
    env = serving_environment(
        name="ext",
        version="1",
        source="registry",
        bucket=registry.bucket,
        cache_dir=str(tmp_path / "sandbox"),
        threads=1,
    ) | sandbox_environment("ext", 512)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("handler", None)
    function = make_server(
        load_handler(HANDLER),
        host="127.0.0.1",
        port=0,
        function_name="ext",
        memory_mb=512,
        timeout_s=10,
    )
    function.start()
    target = FunctionTarget("ext", "127.0.0.1", function.port)
    gateway = Gateway(
        GatewayConfig(api_key=KEY, functions={"ext": target}, default_function="ext"), port=0
    )
    gateway.start()
    try:
        yield gateway.url
    finally:
        gateway.stop()
        function.stop()
        sys.modules.pop("handler", None)


def publish_perturbed(build: Path, registry: Any, tmp_path: Path) -> str:
    """The same model as a new version whose kept reference outputs are off by 0.5."""
    copy = tmp_path / "perturbed"
    shutil.copytree(build, copy, ignore=shutil.ignore_patterns("work"))
    parity_path = copy / "assets" / "parity.json"
    doc = json.loads(parity_path.read_text())
    doc["reference"] = {
        name: [[x + 0.5 for x in row] for row in rows] for name, rows in doc["reference"].items()
    }
    parity_path.write_text(json.dumps(doc))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["assets"]["parity.json"] = sha256_file(parity_path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return registry.publish(copy, name="ext")


def verify(registry: Any, url: str, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["verify", "ext", "--url", url, "--api-key", KEY, "--bucket", registry.bucket, *args],
    )


def verdicts(output: str) -> list[str]:
    """The verdict lines (the handler, in this process, logs to the same stdout)."""
    return [line for line in output.splitlines() if line.startswith("ext version")]


def test_the_parity_set_is_kept_with_the_version_and_sha_checked(ext: Path) -> None:
    manifest = json.loads((ext / "manifest.json").read_text())
    parity_path = ext / "assets" / "parity.json"
    assert manifest["assets"]["parity.json"] == sha256_file(parity_path)
    doc = json.loads(parity_path.read_text())
    assert (doc["metric"], doc["threshold"]) == (
        manifest["parity"]["metric"],
        manifest["parity"]["threshold"],
    )
    assert doc["outputs"] == ["y"] and 1 <= len(doc["requests"]) <= 16
    (tensor,) = doc["requests"][0]["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"][0]) == ("x", "FP32", 1)
    assert len(doc["reference"]["y"]) == len(doc["requests"])


def test_verify_passes_against_the_served_version(registry: Any, api: str) -> None:
    result = verify(registry, api, "--version", "1")
    assert result.exit_code == 0, result.output
    (line,) = verdicts(result.output)
    assert line.startswith("ext version 1 at http://127.0.0.1:") and "parity passed" in line
    figure = float(line.split("max_abs_error ")[1].split()[0])
    assert figure <= 1e-4  # the same arithmetic, served over HTTP


def test_verify_fails_with_exit_2_when_the_answers_miss_the_reference(
    ext: Path, registry: Any, api: str, tmp_path: Path
) -> None:
    version = publish_perturbed(ext, registry, tmp_path)
    result = verify(registry, api, "--version", version)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = verdicts(result.output)
    assert "parity FAILED: max_abs_error 0.5" in line and "worst input #" in line


def test_verify_without_the_key_is_one_error_line(registry: Any, api: str) -> None:
    result = CliRunner().invoke(
        cli, ["verify", "ext", "--url", api, "--bucket", registry.bucket, "--version", "1"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "answered 403" in result.output


def test_a_tampered_parity_set_is_refused_before_anything_is_sent(ext: Path, registry: Any) -> None:
    key = "models/ext/1/assets/parity.json"
    registry.s3.put_object(Bucket=registry.bucket, Key=key, Body=b'{"format": 1}')
    # no API at this URL: the refusal comes first
    result = verify(registry, "http://127.0.0.1:9", "--version", "1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "parity.json is missing or does not match its sha256" in result.output


def test_without_url_or_version_it_asks_the_local_stack_for_the_newest(
    project: Path, registry: Any, api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ONNXLIFT_STATE_DIR", raising=False)
    (project / ".onnxlift" / "local.json").write_text(json.dumps({"url": api, "api_key": KEY}))
    result = CliRunner().invoke(cli, ["verify", "ext", "--bucket", registry.bucket])
    assert result.exit_code == 0, result.output
    (line,) = verdicts(result.output)  # no alias yet: the newest version
    assert line.startswith(f"ext version 1 at {api}: parity passed")
