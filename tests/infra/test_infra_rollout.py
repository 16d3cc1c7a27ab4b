"""Safe rollout and operations: alias, CodeDeploy group, rollback alarms, PreTraffic hook,
dashboard, outputs; cdk-nag stays clean with all of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving import contract

from infra import nag
from infra.config import (
    LAMBDA_ALIAS,
    ConfigError,
    DeploymentConfig,
    ModelDeployment,
    SageMakerDeployment,
    models_from_specs,
)
from infra.dashboard import ENDPOINT_WIDGETS, MODEL_WIDGETS

from .conftest import BGE, MINILM, ROOT, Synth, synth

TINY = ModelDeployment(
    name="tiny-clf",
    version="3",
    memory_mb=1024,
    timeout_s=10,
    reserved_concurrency=2,
    rollout="all-at-once",
    p99_budget_ms=250,
)
BIG = SageMakerDeployment(name="big", version="1")
DEPLOYMENT_CONFIG_NAMES = {
    "canary10-5m": "CodeDeployDefault.LambdaCanary10Percent5Minutes",
    "linear10-1m": "CodeDeployDefault.LambdaLinear10PercentEvery1Minute",
    "all-at-once": "CodeDeployDefault.LambdaAllAtOnce",
}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """Three Lambda models, one per rollout choice, and a SageMaker endpoint (ECR images,
    the repository's own functions/ for the hook and proxy code)."""
    config = DeploymentConfig(
        models=(MINILM, dataclasses.replace(BGE, rollout="linear10-1m"), TINY),
        sagemaker_models=(BIG,),
        image_source="ecr",
        ecr_repository_name="onnxlift",
        waf_enabled=False,
    )
    return synth(config, ROOT, tmp_path_factory.mktemp("three"))


def _ref(value: Any) -> str:
    assert isinstance(value, dict), value
    return value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]


def test_every_model_function_is_a_version_behind_the_live_alias(three: Synth) -> None:
    aliases = three.of_type("AWS::Lambda::Alias")
    assert len(aliases) == 3
    for fn in three.stack.functions:
        alias = aliases[three.logical_id(fn.alias)]["Properties"]
        assert alias["Name"] == LAMBDA_ALIAS == "live"
        assert alias["FunctionName"] == {"Ref": three.logical_id(fn.function)}
        # The version's logical id carries a hash of the function's config (a new one per change).
        version_id = three.stack.resolve(fn.version.function_arn)["Ref"]
        assert version_id.startswith(three.logical_id(fn.version))
        assert alias["FunctionVersion"] == {"Fn::GetAtt": [version_id, "Version"]}
        assert three.resources[version_id]["Type"] == "AWS::Lambda::Version"


def test_every_api_integration_invokes_an_alias_or_a_proxy(three: Synth) -> None:
    aliases = set(three.of_type("AWS::Lambda::Alias"))
    proxies = {three.logical_id(e.function) for e in three.stack.endpoints}
    functions = {three.logical_id(fn.function) for fn in three.stack.functions}
    targets = set()
    for method in three.of_type("AWS::ApiGateway::Method").values():
        integration = method["Properties"]["Integration"]
        if integration["Type"] != "AWS_PROXY":
            continue
        parts = integration["Uri"]["Fn::Join"][1]
        refs = [_ref(p) for p in parts if isinstance(p, dict) and set(p) & {"Ref", "Fn::GetAtt"}]
        (target,) = [r for r in refs if not r.startswith("AWS::")]  # not AWS::Region etc.
        targets.add(target)
    assert targets == aliases | proxies
    assert not targets & functions  # never the unqualified model function
    # The invoke permissions are on the aliases (and the proxies), not the functions.
    permitted = {
        _ref(p["Properties"]["FunctionName"])
        for p in three.of_type("AWS::Lambda::Permission").values()
        if p["Properties"]["Principal"] == "apigateway.amazonaws.com"
    }
    assert permitted == aliases | proxies


def _group(three: Synth, model: str) -> tuple[Any, dict[str, Any]]:
    (rollout,) = [r for r in three.stack.rollouts if r.model.name == model]
    return rollout, three.resources[three.logical_id(rollout.group)]["Properties"]


@pytest.mark.parametrize(
    ("model", "rollout"),
    [("minilm", "canary10-5m"), ("bge", "linear10-1m"), ("tiny-clf", "all-at-once")],
)
def test_deployment_group_per_model_follows_its_rollout(
    three: Synth, model: str, rollout: str
) -> None:
    construct, props = _group(three, model)
    assert props["DeploymentConfigName"] == DEPLOYMENT_CONFIG_NAMES[rollout]
    assert props["DeploymentStyle"] == {
        "DeploymentType": "BLUE_GREEN",
        "DeploymentOption": "WITH_TRAFFIC_CONTROL",
    }
    assert props["AutoRollbackConfiguration"] == {
        "Enabled": True,
        "Events": ["DEPLOYMENT_FAILURE", "DEPLOYMENT_STOP_ON_REQUEST", "DEPLOYMENT_STOP_ON_ALARM"],
    }
    # The alias is what CodeDeploy moves, with this group and the model's own hook.
    fn = next(f for f in three.stack.functions if f.model.name == model)
    hook = next(h for h in three.stack.hooks if h.version is fn.version)
    update = three.resources[three.logical_id(fn.alias)]["UpdatePolicy"]
    assert update["CodeDeployLambdaAliasUpdate"] == {
        "ApplicationName": {"Ref": three.logical_id(three.stack.codedeploy_app)},
        "DeploymentGroupName": {"Ref": three.logical_id(construct.group)},
        "BeforeAllowTrafficHook": {"Ref": three.logical_id(hook.function)},
    }


def test_four_alarms_per_model_roll_back_and_notify_the_topic(three: Synth) -> None:
    topic = {"Ref": three.logical_id(three.stack.alarm_topic.topic)}
    alarms = three.of_type("AWS::CloudWatch::Alarm")
    assert len(alarms) == 4 * len(three.stack.functions)
    for rollout in three.stack.rollouts:
        _, props = _group(three, rollout.model.name)
        ids = [three.logical_id(a) for a in rollout.alarms.values()]
        assert sorted(rollout.alarms) == ["Errors", "FiveXxRate", "P99Duration", "Throttles"]
        assert props["AlarmConfiguration"]["Enabled"] is True
        assert props["AlarmConfiguration"]["Alarms"] == [{"Name": {"Ref": i}} for i in ids]
        for alarm_id in ids:
            alarm = alarms[alarm_id]["Properties"]
            assert alarm["AlarmActions"] == [topic]
            assert alarm["TreatMissingData"] == "notBreaching"


def test_alarm_metrics_and_thresholds(three: Synth) -> None:
    rollout = next(r for r in three.stack.rollouts if r.model.name == "tiny-clf")
    props = {
        k: three.resources[three.logical_id(a)]["Properties"] for k, a in rollout.alarms.items()
    }
    alias_dims = {"Name": "Resource"}
    p99 = props["P99Duration"]
    assert (p99["MetricName"], p99["ExtendedStatistic"], p99["Threshold"]) == (
        "Duration",
        "p99",
        250,  # the spec's p99_budget_ms
    )
    assert p99["ComparisonOperator"] == "GreaterThanThreshold"
    assert any(d["Name"] == alias_dims["Name"] for d in p99["Dimensions"])
    assert (props["Errors"]["MetricName"], props["Errors"]["Threshold"]) == ("Errors", 1)
    assert props["Throttles"]["MetricName"] == "Throttles"
    rate = props["FiveXxRate"]
    assert rate["Threshold"] == 5
    queries = {q["Id"]: q for q in rate["Metrics"]}
    assert (
        "FILL(e0, 0)"
        in queries[next(k for k in queries if "Expression" in queries[k])]["Expression"]
    )
    resources = {
        d["Value"]
        for q in rate["Metrics"]
        if "MetricStat" in q
        for d in q["MetricStat"]["Metric"]["Dimensions"]
        if d["Name"] == "Resource"
    }
    (api,) = three.of_type("AWS::ApiGateway::RestApi").values()
    (stage,) = three.of_type("AWS::ApiGateway::Stage").values()
    for query in rate["Metrics"]:
        if "MetricStat" in query:
            dims = {d["Name"]: d["Value"] for d in query["MetricStat"]["Metric"]["Dimensions"]}
            assert dims["ApiName"] == api["Properties"]["Name"]
            assert dims["Stage"] == stage["Properties"]["StageName"]
            assert dims["Method"] == "POST"
    assert resources == {
        "/v2/models/tiny-clf/infer",
        "/v2/models/tiny-clf/versions/{version}/infer",
    }
    # Without a spec figure the budget is 80% of the timeout.
    minilm = next(r for r in three.stack.rollouts if r.model.name == "minilm")
    p99_minilm = three.resources[three.logical_id(minilm.alarms["P99Duration"])]["Properties"]
    assert p99_minilm["Threshold"] == MINILM.timeout_s * 1000 * 0.8


def test_alarm_topic_is_encrypted_tls_only_and_cloudwatch_may_publish(three: Synth) -> None:
    (topic,) = three.of_type("AWS::SNS::Topic").values()
    key_id = three.logical_id(three.stack.alarm_topic.key)
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert three.resources[key_id]["Properties"]["EnableKeyRotation"] is True
    (policy,) = three.of_type("AWS::SNS::TopicPolicy").values()
    text = json.dumps(policy["Properties"]["PolicyDocument"])
    assert "aws:SecureTransport" in text and "cloudwatch.amazonaws.com" in text
    key_policy = json.dumps(three.resources[key_id]["Properties"]["KeyPolicy"])
    assert "cloudwatch.amazonaws.com" in key_policy
    # only this account's alarms: every CloudWatch statement carries both conditions
    for document in (
        policy["Properties"]["PolicyDocument"],
        three.resources[key_id]["Properties"]["KeyPolicy"],
    ):
        for statement in document["Statement"]:
            if "cloudwatch.amazonaws.com" in json.dumps(statement.get("Principal", {})):
                condition = statement["Condition"]
                assert "aws:SourceAccount" in condition["StringEquals"]
                assert "alarm" in json.dumps(condition["ArnLike"]["aws:SourceArn"])


def _statements(three: Synth, role: Any) -> list[dict[str, Any]]:
    role_id = three.logical_id(role)
    return [
        s
        for p in three.of_type("AWS::IAM::Policy").values()
        if {"Ref": role_id} in p["Properties"]["Roles"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]


def test_pretraffic_hook_wiring_and_least_privilege(three: Synth) -> None:
    assert len(three.stack.hooks) == 3
    bucket = {"Ref": three.logical_id(three.stack.registry.bucket)}
    for hook in three.stack.hooks:
        fn = next(f for f in three.stack.functions if f.version is hook.version)
        props = three.resources[three.logical_id(hook.function)]["Properties"]
        assert (props["Runtime"], props["Handler"]) == ("python3.12", "handler.handler")
        assert props["TracingConfig"] == {"Mode": "Active"}
        version_arn = three.stack.resolve(fn.version.function_arn)  # a Version's Ref: its ARN
        assert props["Environment"]["Variables"] == {
            contract.Env.TARGET_FUNCTION_ARN: version_arn,
            contract.Env.MODEL_NAME: fn.model.name,
            contract.Env.MODEL_VERSION: fn.model.version,
            contract.Env.REGISTRY_BUCKET: bucket,
        }
        grants = {
            (
                a,
                json.dumps(s["Resource"], sort_keys=True),
            )
            for s in _statements(three, hook.role)
            for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        }
        actions = {a for a, _ in grants}
        assert actions == {
            "lambda:InvokeFunction",
            "s3:GetObject",
            "codedeploy:PutLifecycleEventHookExecutionStatus",
            "logs:CreateLogStream",
            "logs:PutLogEvents",
            "xray:PutTraceSegments",
            "xray:PutTelemetryRecords",
        }
        # Active tracing: the two X-Ray actions have no resource-level permissions, and they
        # are the only ones on '*'.
        assert {a for a, r in grants if r == '"*"'} == {
            "xray:PutTraceSegments",
            "xray:PutTelemetryRecords",
        }
        assert ("lambda:InvokeFunction", json.dumps(version_arn)) in grants
        (s3_resource,) = [r for a, r in grants if a == "s3:GetObject"]
        assert f"/models/{fn.model.name}/*" in s3_resource
        (codedeploy_resource,) = [
            r for a, r in grants if a == "codedeploy:PutLifecycleEventHookExecutionStatus"
        ]
        assert ":deploymentgroup:" in codedeploy_resource and "*" not in codedeploy_resource


def test_dashboard_has_every_widget(three: Synth) -> None:
    (dashboard,) = three.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for name in ("minilm", "bge", "tiny-clf"):
        for widget in MODEL_WIDGETS:
            assert f"{name}: {widget}" in body, (name, widget)
    for widget in ENDPOINT_WIDGETS:
        assert f"big: {widget}" in body, widget
    for metric in (
        "Invocations",
        "Duration",
        "InferLatency",
        "Errors",
        "Throttles",
        "ConcurrentExecutions",
        "ModelLatency",
        "Invocation4XXErrors",
        "Invocation5XXErrors",
        "CPUUtilization",
        "GPUUtilization",
    ):
        assert f'\\"{metric}\\"' in body, metric
    assert f'\\"{contract.POWERTOOLS_NAMESPACE}\\"' in body
    # InferLatency with the handler's whole dimension set, or CloudWatch shows nothing
    # (tests/serving/test_handler.py pins what the handler emits)
    assert f'\\"{contract.METRIC_MODEL_DIMENSION}\\",\\"minilm\\"' in body


def test_outputs_name_every_function_alias_group_endpoint_dashboard_topic(three: Synth) -> None:
    outputs = three.template.to_json()["Outputs"]
    for key in ("ModelMinilm", "ModelBge", "ModelTinyClf"):
        assert {f"{key}FunctionName", f"{key}AliasArn", f"{key}DeploymentGroup"} <= set(outputs)
    assert {"ModelBigEndpointName", "ModelBigProxyFunctionName"} <= set(outputs)
    assert {"DashboardName", "AlarmTopicArn", "DeploymentApplication"} <= set(outputs)
    tiny = three.stack.functions[2]
    assert outputs["ModelTinyClfAliasArn"]["Value"] == {"Ref": three.logical_id(tiny.alias)}
    assert outputs["AlarmTopicArn"]["Value"] == {
        "Ref": three.logical_id(three.stack.alarm_topic.topic)
    }


def test_cdk_nag_is_clean(three: Synth) -> None:
    assert nag.findings(three.app) == []
    assert nag.report_findings(three.outdir) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rollout": "canary"}, "rollout 'canary' not in"),
        ({"p99_budget_ms": 0}, "p99_budget_ms must be within 1..29000"),
        ({"p99_budget_ms": 30_000}, "p99_budget_ms must be within 1..29000"),
    ],
)
def test_bad_rollout_settings_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(MINILM, **kwargs)


def test_rollout_comes_from_the_spec_and_the_context_overrides_it() -> None:
    from onnxlift.spec import ServingSpec

    def spec(name: str, **serving: Any) -> Any:
        return type("Spec", (), {"name": name, "serving": ServingSpec(**serving)})()

    specs = [spec("a"), spec("b", rollout="linear10-1m", p99_budget_ms=900), spec("c")]
    context = {"models": {"c": {"rollout": "all-at-once"}}}
    models = models_from_specs(specs, context, Path("/nonexistent"))
    assert [(m.rollout, m.p99_budget_ms) for m in models] == [
        ("canary10-5m", None),
        ("linear10-1m", 900),
        ("all-at-once", None),
    ]
    with pytest.raises(ConfigError, match="rollout 'blue-green' not in"):
        models_from_specs([spec("d", rollout="blue-green")], {}, None)
