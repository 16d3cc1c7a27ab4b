"""Shared, synthesized-once stacks for the infra tests.

Every synth uses the feature flags of the real cdk.json and registers the cdk-nag
AwsSolutions pack, exactly as app.py does; the CDK's built-in CloudFormation validation
(~10 s) is left to the CLI test. Synths are session-scoped: build once, assert many times.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `infra` is a top-level package of the repo, not installed
    sys.path.insert(0, str(ROOT))

from aws_cdk import App  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from infra import nag  # noqa: E402
from infra.config import DeploymentConfig, ModelDeployment  # noqa: E402
from infra.onnxlift_stack import OnnxliftStack  # noqa: E402
from infra.rollout import HOOK_SERVING_MODULES  # noqa: E402

CDK_CONTEXT: dict[str, Any] = json.loads((ROOT / "cdk.json").read_text())["context"]

MINILM = ModelDeployment(
    name="minilm", version="1", memory_mb=2048, timeout_s=29, reserved_concurrency=10
)
BGE = ModelDeployment(name="bge", version="2", memory_mb=7076, timeout_s=20, reserved_concurrency=3)


@dataclass
class Synth:
    app: App
    stack: OnnxliftStack
    template: Template
    outdir: Path

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.template.to_json()["Resources"]

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == cfn_type}

    def logical_id(self, construct: Any) -> str:
        return str(self.stack.resolve(self.stack.get_logical_id(construct.node.default_child)))


def build(
    config: DeploymentConfig,
    project_root: Path,
    outdir: Path,
    *,
    mutate: Callable[[OnnxliftStack], None] | None = None,
    **stack_kwargs: Any,
) -> tuple[App, OnnxliftStack]:
    """An app like app.py's (flags, nag pack), optionally mutated before synth."""
    app = App(
        context=CDK_CONTEXT,
        outdir=str(outdir),
        builtin_cloud_formation_validation=False,
    )
    stack = OnnxliftStack(app, "Onnxlift", config=config, project_root=project_root, **stack_kwargs)
    if mutate is not None:
        mutate(stack)
    nag.enable(app)
    return app, stack


def synth(config: DeploymentConfig, project_root: Path, outdir: Path) -> Synth:
    app, stack = build(config, project_root, outdir)
    # Raises on any unacknowledged error-level nag finding; the report is in outdir.
    app.synth()
    return Synth(app=app, stack=stack, template=Template.from_stack(stack), outdir=outdir)


@pytest.fixture(scope="session")
def cdk_context() -> dict[str, Any]:
    return CDK_CONTEXT


@pytest.fixture(scope="session")
def build_app() -> Callable[..., tuple[App, OnnxliftStack]]:
    return build


@pytest.fixture(scope="session")
def project_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo-shaped tree: the image inputs plus the heavy things the image must never see."""
    root = tmp_path_factory.mktemp("repo")
    files = {
        "functions/inference/Dockerfile": "FROM public.ecr.aws/lambda/python:3.12\n",
        "functions/inference/handler.py": "def handler(event, context): ...\n",
        "functions/inference/__pycache__/handler.cpython-311.pyc": "junk",
        "functions/pretraffic/handler.py": "def handler(event, context): ...\n",
        **{f"layers/runtime/onnxlift_serving/{m}": "" for m in HOOK_SERVING_MODULES},
        ".onnxlift/artifacts/minilm/1/model.onnx": "onnx-bytes",
        ".onnxlift/artifacts/minilm/1/manifest.json": "{}",
        ".onnxlift/artifacts/minilm/0/model.onnx": "an older version",
        ".onnxlift/artifacts/bge/2/model.onnx": "another model",
        "models/minilm/model.toml": "name = 'minilm'\n",
        "onnxlift/cli.py": "",
        "tests/unit/test_x.py": "",
        "node_modules/aws-cdk/package.json": "{}",
        ".git/HEAD": "ref: refs/heads/main\n",
        "cdk.out/manifest.json": "{}",
        "README.md": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # A .venv the fingerprinting must prune rather than walk: 20,000 files.
    for i in range(200):
        pkg = root / ".venv/lib/python3.11/site-packages" / f"pkg{i}"
        pkg.mkdir(parents=True)
        for j in range(100):
            (pkg / f"m{j}.py").write_text("x = 1\n")
    return root


@pytest.fixture(scope="session")
def one(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The default deployment: one model, asset images, WAF, account logging role."""
    config = DeploymentConfig(models=(MINILM,))
    return synth(config, project_root, tmp_path_factory.mktemp("one"))


@pytest.fixture(scope="session")
def two(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """Two models, prebuilt ECR images, registry-loaded models, quota, no WAF/account role."""
    config = DeploymentConfig(
        models=(MINILM, BGE),
        registry_bucket_name="acme-onnxlift-registry",
        stage_name="prod",
        throttle_rate_limit=20,
        throttle_burst_limit=40,
        quota_per_day=10_000,
        image_source="ecr",
        ecr_repository_name="onnxlift/inference",
        model_source="registry",
        log_retention_days=90,
        waf_enabled=False,
        manage_apigateway_account=False,
    )
    return synth(config, project_root, tmp_path_factory.mktemp("two"))
