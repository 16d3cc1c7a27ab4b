"""A registry in moto with the real MiniLM build published, and the real handler on top of it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from onnxlift_serving.contract import sandbox_environment, serving_environment

from tests.conftest import ROOT

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
