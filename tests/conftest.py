"""Shared fixtures: fake AWS credentials, the real MiniLM build, events and a Lambda context."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from onnxlift_serving.contract import sandbox_environment, serving_environment

ROOT = Path(__file__).resolve().parents[1]
EVENTS = Path(__file__).parent / "events"
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials first, so nothing can reach a real account (moto's own advice)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="session")
def minilm_spec() -> Any:
    from onnxlift.spec import load_spec

    return load_spec(ROOT / "models" / "minilm")


@pytest.fixture(scope="session")
def minilm_build(minilm_spec: Any) -> Any:
    """The real model, built once (cached by fingerprint: across runs while the model, the
    toolchain and the code it is built with stay the same) from the real weights."""
    from onnxlift.builder.build import build_model

    return build_model(minilm_spec, root=ROOT, report=lambda _: None)


@pytest.fixture(scope="session")
def reference_embeddings(minilm_spec: Any) -> Any:
    """sentence-transformers on PyTorch for a few sentences: what the service must match."""
    from onnxlift.builder.build import load_source_module

    source = load_source_module(minilm_spec)

    def embed(texts: list[str]) -> Any:
        return source.reference(texts)

    return embed


def published_copy(build_folder: Path, target: Path, version: str = "1") -> Path:
    """A build as a published version looks: the artifact files, the manifest's version set."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(build_folder / "model.onnx", target / "model.onnx")
    shutil.copytree(build_folder / "assets", target / "assets", dirs_exist_ok=True)
    manifest = json.loads((build_folder / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps(manifest | {"version": version}))
    return target


def load_event(name: str, **overrides: Any) -> dict[str, Any]:
    event = json.loads((EVENTS / f"{name}.json").read_text())
    event.update(overrides)
    return event


class FakeLambdaContext:
    function_name = "onnxlift-minilm"
    memory_limit_in_mb = 2048
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:onnxlift-minilm"
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"
    function_version = "$LATEST"
    log_group_name = "/aws/lambda/onnxlift-minilm"
    log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


# -- the real handler against a moto registry -----------------------------------------
BUCKET = "onnxlift-test-registry"
HANDLER = ROOT / "functions" / "inference" / "handler.py"


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def registry(s3: Any) -> Any:
    from onnxlift.registry import Registry

    reg = Registry(BUCKET, s3)
    reg.ensure_bucket()
    return reg


@pytest.fixture
def published(registry: Any, minilm_build: Any) -> str:
    return registry.publish(minilm_build.folder, name="minilm")


@pytest.fixture
def load_handler(
    published: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., Any]:
    """Import the real handler module in a fresh 'sandbox' configured through its environment."""
    from onnxlift.local.lambda_runtime import load_handler as import_handler

    def load(**env: str) -> Any:
        settings = (
            serving_environment(
                name="minilm",
                version=published,
                source="registry",
                bucket=BUCKET,
                cache_dir=str(tmp_path / "models"),
                threads=1,
            )
            | sandbox_environment("minilm", 2048)
            | env
        )
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        sys.modules.pop("handler", None)
        import_handler(HANDLER)
        return sys.modules["handler"]

    return load


def call(
    module: Any,
    context: Any,
    body: Any = None,
    *,
    path: str = "/v2/models/minilm/infer",
    method: str = "POST",
    **overrides: Any,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    event = load_event("infer", path=path, httpMethod=method, resource=path)
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
    elif method == "GET":
        event["body"] = None
    event.update(overrides)
    result = module.lambda_handler(event, context)
    headers = dict(result.get("headers") or {})
    for key, values in (result.get("multiValueHeaders") or {}).items():
        headers[key] = ", ".join(values)
    return result["statusCode"], json.loads(result["body"]), headers


def texts_body(texts: list[str], **extra: Any) -> dict[str, Any]:
    tensor = {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return {"inputs": [tensor | extra]}


# -- a scratch project for the CLI ---------------------------------------------------
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` is true by construction: any test that needs the real MiniLM build (directly or
    through another fixture) is marked, so `make test-fast` never builds a model."""
    for item in items:
        if "minilm_build" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
