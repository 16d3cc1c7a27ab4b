"""`onnxlift image build|push` builds what the stack's assets build and tags what ECR mode
deploys: both read off synthesized stacks, the commands off `--dry-run`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from infra.config import DeploymentConfig, ModelDeployment, SageMakerDeployment
from onnxlift.cli import cli
from onnxlift.errors import OnnxliftError
from tests.infra.conftest import ROOT, Synth, synth

REPOSITORY = "onnxlift/inference"
# Real model folders (the command knows only models/<name>); the target is given explicitly.
# (name, version, architecture): the arm64 one is tagged apart from an x86_64 build.
LAMBDA_MODELS = (("minilm", "1", "x86_64"), ("textclf", "2", "arm64"))
SAGEMAKER_MODEL = SageMakerDeployment(name="tabular", version="3")


def _lambda(name: str, version: str, architecture: str) -> ModelDeployment:
    return ModelDeployment(
        name=name,
        version=version,
        memory_mb=2048,
        timeout_s=29,
        reserved_concurrency=2,
        architecture=architecture,
    )


def _config(**kwargs: Any) -> DeploymentConfig:
    return DeploymentConfig(
        models=tuple(_lambda(*m) for m in LAMBDA_MODELS),
        sagemaker_models=(SAGEMAKER_MODEL,),
        **kwargs,
    )


@pytest.fixture(scope="module")
def ecr(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    config = _config(image_source="ecr", ecr_repository_name=REPOSITORY, model_source="registry")
    return synth(config, ROOT, tmp_path_factory.mktemp("ecr"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synth(_config(), ROOT, tmp_path_factory.mktemp("assets"))


def run(state: Path, *args: str, **env: str | None) -> Any:
    return CliRunner().invoke(cli, ["image", *args], env={"ONNXLIFT_STATE_DIR": str(state), **env})


def docker_lines(output: str, verb: str) -> list[list[str]]:
    return [shlex.split(ln) for ln in output.splitlines() if ln.startswith(f"docker {verb} ")]


def option(argv: list[str], name: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == name]


def _uri_tail(uri: Any) -> str:
    """`<repo>:<tag>`, the last part of an ECR image URI resolved to an Fn::Join."""
    return str(uri["Fn::Join"][1][-1]).removeprefix("/")


def test_pushed_tags_are_the_tags_ecr_mode_deploys(ecr: Synth, tmp_path: Path) -> None:
    deployed = {_uri_tail(f["Properties"]["Code"]["ImageUri"]) for f in _image_functions(ecr)}
    (model,) = ecr.of_type("AWS::SageMaker::Model").values()
    deployed.add(_uri_tail(model["Properties"]["PrimaryContainer"]["Image"]))
    tags = {"minilm-1", "textclf-2-arm64", "sagemaker"}
    assert deployed == {f"{REPOSITORY}:{tag}" for tag in tags}

    pushed = set()
    targets = [(n, v, "lambda", a) for n, v, a in LAMBDA_MODELS]
    for name, version, target, arch in [*targets, ("tabular", "3", "sagemaker", "x86_64")]:
        result = run(tmp_path, "push", name, version, "--target", target, "--repository",
                     REPOSITORY, "--region", "eu-west-1", "--architecture", arch,
                     "--dry-run")  # fmt: skip
        assert result.exit_code == 0, result.output
        ((_, _, local, remote),) = docker_lines(result.output, "tag")
        assert docker_lines(result.output, "push") == [["docker", "push", remote]]
        assert option(docker_lines(result.output, "build")[0], "--tag") == [local]
        assert remote.startswith("ACCOUNT_ID.dkr.ecr.eu-west-1.amazonaws.com/")
        platform = "linux/arm64" if arch == "arm64" else "linux/amd64"
        assert option(docker_lines(result.output, "build")[0], "--platform") == [platform]
        pushed.add(remote.split("/", 1)[1])
    assert pushed == deployed


def _image_functions(built: Synth) -> list[dict[str, Any]]:
    functions = built.of_type("AWS::Lambda::Function").values()
    return [f for f in functions if "ImageUri" in f["Properties"].get("Code", {})]


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_dry_run_build_is_the_cdk_assets(assets: Synth, tmp_path: Path) -> None:
    manifest = json.loads((assets.outdir / "Onnxlift.assets.json").read_text())
    sources = [image["source"] for image in manifest["dockerImages"].values()]
    assert len(sources) == 3  # two Lambda models' images and the one SageMaker image
    for name, version, target in (("minilm", "1", "lambda"), ("tabular", "3", "sagemaker")):
        result = run(tmp_path, "build", name, version, "--target", target, "--dry-run")
        assert result.exit_code == 0, result.output
        (argv,) = docker_lines(result.output, "build")
        context = argv[-1]
        (dockerfile,) = option(argv, "--file")
        args = dict(a.split("=", 1) for a in option(argv, "--build-arg"))
        (source,) = [
            s
            for s in sources
            if (s["dockerFile"], s.get("dockerBuildArgs", {})) == (dockerfile, args)
        ]
        assert dockerfile == f"functions/{'inference' if target == 'lambda' else target}/Dockerfile"
        assert option(argv, "--platform") == [source["platform"]]
        tag = f"{name}-{version}" if target == "lambda" else "sagemaker"
        assert option(argv, "--tag") == [f"onnxlift:{tag}"]
        staged = _files(Path(context))
        assert staged == _files(assets.outdir / source["directory"])
        assert dockerfile in staged and not any(f.startswith((".venv", "tests/")) for f in staged)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("build", "nope", "1", "--dry-run"), "unknown model(s): nope"),
        (("build", "minilm", "../1", "--dry-run"), "is not a registry version"),
        (("build", "minilm", "1", "--target", "gpu", "--dry-run"), "Invalid value for '--target'"),
        (("build", "minilm", "1", "--repository", "--privileged", "--dry-run"), "not an ECR"),
        (
            (
                "push",
                "minilm",
                "1",
                "--repository",
                "onnxlift",
                "--region",
                "eu-west-1",
                "--account",
                "evil.example:443/x",
                "--dry-run",
            ),
            "not a 12-digit AWS account id",
        ),
        (
            ("push", "minilm", "1", "--repository", "onnxlift", "--region", "x;y", "--dry-run"),
            "is not an AWS region",
        ),
    ],
)
def test_refusals_are_one_line_exit_2(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = run(tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output
    if not message.startswith("Invalid"):  # click's own usage errors add a usage line
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_without_docker_or_a_region_it_refuses(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run(tmp_path, "build", "tabular", "1", "--target", "sagemaker", PATH=str(empty))
    assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
    assert "docker is not installed" in result.output
    no_region = {"AWS_REGION": None, "AWS_DEFAULT_REGION": None, "AWS_CONFIG_FILE": "/nonexistent"}
    result = run(tmp_path, "push", "minilm", "1", "--repository", "r", "--dry-run", **no_region)
    assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
    assert "no AWS region" in result.output


def test_engine_down_is_one_line(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        pytest.skip("no docker CLI here")
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0:
        pytest.skip("a Docker engine is running here: the refusal cannot be shown")
    result = run(tmp_path, "build", "tabular", "1", "--target", "sagemaker")
    assert (result.exit_code, result.output.count("\n")) == (2, 1), result.output
    assert "the Docker engine is not reachable" in result.output


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, "x86_64"), ("dev", "x86_64"), ("staging", "arm64"), ("prod", "x86_64")],
)
def test_architecture_is_resolved_as_the_stack_resolves_it(
    env: str | None, expected: str, tmp_path: Path
) -> None:
    """cdk.json's environment block and per-model entries decide the image's platform and
    tag, as they decide the function's Architectures (models_from_specs)."""
    from onnxlift.cli.images import _architecture
    from onnxlift.spec import discover_specs

    (spec,) = [s for s in discover_specs(ROOT / "models") if s.name == "textclf"]
    assert spec.serving.architecture == "x86_64"
    context = {
        "env": "dev",
        "manage_apigateway_account": False,
        "models": {"textclf": {"version": "9"}},
        "environments": {"staging": {"models": {"textclf": {"architecture": "arm64"}}}},
    }
    (tmp_path / "cdk.json").write_text(json.dumps({"context": {"onnxlift": context}}))
    assert _architecture(spec, "2", tmp_path, env) == expected
    config = {"onnxlift": {"environments": {"qa": {}}}}
    (tmp_path / "cdk.json").write_text(json.dumps({"context": config}))
    with pytest.raises(OnnxliftError, match=r"the deployment config: .*environments"):
        _architecture(spec, "2", tmp_path, None)
