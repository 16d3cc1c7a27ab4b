"""Environments (dev / staging / prod) and arm64: the context that selects them, and what two
environments synthesize to side by side (disjoint names, their own settings, nag clean)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aws_cdk import App
from aws_cdk.assertions import Template
from onnxlift_serving import contract

from infra import nag
from infra.config import (
    ConfigError,
    DeploymentConfig,
    ModelDeployment,
    SageMakerDeployment,
    apply_environment,
    config_from_context,
    models_from_specs,
    read_context,
)
from infra.onnxlift_stack import OnnxliftStack
from infra.rollout import HOOK_SERVING_MODULES
from onnxlift.spec import load_spec
from tests.infra.conftest import CDK_CONTEXT, ROOT

ONNXLIFT = CDK_CONTEXT["onnxlift"]
# Name properties scoped inside their parent (a role's inline policy, a function's alias, an
# API's stage or validator) or naming a shared AWS object (a deployment config, a metric):
# they need not, and cannot usefully, differ between stacks.
SCOPED = {"PolicyName", "StageName", "DeploymentConfigName", "MetricName"}
SCOPED_BY_TYPE = {("AWS::Lambda::Alias", "Name"), ("AWS::ApiGateway::RequestValidator", "Name")}


def spec(name: str, *, architecture: str = "x86_64", reserved: int = 4) -> SimpleNamespace:
    serving = SimpleNamespace(
        target="lambda",
        memory_mb=2048,
        timeout_s=15,
        reserved_concurrency=reserved,
        rollout="canary10-5m",
        p99_budget_ms=None,
        architecture=architecture,
    )
    return SimpleNamespace(name=name, serving=serving)


SPECS = [spec("minilm"), spec("bge", architecture="arm64")]


def env_config(env: str) -> DeploymentConfig:
    """What app.py builds for `-c onnxlift.env=<env>` from cdk.json, plus a SageMaker model."""
    context = apply_environment({**ONNXLIFT, "env": env})
    return config_from_context(
        context,
        models_from_specs(SPECS, context),
        [SageMakerDeployment(name="big", version="1")],
    )


def node(values: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(try_get_context=values.get)


# -- the context -------------------------------------------------------------------------------


def test_env_selects_its_settings() -> None:
    dev, staging, prod = (env_config(env) for env in ("dev", "staging", "prod"))
    assert (dev.env, staging.env, prod.env) == ("dev", "staging", "prod")
    assert [c.log_retention_days for c in (dev, staging, prod)] == [7, 30, 365]
    assert [c.waf_enabled for c in (dev, staging, prod)] == [False, True, True]
    assert [c.manage_apigateway_account for c in (dev, staging, prod)] == [False, False, True]
    assert {m.rollout for m in dev.models} == {"all-at-once"}
    assert {m.rollout for m in staging.models} == {"linear10-1m"}
    assert {(m.rollout, m.provisioned_concurrency) for m in prod.models} == {("canary10-5m", 1)}
    assert {m.provisioned_concurrency for m in dev.models + staging.models} == {0}
    # Every model (and endpoint) takes its config's environment, and so its names.
    assert [m.function_name for m in prod.models] == ["onnxlift-prod-minilm", "onnxlift-prod-bge"]
    assert [m.endpoint_name for m in staging.sagemaker_models] == ["onnxlift-staging-big"]


def test_command_line_env_and_fields_win() -> None:
    """`-c onnxlift.env=prod` picks prod's block; `-c onnxlift.<field>` beats that block."""
    context = read_context(
        node({"onnxlift": ONNXLIFT, "onnxlift.env": "prod", "onnxlift.log_retention_days": "90"})
    )
    config = config_from_context(context, models_from_specs(SPECS, context))
    assert (config.env, config.log_retention_days, config.waf_enabled) == ("prod", 90, True)
    assert read_context(node({"onnxlift": ONNXLIFT}))["env"] == "dev"  # cdk.json's default


def test_per_model_overrides_beat_the_environment() -> None:
    """Precedence: the environment's per-model entry, the top-level one, the environment."""
    context = {
        **ONNXLIFT,
        "env": "prod",
        "models": {"minilm": {"version": "1", "rollout": "linear10-1m", "memory_mb": 3008}},
        "environments": {
            **ONNXLIFT["environments"],
            "prod": {
                **ONNXLIFT["environments"]["prod"],
                "models": {"minilm": {"memory_mb": 4096, "architecture": "arm64"}},
            },
        },
    }
    minilm, bge = models_from_specs(SPECS, context)
    assert (minilm.rollout, minilm.memory_mb, minilm.architecture) == (
        "linear10-1m",
        4096,
        "arm64",
    )
    assert (bge.rollout, bge.memory_mb, bge.provisioned_concurrency) == ("canary10-5m", 2048, 1)


@pytest.mark.parametrize(
    "context",
    [
        {"env": "qa"},
        {"env": "Prod"},
        {"environments": {"qa": {}}},
        {"environments": {"dev": {"log_retention": 7}}},  # unknown key
        {"environments": {"dev": {"env": "prod"}}},
        # Two environments would fight over the region's one API Gateway account setting.
        {"environments": {"dev": {"manage_apigateway_account": True}, "prod": {}}},
        {"environments": {"dev": {"architecture": "sparc"}}},
        {"environments": {"dev": {"provisioned_concurrency": 5}}},  # above reserved (4)
        {"environments": {"dev": {"autoscaling_target_utilization": 0.95}}},
        {"models": {"bge": {"architecture": "aarch64"}}},
    ],
)
def test_bad_environment_context_is_a_config_error(context: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        merged = apply_environment({"models": {}, **context})
        config_from_context(merged, models_from_specs(SPECS, merged))


def test_a_global_bucket_name_is_refused_for_every_environment() -> None:
    """Bucket names are global: one registry_bucket_name at the top level would be every
    environment's, so the second stack to deploy could not create its bucket."""
    top_level = {**ONNXLIFT, "registry_bucket_name": "acme-models"}
    with pytest.raises(ConfigError, match=r"environments\.<env>\.registry_bucket_name"):
        apply_environment(top_level)
    per_env = json.loads(json.dumps(ONNXLIFT))
    per_env["environments"]["prod"]["registry_bucket_name"] = "acme-models-prod"
    assert apply_environment({**per_env, "env": "prod"})["registry_bucket_name"] == (
        "acme-models-prod"
    )
    assert apply_environment({**per_env, "env": "dev"}).get("registry_bucket_name") is None


@pytest.mark.parametrize("pair", [("minilm", "MiniLM"), ("mini-lm", "mini_lm")])
def test_names_sharing_an_output_id_are_refused(pair: tuple[str, str]) -> None:
    models = tuple(
        ModelDeployment(name=n, version="1", memory_mb=2048, timeout_s=9, reserved_concurrency=2)
        for n in pair
    )
    with pytest.raises(ConfigError, match="differ only in case or separators"):
        DeploymentConfig(models=models)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: DeploymentConfig(models=(), sagemaker_models=(), env="qa"),
        lambda: read_context(node({"onnxlift": ONNXLIFT, "onnxlift.env": "test"})),
        lambda: ModelDeployment(
            name="m",
            version="1",
            memory_mb=2048,
            timeout_s=9,
            reserved_concurrency=2,
            architecture="arm",
        ),
        lambda: models_from_specs([spec("m", architecture="ARM64")], {}),
    ],
)
def test_bad_env_or_architecture_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError):
        bad()


# -- two environments, synthesized ---------------------------------------------------------


def synth_env(env: str, root: Path, outdir: Path) -> SimpleNamespace:
    """As app.py does: the stack Onnxlift-<env>, the nag pack, synth (raises on findings)."""
    app = App(context=CDK_CONTEXT, outdir=str(outdir), builtin_cloud_formation_validation=False)
    stack = OnnxliftStack(app, contract.stack_name(env), config=env_config(env), project_root=root)
    nag.enable(app)
    app.synth()
    template = Template.from_stack(stack).to_json()
    assets = json.loads((outdir / f"{stack.stack_name}.assets.json").read_text())
    return SimpleNamespace(app=app, stack=stack, resources=template["Resources"], assets=assets)


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimpleNamespace]:
    root = tmp_path_factory.mktemp("envs-repo")
    for rel in (
        "functions/inference/Dockerfile",
        "functions/sagemaker/Dockerfile",
        "functions/sagemaker/proxy/handler.py",
        "functions/pretraffic/handler.py",
        *(f"layers/runtime/onnxlift_serving/{m}" for m in HOOK_SERVING_MODULES),
        ".onnxlift/artifacts/minilm/1/model.onnx",
        ".onnxlift/artifacts/bge/1/model.onnx",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")
    return {env: synth_env(env, root, tmp_path_factory.mktemp(env)) for env in ("dev", "prod")}


def of_type(synth: SimpleNamespace, cfn_type: str) -> list[dict[str, Any]]:
    return [r.get("Properties", {}) for r in synth.resources.values() if r["Type"] == cfn_type]


def physical_names(synth: SimpleNamespace) -> set[str]:
    """Every literal top-level `*Name` property that names a resource in the account."""
    return {
        value
        for resource in synth.resources.values()
        for key, value in resource.get("Properties", {}).items()
        if key.endswith("Name")
        and isinstance(value, str)
        and key not in SCOPED
        and (resource["Type"], key) not in SCOPED_BY_TYPE
    }


def test_stack_names(envs: dict[str, SimpleNamespace]) -> None:
    assert [s.stack.stack_name for s in envs.values()] == ["Onnxlift-dev", "Onnxlift-prod"]


def test_physical_names_are_disjoint_and_carry_the_environment(
    envs: dict[str, SimpleNamespace],
) -> None:
    dev, prod = physical_names(envs["dev"]), physical_names(envs["prod"])
    assert dev.isdisjoint(prod), dev & prod
    for env, names in (("dev", dev), ("prod", prod)):
        assert all(f"onnxlift-{env}" in name for name in names), names
        assert {
            f"onnxlift-{env}-minilm",  # function
            f"/aws/lambda/onnxlift-{env}-bge",  # its log group
            f"onnxlift-{env}-big",  # SageMaker endpoint
            f"onnxlift-{env}-api",  # REST API
            f"onnxlift-{env}-alarms",  # SNS topic
            f"onnxlift-{env}",  # CodeDeploy application
        } <= names
        # Dashboard names are global to the account: the region is part of it.
        (dashboard,) = of_type(envs[env], "AWS::CloudWatch::Dashboard")
        assert dashboard["DashboardName"] == {
            "Fn::Join": ["", [f"onnxlift-{env}-", {"Ref": "AWS::Region"}]]
        }
    assert "onnxlift-prod-api" in {w["Name"] for w in of_type(envs["prod"], "AWS::WAFv2::WebACL")}


def test_per_environment_settings_land(envs: dict[str, SimpleNamespace]) -> None:
    dev, prod = envs["dev"], envs["prod"]
    lambda_logs = lambda s: {  # noqa: E731
        g["RetentionInDays"]
        for g in of_type(s, "AWS::Logs::LogGroup")
        if g.get("LogGroupName", "").startswith("/aws/lambda/")
    }
    assert (lambda_logs(dev), lambda_logs(prod)) == ({7}, {365})
    assert (len(of_type(dev, "AWS::WAFv2::WebACL")), len(of_type(prod, "AWS::WAFv2::WebACL"))) == (
        0,
        1,
    )
    # The region's API Gateway CloudWatch role setting: prod's only.
    assert len(of_type(dev, "AWS::ApiGateway::Account")) == 0
    assert len(of_type(prod, "AWS::ApiGateway::Account")) == 1
    configs = lambda s: {  # noqa: E731
        g["DeploymentConfigName"] for g in of_type(s, "AWS::CodeDeploy::DeploymentGroup")
    }
    assert configs(dev) == {"CodeDeployDefault.LambdaAllAtOnce"}
    assert configs(prod) == {"CodeDeployDefault.LambdaCanary10Percent5Minutes"}


def test_provisioned_concurrency_with_autoscaling_in_prod_only(
    envs: dict[str, SimpleNamespace],
) -> None:
    dev, prod = envs["dev"], envs["prod"]
    assert all("ProvisionedConcurrencyConfig" not in a for a in of_type(dev, "AWS::Lambda::Alias"))
    assert [a["ProvisionedConcurrencyConfig"] for a in of_type(prod, "AWS::Lambda::Alias")] == [
        {"ProvisionedConcurrentExecutions": 1}
    ] * 2
    lambda_targets = lambda s: [  # noqa: E731
        t
        for t in of_type(s, "AWS::ApplicationAutoScaling::ScalableTarget")
        if t["ServiceNamespace"] == "lambda"
    ]
    assert lambda_targets(dev) == []
    targets = lambda_targets(prod)
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [(1, 4)] * 2
    assert {t["ScalableDimension"] for t in targets} == {"lambda:function:ProvisionedConcurrency"}
    policies = [
        p["TargetTrackingScalingPolicyConfiguration"]
        for p in of_type(prod, "AWS::ApplicationAutoScaling::ScalingPolicy")
        if "PredefinedMetricSpecification" in p.get("TargetTrackingScalingPolicyConfiguration", {})
        and p["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"][
            "PredefinedMetricType"
        ]
        == "LambdaProvisionedConcurrencyUtilization"
    ]
    assert [p["TargetValue"] for p in policies] == [0.7, 0.7]


def test_arm64_model_gets_an_arm64_function_and_image(envs: dict[str, SimpleNamespace]) -> None:
    for synth in envs.values():
        functions = {
            f["FunctionName"]: f["Architectures"]
            for f in of_type(synth, "AWS::Lambda::Function")
            if f.get("PackageType") == "Image"
        }
        env = synth.stack.config.env
        assert functions == {f"onnxlift-{env}-minilm": ["x86_64"], f"onnxlift-{env}-bge": ["arm64"]}
        platforms = {
            image["source"].get("dockerBuildArgs", {}).get("MODEL_NAME"): image["source"][
                "platform"
            ]
            for image in synth.assets["dockerImages"].values()
        }
        # The SageMaker image (no MODEL_NAME build arg) stays amd64: GPU instances are x86_64.
        assert platforms == {"minilm": "linux/amd64", "bge": "linux/arm64", None: "linux/amd64"}


def test_cdk_nag_clean_in_both(envs: dict[str, SimpleNamespace]) -> None:
    for synth in envs.values():
        assert nag.findings(synth.app) == []


def test_spec_serving_architecture_reaches_the_model(tmp_path: Path) -> None:
    """`[serving] architecture = "arm64"` in a real model.toml selects an arm64 function."""
    folder = tmp_path / "minilm"
    shutil.copytree(ROOT / "models" / "minilm", folder)
    toml = folder / "model.toml"
    assert toml.read_text().rstrip().splitlines()[-1].startswith("max_batch")  # [serving] last
    toml.write_text(toml.read_text() + 'architecture = "arm64"\n')
    (model,) = models_from_specs([load_spec(folder)], {})
    assert model.architecture == "arm64"
    (default,) = models_from_specs([load_spec(ROOT / "models" / "minilm")], {})
    assert default.architecture == "x86_64"
