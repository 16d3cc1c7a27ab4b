"""The container images: what each is built from, and its ECR tag (contract.image_tag).

One place for both users: the stack (asset images at `cdk deploy`, or these tags with
`-c onnxlift.image_source=ecr`) and `onnxlift image build|push`, which builds the same
image outside the CDK and pushes it under the tag the stack will look for.

Plain records (no aws_cdk at import time), so config.py may import from here; `stage`
imports the CDK when called.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxlift_serving import contract

__all__ = [
    "ARTIFACTS_DIR",
    "IMAGE_TARGETS",
    "INFERENCE_DOCKERFILE",
    "PLATFORM",
    "PLATFORMS",
    "SAGEMAKER_DOCKERFILE",
    "ImageBuild",
    "StagedImage",
    "image_build",
    "stage",
]

INFERENCE_DOCKERFILE = "functions/inference/Dockerfile"
SAGEMAKER_DOCKERFILE = "functions/sagemaker/Dockerfile"
ARTIFACTS_DIR = ".onnxlift/artifacts"  # `onnxlift pull` puts versions here; the image bakes one
PLATFORM = "linux/amd64"  # x86_64 functions; SageMaker's GPU instances are x86_64 too
# The image platform of each Lambda architecture (a model's `architecture`).
PLATFORMS = {"x86_64": PLATFORM, "arm64": "linux/arm64"}  # keyed by contract.LAMBDA_ARCHITECTURES
IMAGE_TARGETS = contract.IMAGE_TARGETS


@dataclass(frozen=True, kw_only=True)
class ImageBuild:
    """One image's build: repo-root context cut down by `exclude` (docker-ignore patterns)."""

    target: str
    tag: str
    dockerfile: str  # relative to the context (the repo root)
    exclude: tuple[str, ...]
    display_name: str
    build_args: Mapping[str, str] = field(default_factory=dict)
    artifacts: str | None = None  # the pulled version the image bakes in (Lambda only)
    platform: str = PLATFORM

    def asset_options(self) -> dict[str, Any]:
        """The CDK image asset's settings for this build (the same for a DockerImageAsset and
        a function's DockerImageCode): the stack, `stage` and `onnxlift image` share them."""
        from aws_cdk import IgnoreMode
        from aws_cdk import aws_ecr_assets as ecr_assets

        return {
            "file": self.dockerfile,
            "build_args": dict(self.build_args),
            "platform": ecr_assets.Platform.custom(self.platform),
            "display_name": self.display_name,
            "ignore_mode": IgnoreMode.DOCKER,
            "exclude": list(self.exclude),
        }


def _lambda_build(name: str, version: str, architecture: str) -> ImageBuild:
    # Everything is excluded, then the three inputs are re-included. With IgnoreMode.DOCKER
    # the CDK prunes whole excluded directories (.venv, node_modules, .git, cdk.out, other
    # models' artifacts) instead of walking them, so fingerprinting stays fast however big
    # the tree is; IgnoreMode.GLOB would prune `functions/` before seeing the negation.
    artifacts = f"{ARTIFACTS_DIR}/{name}/{version}"
    return ImageBuild(
        target="lambda",
        tag=contract.image_tag("lambda", name, version, architecture),
        dockerfile=INFERENCE_DOCKERFILE,
        exclude=(
            "*",
            "!functions/inference",
            "!layers/runtime",
            f"!{artifacts}",
            "**/__pycache__",
            "**/*.pyc",
            "**/.pytest_cache",
        ),
        display_name=f"onnxlift-{name}-{version}",
        build_args={str(contract.Env.MODEL_NAME): name, str(contract.Env.MODEL_VERSION): version},
        artifacts=artifacts,
        platform=PLATFORMS[architecture],
    )


def _sagemaker_build(name: str, version: str) -> ImageBuild:
    return ImageBuild(
        target="sagemaker",
        tag=contract.image_tag("sagemaker", name, version),
        dockerfile=SAGEMAKER_DOCKERFILE,
        exclude=("*", "!functions/sagemaker", "!layers/runtime", "**/__pycache__", "**/*.pyc"),
        display_name="onnxlift-sagemaker",
    )


def image_build(target: str, name: str, version: str, architecture: str = "x86_64") -> ImageBuild:
    """The build of `name` `version`'s image for `target` (lambda or sagemaker); a Lambda
    image is built for its function's `architecture` (x86_64 or arm64)."""
    if target == "lambda":
        if architecture not in PLATFORMS:
            raise ValueError(f"architecture {architecture!r} not in {sorted(PLATFORMS)}")
        return _lambda_build(name, version, architecture)
    if target == "sagemaker":
        return _sagemaker_build(name, version)
    raise ValueError(f"image target {target!r} not in {IMAGE_TARGETS}")


@dataclass(frozen=True)
class StagedImage:
    """A build context staged as `cdk deploy` stages it, and the build its manifest asks for."""

    context: Path
    dockerfile: str
    build_args: Mapping[str, str]
    platform: str


def stage(build: ImageBuild, project_root: Path, outdir: Path) -> StagedImage:
    """Stage `build`'s context under `outdir` with the CDK's own asset staging.

    The CDK is the reference: a one-asset app synthesized into `outdir` copies the context
    with the same excludes (and the root .dockerignore, and the Dockerfile kept) that the
    stack's asset gets, and its asset manifest says how cdk-assets would run `docker build`.
    """
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")  # as make does
    from aws_cdk import App, Stack
    from aws_cdk import aws_ecr_assets as ecr_assets

    shutil.rmtree(outdir, ignore_errors=True)  # no stale asset.<hash> folders
    cdk_json = project_root / "cdk.json"  # the app's feature flags
    context = json.loads(cdk_json.read_text()).get("context", {}) if cdk_json.is_file() else {}
    app = App(outdir=str(outdir), context=context, builtin_cloud_formation_validation=False)
    ecr_assets.DockerImageAsset(
        Stack(app, "Image"), "Image", directory=str(project_root), **build.asset_options()
    )
    app.synth()
    manifest = json.loads((outdir / "Image.assets.json").read_text())
    (image,) = manifest["dockerImages"].values()
    source = image["source"]
    return StagedImage(
        context=outdir / source["directory"],
        dockerfile=source.get("dockerFile", "Dockerfile"),
        build_args=source.get("dockerBuildArgs", {}),
        platform=source.get("platform", build.platform),
    )
