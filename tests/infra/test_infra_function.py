"""One DockerImageFunction per model: sizing, env, tracing, logs, IAM, image inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Capture, Match

from infra.rollout import HOOK_SERVING_MODULES


def function_of(synth, name: str) -> dict[str, Any]:
    fn = next(f for f in synth.stack.functions if f.model.name == name)
    return synth.resources[synth.logical_id(fn.function)]["Properties"]


def policy_statements(synth, name: str) -> list[dict[str, Any]]:
    fn = next(f for f in synth.stack.functions if f.model.name == name)
    policy = fn.role.node.find_child("DefaultPolicy")
    statements = synth.resources[synth.logical_id(policy)]["Properties"]["PolicyDocument"]
    return statements["Statement"]


def test_one_function_per_model(one, two) -> None:
    """One image function per model, and beside it its zip PreTraffic hook (rollout tests)."""
    for synth, count in ((one, 1), (two, 2)):
        functions = synth.of_type("AWS::Lambda::Function").values()
        kinds = sorted(f["Properties"].get("PackageType", "Zip") for f in functions)
        assert kinds == ["Image"] * count + ["Zip"] * count


def test_sizing_tracing_architecture(two) -> None:
    props = function_of(two, "bge")
    assert props["MemorySize"] == 7076
    assert props["Timeout"] == 20
    assert props["ReservedConcurrentExecutions"] == 3
    assert props["TracingConfig"] == {"Mode": "Active"}
    assert props["Architectures"] == ["x86_64"]
    assert props["PackageType"] == "Image"


def test_environment(one, two) -> None:
    registry_ref = {"Ref": one.logical_id(one.stack.registry.bucket)}
    assert function_of(one, "minilm")["Environment"]["Variables"] == {
        "MODEL_NAME": "minilm",
        "MODEL_VERSION": "1",
        "MODEL_SOURCE": "image",
        "MODEL_BUCKET": registry_ref,
        "ORT_INTRA_OP_THREADS": "1",
        # The function's own name, onnxlift-<env>-<model> (the dashboard's service dimension).
        "POWERTOOLS_SERVICE_NAME": "onnxlift-dev-minilm",
        "POWERTOOLS_METRICS_NAMESPACE": "onnxlift",
        "POWERTOOLS_TRACE_DISABLED": "false",  # traced (the default): the handler's Tracer
        "LOG_LEVEL": "INFO",
    }
    bge = function_of(two, "bge")["Environment"]["Variables"]
    assert (bge["MODEL_VERSION"], bge["MODEL_SOURCE"], bge["ORT_INTRA_OP_THREADS"]) == (
        "2",
        "registry",
        "4",
    )


def test_tracing_off_leaves_the_function_untraced_and_nag_clean(
    project_root: Path, tmp_path: Path
) -> None:
    """-c onnxlift.tracing=false: no active tracing, no X-Ray grant, the handler told (its
    Tracer, and the X-Ray SDK import, are skipped); cdk-nag's finding is acknowledged."""
    from infra import nag
    from infra.config import config_from_context
    from tests.infra.conftest import MINILM, synth

    untraced = config_from_context({"tracing": "false"}, [MINILM])
    built = synth(untraced, project_root, tmp_path / "untraced")
    props = function_of(built, "minilm")
    assert "TracingConfig" not in props
    assert props["Environment"]["Variables"]["POWERTOOLS_TRACE_DISABLED"] == "true"
    role = props["Role"]["Fn::GetAtt"][0]
    actions = {
        action
        for policy in built.of_type("AWS::IAM::Policy").values()
        if {"Ref": role} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        for action in ([statement["Action"]] if isinstance(statement["Action"], str)
                       else statement["Action"])
    }  # fmt: skip
    assert not {a for a in actions if a.startswith("xray:")}
    assert nag.findings(built.app) == []


def test_log_group_with_retention(one, two) -> None:
    for synth, days in ((one, 30), (two, 90)):
        for fn in synth.stack.functions:
            log_id = synth.logical_id(fn.log_group)
            assert synth.resources[log_id]["Properties"]["RetentionInDays"] == days
            props = function_of(synth, fn.model.name)
            assert props["LoggingConfig"] == {"LogGroup": {"Ref": log_id}}


def test_roles_have_no_managed_policies(one, two) -> None:
    """None but CodeDeploy's service roles, which carry AWSCodeDeployRoleForLambdaLimited
    (acknowledged next to the deployment group, infra/rollout.py)."""
    for synth in (one, two):
        codedeploy_roles = {synth.logical_id(r.group.role) for r in synth.stack.rollouts}
        assert len(codedeploy_roles) == len(synth.stack.functions)
        for role_id, role in synth.of_type("AWS::IAM::Role").items():
            managed = role["Properties"].get("ManagedPolicyArns")
            if role_id in codedeploy_roles:
                assert len(managed) == 1
                assert "AWSCodeDeployRoleForLambdaLimited" in json.dumps(managed)
            else:
                assert managed is None, role_id


def test_no_wildcard_actions_anywhere(one, two) -> None:
    for synth in (one, two):
        for policy in synth.of_type("AWS::IAM::Policy").values():
            for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
                actions = statement["Action"]
                for action in [actions] if isinstance(actions, str) else actions:
                    assert "*" not in action, statement
        for role in synth.of_type("AWS::IAM::Role").values():
            for inline in role["Properties"].get("Policies", []):
                for statement in inline["PolicyDocument"]["Statement"]:
                    assert all("*" not in a for a in statement["Action"]), statement


def test_s3_access_is_limited_to_own_model_prefix(two) -> None:
    bucket_arn = {"Fn::GetAtt": [two.logical_id(two.stack.registry.bucket), "Arn"]}
    for name in ("minilm", "bge"):
        s3 = [s for s in policy_statements(two, name) if "s3:" in json.dumps(s["Action"])]
        assert s3 == [
            {
                "Sid": "ReadOwnModelObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": {"Fn::Join": ["", [bucket_arn, f"/models/{name}/*"]]},
            },
            {
                "Sid": "ListOwnModelPrefix",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket_arn,
                "Condition": {"StringLike": {"s3:prefix": [f"models/{name}/*"]}},
            },
        ]


def test_only_xray_is_granted_on_every_resource(one, two) -> None:
    """The IAM5[Resource::*] acknowledgement covers X-Ray, and nothing else may use it."""
    for synth in (one, two):
        for fn in synth.stack.functions:
            on_star = [s for s in policy_statements(synth, fn.model.name) if s["Resource"] == "*"]
            assert on_star == [
                {
                    "Effect": "Allow",
                    "Action": ["xray:PutTelemetryRecords", "xray:PutTraceSegments"],
                    "Resource": "*",
                }
            ]


def test_logs_write_only_to_own_log_group(one) -> None:
    fn = one.stack.functions[0]
    logs = [s for s in policy_statements(one, "minilm") if "logs:" in json.dumps(s["Action"])]
    assert logs == [
        {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"Fn::GetAtt": [one.logical_id(fn.log_group), "Arn"]},
        }
    ]


def test_ecr_image_uses_the_model_tag(two) -> None:
    for name, version in (("minilm", "1"), ("bge", "2")):
        uri = json.dumps(function_of(two, name)["Code"]["ImageUri"])
        assert f"/onnxlift/inference:{name}-{version}" in uri


def test_asset_image_build(one) -> None:
    assets = json.loads((one.outdir / "Onnxlift.assets.json").read_text())["dockerImages"]
    (image,) = assets.values()
    source = image["source"]
    assert source["dockerFile"] == "functions/inference/Dockerfile"
    assert source["dockerBuildArgs"] == {"MODEL_NAME": "minilm", "MODEL_VERSION": "1"}
    assert source["platform"] == "linux/amd64"
    one.template.has_resource_properties(
        "AWS::Lambda::Function",
        {"Code": {"ImageUri": {"Fn::Sub": Match.string_like_regexp("container-assets")}}},
    )


def test_image_build_context_holds_only_what_the_image_needs(one) -> None:
    """The staged build context: the excludes prune .venv, .git, node_modules, other models."""
    capture = Capture()
    one.template.has_resource_properties(
        "AWS::Lambda::Function", {"Code": {"ImageUri": {"Fn::Sub": capture}}}
    )
    asset_hash = capture.as_string().rsplit(":", 1)[1]
    context = one.outdir / f"asset.{asset_hash}"
    files = sorted(p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file())
    # (The fixture's serving package holds the modules the PreTraffic hook bundles.)
    assert files == sorted(
        [
            ".onnxlift/artifacts/minilm/1/manifest.json",
            ".onnxlift/artifacts/minilm/1/model.onnx",
            "functions/inference/Dockerfile",
            "functions/inference/handler.py",
            *(f"layers/runtime/onnxlift_serving/{m}" for m in HOOK_SERVING_MODULES),
        ]
    )


def test_missing_artifacts_warn(build_app, tmp_path: Path, project_root: Path) -> None:
    from aws_cdk.assertions import Annotations

    from infra.config import DeploymentConfig, ModelDeployment

    ghost = ModelDeployment(
        name="ghost", version="9", memory_mb=1024, timeout_s=60, reserved_concurrency=1
    )
    _app, stack = build_app(DeploymentConfig(models=(ghost,)), project_root, tmp_path)
    warnings = Annotations.from_stack(stack).find_warning("*", Match.any_value())
    text = json.dumps([w.entry.data for w in warnings])
    assert ".onnxlift/artifacts/ghost/9 does not exist" in text
    assert "timeout_s=60 exceeds the 29 s API Gateway integration timeout" in text
    assert "[serving.batching] is ignored" not in text


def test_batching_that_auto_sent_to_lambda_warns(
    build_app, tmp_path: Path, project_root: Path
) -> None:
    from aws_cdk.assertions import Annotations

    from infra.config import DeploymentConfig, ModelDeployment

    model = ModelDeployment(
        name="minilm", version="1", memory_mb=1024, timeout_s=20, reserved_concurrency=1,
        batching_ignored=True,
    )  # fmt: skip
    _app, stack = build_app(DeploymentConfig(models=(model,)), project_root, tmp_path)
    warnings = Annotations.from_stack(stack).find_warning("*", Match.any_value())
    text = json.dumps([w.entry.data for w in warnings])
    assert "model minilm: its spec's [serving.batching] is ignored" in text
