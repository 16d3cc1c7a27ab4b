"""The PreTraffic hook (functions/pretraffic/handler.py) as CodeDeploy runs it, every AWS call
over real HTTP on 127.0.0.1: the registry in moto server, the new function version the real
inference handler behind the Lambda invoke API (the RIE's route, which boto3's invoke speaks),
and CodeDeploy a loopback recorder of put_lifecycle_event_hook_execution_status (moto has
no lifecycle hooks). A version whose parity set the served model meets is Succeeded; one
whose kept reference it misses, or whose parity set was altered, is Failed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from uuid import uuid4

import boto3
import pytest
from click.testing import CliRunner
from onnxlift_serving.artifact import sha256_file
from onnxlift_serving.contract import (
    Env,
    sandbox_environment,
    serving_environment,
)
from onnxlift_serving.signing import create_file_key, load_file_key

from infra.rollout import HOOK_SERVING_MODULES, HookBundle
from onnxlift.cli import cli
from onnxlift.local.lambda_runtime import load_handler, make_server
from onnxlift.local.moto_server import LOCAL_CREDENTIALS, start_moto
from onnxlift.local.processes import free_port
from onnxlift.registry import Registry
from tests.builder.hostile_models import external_data_model
from tests.conftest import HANDLER, ROOT, published_copy

HOOK_DIR = ROOT / "functions" / "pretraffic"
EVENT = {"DeploymentId": "d-ABCDEF123", "LifecycleEventHookExecutionId": "hook-exec-1"}


def load_hook() -> Any:
    """The hook's handler module. Its onnxlift_serving imports resolve to this checkout's
    layers/runtime, the files the asset bundles (test_the_hook_asset_is_self_contained)."""
    spec = importlib.util.spec_from_file_location("pretraffic_handler", HOOK_DIR / "handler.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CodeDeployRecorder(BaseHTTPRequestHandler):
    """CodeDeploy's JSON 1.1 API, one operation: records each call, answers as AWS does."""

    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append((self.headers["X-Amz-Target"], body))
        reply = json.dumps({"lifecycleEventHookExecutionId": body["lifecycleEventHookExecutionId"]})
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto server and the CodeDeploy recorder on loopback."""
    port = free_port()
    moto = start_moto(port=port, log=tmp_path_factory.mktemp("moto") / "moto.log")
    recorder = ThreadingHTTPServer(("127.0.0.1", 0), CodeDeployRecorder)
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "s3": f"http://127.0.0.1:{port}",
            "codedeploy": f"http://127.0.0.1:{recorder.server_port}",
        }
    finally:
        recorder.shutdown()
        moto.stop()


def client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def published(project: Path, tmp_path: Path, endpoints: dict[str, str]) -> tuple[Registry, Path]:
    """A tiny MatMul model, built by `onnxlift add`, published as ext version 1 in moto (a
    bucket of its own: the module's moto outlives each test)."""
    path, _ = external_data_model(tmp_path / "outside")
    added = CliRunner().invoke(cli, ["add", str(path), "--name", "ext", "--no-publish"])
    assert added.exit_code == 0, added.output
    (manifest,) = (project / ".onnxlift" / "build" / "ext").glob("*/manifest.json")
    registry = Registry(f"onnxlift-pretraffic-{uuid4().hex[:12]}", client("s3", endpoints["s3"]))
    registry.ensure_bucket()
    assert registry.publish(manifest.parent, name="ext", version="1") == "1"
    return registry, manifest.parent


@contextmanager
def serving(build: Path, version: str, tmp_path: Path, mp: pytest.MonkeyPatch) -> Iterator[str]:
    """The real inference handler with the build baked in as `version` (as the new function
    version of a deployment holds it), behind the invoke API: its URL."""
    baked = published_copy(build, tmp_path / "baked", version)
    env = serving_environment(name="ext", source="image", model_dir=str(baked), threads=1)
    for key, value in (env | sandbox_environment("ext", 512)).items():
        mp.setenv(key, value)
    sys.modules.pop("handler", None)
    server = make_server(
        load_handler(HANDLER), host="127.0.0.1", port=0, function_name="ext", memory_mb=512,
        timeout_s=10,
    )  # fmt: skip
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
        sys.modules.pop("handler", None)


def run_hook(
    endpoints: dict[str, str],
    function: str,
    bucket: str,
    version: str,
    monkeypatch: pytest.MonkeyPatch,
    context: Any = None,
    signing: dict[str, str] | None = None,
) -> tuple[dict[str, str], list[tuple[str, dict[str, Any]]]]:
    hook = load_hook()
    for key, value in {
        Env.TARGET_FUNCTION_ARN: "function",  # the RIE's one function
        Env.MODEL_NAME: "ext",
        Env.MODEL_VERSION: version,
        Env.REGISTRY_BUCKET: bucket,
        **(signing or {}),
    }.items():
        monkeypatch.setenv(key, value)
    CodeDeployRecorder.calls = []
    clients = {
        "s3": client("s3", endpoints["s3"]),
        "lambda": client("lambda", function),
        "codedeploy": client("codedeploy", endpoints["codedeploy"]),
    }
    result = hook.handler(dict(EVENT), context, clients=clients)
    return result, CodeDeployRecorder.calls


def reported(calls: list[tuple[str, dict[str, Any]]]) -> str:
    ((target, body),) = calls
    assert target == "CodeDeploy_20141006.PutLifecycleEventHookExecutionStatus"
    assert body["deploymentId"] == EVENT["DeploymentId"]
    assert body["lifecycleEventHookExecutionId"] == EVENT["LifecycleEventHookExecutionId"]
    return str(body["status"])


def republish(build: Path, registry: Registry, tmp_path: Path, change: Any) -> str:
    """The same model as version 2, its parity set changed by `change(doc)`."""
    copy = tmp_path / "v2"
    shutil.copytree(build, copy, ignore=shutil.ignore_patterns("work"))
    path = copy / "assets" / "parity.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["assets"]["parity.json"] = sha256_file(path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return registry.publish(copy, name="ext", version="2")


def test_the_hook_passes_a_version_that_meets_its_parity_set(
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, build = published
    with serving(build, "1", tmp_path, monkeypatch) as function:
        result, calls = run_hook(endpoints, function, registry.bucket, "1", monkeypatch)
    assert reported(calls) == "Succeeded" == result["status"], result
    assert "parity passed: max_abs_error" in result["message"]
    figure = float(result["message"].split("max_abs_error ")[1].split()[0])
    assert figure <= 1e-4


def test_the_hook_fails_a_version_whose_answers_miss_the_reference(
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def perturb(doc: dict[str, Any]) -> None:
        doc["reference"]["y"] = [[x + 0.5 for x in row] for row in doc["reference"]["y"]]

    registry, build = published
    republish(build, registry, tmp_path, perturb)
    with serving(build, "2", tmp_path, monkeypatch) as function:
        result, calls = run_hook(endpoints, function, registry.bucket, "2", monkeypatch)
    assert reported(calls) == "Failed" == result["status"]
    assert "parity FAILED: max_abs_error 0.5" in result["message"], result


class ShortOfTime:
    """A Lambda context with less time left than the hook keeps in reserve."""

    def get_remaining_time_in_millis(self) -> int:
        return (load_hook().DEADLINE_MARGIN_S - 1) * 1000


def test_a_hook_short_of_time_reports_failed_before_it_is_killed(
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed at its timeout, a hook never reports and CodeDeploy waits an hour: it stops
    itself first and reports Failed."""
    registry, build = published
    with serving(build, "1", tmp_path, monkeypatch) as function:
        result, calls = run_hook(
            endpoints, function, registry.bucket, "1", monkeypatch, context=ShortOfTime()
        )
    assert reported(calls) == "Failed" and "ran out of time" in result["message"]


def test_an_altered_parity_set_fails_the_deployment(
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry, build = published
    key = "models/ext/1/assets/parity.json"
    raw = registry.s3.get_object(Bucket=registry.bucket, Key=key)["Body"].read()
    altered = raw.replace(b'"threshold"', b'"threshold" ')
    registry.s3.put_object(Bucket=registry.bucket, Key=key, Body=altered)
    with serving(build, "1", tmp_path, monkeypatch) as function:
        result, calls = run_hook(endpoints, function, registry.bucket, "1", monkeypatch)
    assert reported(calls) == "Failed" and "sha256 does not match" in result["message"]


def _signed_registry(registry: Registry, key: Path) -> Registry:
    return Registry(registry.bucket, registry.s3, signer=load_file_key(key))


@pytest.mark.parametrize(
    ("signer", "verifier", "required", "status", "message"),
    [
        ("a", "a", "true", "Succeeded", "parity passed"),
        ("b", "a", "true", "Failed", "does not verify with key"),
        (None, "a", "true", "Failed", "is not signed, and this deployment requires it"),
        (None, "a", "false", "Succeeded", "parity passed"),  # kms-optional: unsigned loads
        ("b", "a", "false", "Failed", "does not verify with key"),  # ... a signed one must verify
    ],
)
def test_the_hook_checks_the_manifest_signature_before_trusting_the_parity_set(
    signer: str | None,
    verifier: str,
    required: str,
    status: str,
    message: str,
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With signing on, the hook applies the serving function's own check (the same env
    names, the same SignaturePolicy): a version signed by another key, or unsigned where
    signatures are required, fails the deployment before any parity input is sent."""
    registry, build = published
    keys = {}
    for who in ("a", "b"):
        keys[who] = (tmp_path / f"{who}.pem", tmp_path / f"{who}.pub.pem")
        create_file_key(*keys[who])
    publisher = registry if signer is None else _signed_registry(registry, keys[signer][0])
    assert publisher.publish(build, name="ext", version="2") == "2"
    signing = {
        Env.MODEL_SIGNATURE_KEY: f"file:{keys[verifier][1]}",
        Env.MODEL_SIGNATURE_REQUIRED: required,
    }
    with serving(build, "2", tmp_path, monkeypatch) as function:
        result, calls = run_hook(
            endpoints, function, registry.bucket, "2", monkeypatch, signing=signing
        )
    assert reported(calls) == status == result["status"], result
    assert message in result["message"], result


# What the stack bundles into the hook's zip (infra.rollout): the handler and these modules.
BUNDLED = ["handler.py"] + [f"onnxlift_serving/{m}" for m in HOOK_SERVING_MODULES]


def test_the_hook_asset_is_self_contained(tmp_path: Path) -> None:
    """The zip Lambda runs: the handler beside the serving runtime's own files (one copy of
    the parity math and the signature check), importable with the standard library alone
    (no numpy, no onnxruntime; boto3 only when it calls AWS)."""
    HookBundle(ROOT).try_bundle(str(tmp_path))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.py"))
    assert files == sorted(BUNDLED)
    runtime = ROOT / "layers" / "runtime"
    for module in HOOK_SERVING_MODULES:
        source = runtime / "onnxlift_serving" / module
        assert (tmp_path / "onnxlift_serving" / module).read_bytes() == source.read_bytes()
    probe = (
        "import json, sys, handler; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'onnxruntime', 'boto3', 'botocore', 'onnxlift_serving'))))"
    )
    # -S: no site-packages, so only the bundle and the standard library can be imported.
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin"}, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    imported = set(json.loads(done.stdout))
    assert imported == {
        "onnxlift_serving", "onnxlift_serving.contract", "onnxlift_serving.errors",
        "onnxlift_serving.layout", "onnxlift_serving.signing", "onnxlift_serving.verify",
    }  # fmt: skip


def test_a_signed_manifest_copied_to_another_version_fails(
    endpoints: dict[str, str],
    published: tuple[Registry, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The signature covers the manifest's bytes, not its place: version 2's signed manifest,
    signature and parity set copied under version 3 (by someone who may write the bucket but
    not sign) fail version 3's deployment."""
    registry, build = published
    key = (tmp_path / "k.pem", tmp_path / "k.pub.pem")
    create_file_key(*key)
    assert _signed_registry(registry, key[0]).publish(build, name="ext", version="2") == "2"
    s3, bucket = registry.s3, registry.bucket
    for suffix in ("manifest.json", "manifest.sig", "assets/parity.json"):
        body = s3.get_object(Bucket=bucket, Key=f"models/ext/2/{suffix}")["Body"].read()
        s3.put_object(Bucket=bucket, Key=f"models/ext/3/{suffix}", Body=body)
    signing = {Env.MODEL_SIGNATURE_KEY: f"file:{key[1]}", Env.MODEL_SIGNATURE_REQUIRED: "true"}
    with serving(build, "3", tmp_path, monkeypatch) as function:
        result, calls = run_hook(
            endpoints, function, registry.bucket, "3", monkeypatch, signing=signing
        )
    assert reported(calls) == "Failed" == result["status"]
    assert "ext version 3: its manifest names ext version 2" in result["message"], result
