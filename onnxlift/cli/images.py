"""Image commands: build and push the images ECR mode deploys (`-c onnxlift.image_source=ecr`).

The build is the CDK asset's (infra/images.py describes it, and the CDK stages its context)
and the tag is the one the stack looks up (contract.image_tag): `<model>-<version>` for an
x86_64 Lambda model (`-arm64` appended for arm64), `sagemaker` for the image every SageMaker
model shares. A Lambda image's architecture is resolved as the stack resolves it (cdk.json's
environment and per-model settings over the spec), or given with --architecture.
"""

from __future__ import annotations

import base64
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from onnxlift_serving import contract

from onnxlift import paths
from onnxlift.cli.common import (
    BUCKET_OPTION,
    SIGNING_KEY_OPTION,
    console,
    project_root,
    select_specs,
)
from onnxlift.cli.versions import pull
from onnxlift.errors import OnnxliftError

__all__ = ["image"]

DEFAULT_REPOSITORY = "onnxlift"
BUILD_TIMEOUT_S = 3600  # a cold build downloads the base image and the wheels
STEP_TIMEOUT_S = 120  # docker info, tag, login
PLACEHOLDER_ACCOUNT = "ACCOUNT_ID"  # --dry-run asks AWS nothing


@dataclass(frozen=True)
class Plan:
    tag: str
    local_ref: str
    build: list[str]


# What may go into a registry host and an image reference (ECR's own naming rules).
ECR_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
AWS_ACCOUNT = re.compile(r"[0-9]{12}")
AWS_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]")


def _infra(root: Path) -> ModuleType:
    """The checkout's infra.images: the builds are the stack's, so they come from its code."""
    if not (root / "infra" / "images.py").is_file():
        raise OnnxliftError(
            f"{root} has no infra/images.py: run `onnxlift image` in the onnxlift checkout "
            "(it builds with its Dockerfiles), or set ONNXLIFT_ROOT to it"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import infra.images

    return infra.images


def _target(spec: Any, version: str, root: Path) -> str:
    """lambda or sagemaker, decided as the stack decides it (auto: the pulled manifest)."""
    from infra.config import resolved_target

    return resolved_target(spec, {"models": {spec.name: {"version": version}}}, root)


def _architecture(spec: Any, version: str, root: Path, env: str | None) -> str:
    """The Lambda function's architecture as the stack resolves it for `env`: cdk.json's
    `onnxlift` context (its environment block, per-model entries), then the spec."""
    from infra.config import CONTEXT_KEY, ConfigError, apply_environment, models_from_specs

    cdk_json = root / "cdk.json"
    try:
        document = json.loads(cdk_json.read_text()) if cdk_json.is_file() else {}
        context = dict(document.get("context", {}).get(CONTEXT_KEY) or {})
        if env is not None:
            context["env"] = env
        merged = apply_environment(context)
        merged["models"] = merged["models"] | {
            spec.name: {**(merged["models"].get(spec.name) or {}), "version": version}
        }
        deployments = models_from_specs([spec], merged, root)
    except (OSError, ValueError) as e:  # ConfigError is a ValueError; so is bad JSON
        kind = "cdk.json" if not isinstance(e, ConfigError) else "the deployment config"
        raise OnnxliftError(f"{kind}: {e}") from None
    return deployments[0].architecture if deployments else spec.serving.architecture


def _check_docker() -> None:
    if shutil.which("docker") is None:
        raise OnnxliftError(
            "docker is not installed (or not on PATH); `--dry-run` prints the commands"
        )
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise OnnxliftError(f"docker info did not answer in {STEP_TIMEOUT_S} s") from None
    if info.returncode != 0:
        lines = [ln.strip() for ln in (info.stderr + info.stdout).splitlines() if ln.strip()]
        raise OnnxliftError(f"the Docker engine is not reachable: {(lines or ['?'])[-1]}")


def _run(command: list[str], dry_run: bool, *, stdin: str | None = None, timeout: int) -> None:
    click.echo(shlex.join(command))  # stdout: the commands, runnable by hand
    if dry_run:
        return
    try:
        done = subprocess.run(command, input=stdin, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OnnxliftError(f"`{shlex.join(command[:2])}` ran past {timeout} s") from None
    if done.returncode != 0:
        raise OnnxliftError(
            f"`{shlex.join(command[:2])}` failed (exit {done.returncode}); its output is above"
        )


def _plan(
    ctx: click.Context, name: str, version: str, target: str | None, repository: str, **kw: Any
) -> Plan:
    """Pull the version if the image bakes it in and it is missing, stage the context, and
    say the `docker build` the CDK asset would run."""
    if not ECR_REPOSITORY.fullmatch(repository):  # it becomes a docker argument and a ref
        raise OnnxliftError(f"--repository {repository[:80]!r} is not an ECR repository name")
    root = project_root()
    images = _infra(root)
    (spec,) = select_specs((name,), False)  # unknown model: one line, exit 2
    if not contract.is_canonical_version(version):
        raise OnnxliftError(f"version {version!r} is not a registry version (1, 2, ...)")
    target = target or _target(spec, version, root)
    if target == "sagemaker" and kw["architecture"] not in (None, "x86_64"):
        raise OnnxliftError("the SageMaker image is x86_64 only (its GPU instances are)")
    architecture = kw["architecture"] or (
        _architecture(spec, version, root, kw["env"]) if target == "lambda" else "x86_64"
    )
    build = images.image_build(target, name, version, architecture)
    if not kw["dry_run"]:
        _check_docker()  # before a pull: no download for a build that cannot run
    if build.artifacts is not None and not (root / build.artifacts).is_dir():
        if kw["dry_run"]:
            click.echo(shlex.join(["onnxlift", "pull", name, version]))
        else:
            ctx.invoke(pull, name=name, version=version, bucket=kw["bucket"],
                       signing_key=kw["signing_key"])  # fmt: skip
    console.print(f"staging the {build.target} image's build context (as cdk deploy does)")
    staged = images.stage(build, root, paths.state_dir(root) / "images" / build.tag)
    local_ref = f"{repository}:{build.tag}"
    command = ["docker", "build", "--tag", local_ref, "--file", staged.dockerfile]
    for key, value in staged.build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    command += ["--platform", staged.platform, str(staged.context)]
    return Plan(tag=build.tag, local_ref=local_ref, build=command)


def _registry(region: str | None, account: str | None, dry_run: bool) -> tuple[str, str]:
    """(region, registry host) of the caller's private ECR registry."""
    import boto3

    region = region or boto3.session.Session().region_name
    if not region:
        raise OnnxliftError("no AWS region: pass --region or set AWS_REGION")
    if not AWS_REGION.fullmatch(region):
        raise OnnxliftError(f"--region {region[:40]!r} is not an AWS region")
    if account is None:
        account = PLACEHOLDER_ACCOUNT if dry_run else _caller_account(region)
    elif not AWS_ACCOUNT.fullmatch(account):  # the ECR token goes to this host: 12 digits only
        raise OnnxliftError(f"--account {account[:40]!r} is not a 12-digit AWS account id")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return region, f"{account}.dkr.ecr.{region}.{suffix}"


def _caller_account(region: str) -> str:
    import boto3

    return str(boto3.client("sts", region_name=region).get_caller_identity()["Account"])


def _ecr_password(region: str) -> str:
    """The registry password `aws ecr get-login-password` would print (GetAuthorizationToken)."""
    import boto3

    data = boto3.client("ecr", region_name=region).get_authorization_token()
    token = data["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().split(":", 1)[1]


NAME = click.argument("name")
VERSION = click.argument("version")
TARGET_OPTION = click.option(
    "--target",
    type=click.Choice(contract.IMAGE_TARGETS),
    help="Which image (default: where the spec serves NAME, as the stack decides).",
)
DRY_RUN_OPTION = click.option(
    "--dry-run", is_flag=True, help="Stage the context; print the commands, run none."
)
ENV_OPTION = click.option(
    "--env",
    type=click.Choice(contract.ENVIRONMENTS),
    help="The environment whose cdk.json settings decide the architecture (default: cdk.json's).",
)
ARCHITECTURE_OPTION = click.option(
    "--architecture",
    type=click.Choice(contract.LAMBDA_ARCHITECTURES),
    help="A Lambda image's architecture (default: as the stack resolves it for --env).",
)


@click.group("image")
def image() -> None:
    """Build and push the images ECR mode deploys (-c onnxlift.image_source=ecr)."""


@image.command("build")
@NAME
@VERSION
@TARGET_OPTION
@ENV_OPTION
@ARCHITECTURE_OPTION
@click.option(
    "--repository", default=DEFAULT_REPOSITORY, show_default=True, help="Local image name."
)
@BUCKET_OPTION
@SIGNING_KEY_OPTION
@DRY_RUN_OPTION
@click.pass_context
def build_image(
    ctx: click.Context, name: str, version: str, target: str | None, repository: str, **kw: Any
) -> None:
    """Build NAME VERSION's image as `cdk deploy` would, tagged REPOSITORY:<tag>
    (<tag>: NAME-VERSION[-arm64] for Lambda, `sagemaker` for SageMaker); pulls VERSION if
    missing."""
    plan = _plan(ctx, name, version, target, repository, **kw)
    _run(plan.build, kw["dry_run"], timeout=BUILD_TIMEOUT_S)


@image.command("push")
@NAME
@VERSION
@TARGET_OPTION
@ENV_OPTION
@ARCHITECTURE_OPTION
@click.option(
    "--repository", required=True, help="The ECR repository (-c onnxlift.ecr_repository_name)."
)
@click.option("--region", help="AWS region (default: the AWS configuration's).")
@click.option("--account", help="AWS account of the registry (default: the caller's).")
@BUCKET_OPTION
@SIGNING_KEY_OPTION
@DRY_RUN_OPTION
@click.pass_context
def push_image(
    ctx: click.Context,
    name: str,
    version: str,
    target: str | None,
    repository: str,
    region: str | None,
    account: str | None,
    **kw: Any,
) -> None:
    """Build NAME VERSION's image and push it to ECR under the tag the stack deploys."""
    dry_run = kw["dry_run"]
    region, registry = _registry(region, account, dry_run)
    plan = _plan(ctx, name, version, target, repository, **kw)
    remote_ref = f"{registry}/{repository}:{plan.tag}"
    _run(plan.build, dry_run, timeout=BUILD_TIMEOUT_S)
    _run(["docker", "tag", plan.local_ref, remote_ref], dry_run, timeout=STEP_TIMEOUT_S)
    login = ["docker", "login", "--username", "AWS", "--password-stdin", registry]
    _run(login, dry_run, stdin=None if dry_run else _ecr_password(region), timeout=STEP_TIMEOUT_S)
    _run(["docker", "push", remote_ref], dry_run, timeout=BUILD_TIMEOUT_S)
    if not dry_run:
        console.print(f"pushed {remote_ref}")
