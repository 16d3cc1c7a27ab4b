"""cdk-nag AwsSolutions and Serverless packs: zero unacknowledged findings, and each
acknowledgement is load-bearing.

Findings are read two ways: `nag.findings(app)` (<Pack>Checks().validate_scope, no
synth) and `nag.report_findings(outdir)` (the validation-report.json written by synth).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from aws_cdk import Validations
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import IConstruct

from infra import nag
from infra.config import DeploymentConfig, ModelDeployment
from infra.onnxlift_stack import OnnxliftStack

MINILM = ModelDeployment(
    name="minilm", version="1", memory_mb=2048, timeout_s=29, reserved_concurrency=10
)
DEFAULT = DeploymentConfig(models=(MINILM,))
T = TypeVar("T")


def rule_ids(findings: list[nag.Finding]) -> set[str]:
    return {f.rule_id for f in findings}


@pytest.mark.parametrize("config_name", ["one", "two"])
def test_no_unacknowledged_findings(config_name: str, request) -> None:
    synth = request.getfixturevalue(config_name)
    assert nag.findings(synth.app) == []


@pytest.mark.parametrize("config_name", ["one", "two"])
def test_synth_report_has_no_awssolutions_violations(config_name: str, request) -> None:
    synth = request.getfixturevalue(config_name)
    report = synth.outdir / nag.REPORT_FILE
    # The CDK writes the report whenever a plugin or annotation has something to say;
    # when it exists it must hold no AwsSolutions violation.
    assert nag.report_findings(synth.outdir) == []
    if report.exists():
        assert "AwsSolutions-" not in report.read_text()


def test_the_pack_really_runs_at_synth(build_app, project_root: Path, tmp_path: Path) -> None:
    """Guard against a silently unregistered pack: an unacknowledged error fails synth and
    lands in the report with its rule id."""
    app, _ = build_app(DEFAULT, project_root, tmp_path, acknowledge_nag_findings=False)
    with pytest.raises(RuntimeError, match="AwsSolutions-APIG4"):
        app.synth()
    report = nag.report_findings(tmp_path)
    assert {
        "AwsSolutions-APIG4",
        "AwsSolutions-COG4",
        "AwsSolutions-IAM5[Resource::*]",
        "Serverless-LambdaDLQ",  # the Serverless pack runs beside AwsSolutions
    } <= rule_ids(report)


def fresh(build_app, project_root: Path, tmp_path: Path, **kwargs) -> tuple:
    return build_app(kwargs.pop("config", DEFAULT), project_root, tmp_path, **kwargs)


# Each acknowledgement, removed on its own, must bring back exactly its finding(s).
@pytest.mark.parametrize(
    ("skip", "expected"),
    [
        ("AwsSolutions-APIG4", {"AwsSolutions-APIG4"}),
        ("AwsSolutions-COG4", {"AwsSolutions-COG4"}),
        ("AwsSolutions-IAM5[Resource::*]", {"AwsSolutions-IAM5[Resource::*]"}),
        (
            "AwsSolutions-IAM5",
            {
                "AwsSolutions-IAM5[Resource::*]",
                "AwsSolutions-IAM5[Resource::<RegistryBucket9C3667AF.Arn>/models/minilm/*]",
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:"
                "<AWS::AccountId>:log-group:*]",
                # The CodeDeploy role may invoke the PreTraffic hook (and its qualifiers).
                "AwsSolutions-IAM5[Resource::<PreTrafficminilmFunctionE741AC50.Arn>:*]",
            },
        ),
        (
            "AwsSolutions-IAM4",
            {
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AWSCodeDeployRoleForLambdaLimited]"
            },
        ),
        ("AwsSolutions-L1", {"AwsSolutions-L1"}),  # the PreTraffic hook's python3.12
        ("Serverless-LambdaLatestVersion", {"Serverless-LambdaLatestVersion"}),  # the same
        ("Serverless-LambdaDLQ", {"Serverless-LambdaDLQ"}),  # model function and hook
    ],
)
def test_each_acknowledgement_is_needed(
    skip: str, expected: set[str], build_app, project_root: Path, tmp_path: Path
) -> None:
    app, stack = fresh(build_app, project_root, tmp_path, acknowledge_nag_findings=False)
    stack.acknowledge_findings(skip={skip})
    assert rule_ids(nag.findings(app)) == expected


def test_api_key_acknowledgements_cover_every_method(
    build_app, project_root: Path, tmp_path: Path
) -> None:
    app, stack = fresh(build_app, project_root, tmp_path, acknowledge_nag_findings=False)
    stack.acknowledge_findings(skip={"AwsSolutions-APIG4"})
    paths = {f.construct_path for f in nag.findings(app)}
    # 11 routes (3 server-wide, 8 of the model), a JSON 405 on each of their resources,
    # 2 unknown-model 404s, 5 unknown-path 404s (/, /{proxy+}, /v2/health, /v2/models,
    # /v2/models/<name>/versions)
    assert len(paths) == len(stack.api.methods) == 29


def cfn(construct: IConstruct, cls: type[T]) -> T:
    child = construct.node.default_child
    assert isinstance(child, cls)
    return child


def _drop_access_logging(stack: OnnxliftStack) -> None:
    cfn(stack.registry.bucket, s3.CfnBucket).logging_configuration = None


def _open_public_access(stack: OnnxliftStack) -> None:
    # (No configuration at all counts as compliant: S3 blocks public access by default.)
    cfn(
        stack.registry.bucket, s3.CfnBucket
    ).public_access_block_configuration = s3.CfnBucket.PublicAccessBlockConfigurationProperty(
        block_public_acls=True,
        ignore_public_acls=True,
        block_public_policy=False,
        restrict_public_buckets=False,
    )


def _no_execution_logging(stack: OnnxliftStack) -> None:
    cfn(stack.api.stage, apigw.CfnStage).method_settings = []


def _no_access_logging(stack: OnnxliftStack) -> None:
    cfn(stack.api.stage, apigw.CfnStage).access_log_setting = None


def _no_waf(stack: OnnxliftStack) -> None:
    stack.api.node.try_remove_child("WebAclAssociation")


def _no_validator(stack: OnnxliftStack) -> None:
    cfn(stack.api.validator, apigw.CfnRequestValidator).validate_request_parameters = False


def _managed_policy(stack: OnnxliftStack) -> None:
    stack.functions[0].role.add_managed_policy(
        iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AWSLambdaBasicExecutionRole")
    )


def _wildcard_action(stack: OnnxliftStack) -> None:
    stack.functions[0].role.add_to_policy(
        iam.PolicyStatement(
            actions=["s3:*"], resources=[stack.registry.model_objects_arn("minilm")]
        )
    )


def _keyless_method(stack: OnnxliftStack) -> None:
    stack.api.api.root.add_resource("open").add_method(
        "GET", apigw.MockIntegration(), api_key_required=False
    )


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_access_logging, "AwsSolutions-S1"),
        (_open_public_access, "AwsSolutions-S2"),
        (_no_execution_logging, "AwsSolutions-APIG6"),
        (_no_access_logging, "AwsSolutions-APIG1"),
        (_no_waf, "AwsSolutions-APIG3"),
        (_no_validator, "AwsSolutions-APIG2"),
        (
            _managed_policy,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
            "service-role/AWSLambdaBasicExecutionRole]",
        ),
        (_wildcard_action, "AwsSolutions-IAM5[Action::s3:*]"),
        # Acknowledged only where an API key is required: a keyless method is a finding.
        (_keyless_method, "AwsSolutions-APIG4"),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_breaking_a_setting_brings_a_finding(
    mutate: Callable[[OnnxliftStack], None],
    expected: str,
    build_app,
    project_root: Path,
    tmp_path: Path,
) -> None:
    app, _ = fresh(build_app, project_root, tmp_path, mutate=mutate)
    assert expected in rule_ids(nag.findings(app))


def test_acknowledgements_are_narrow_and_reasoned(one, two) -> None:
    """Only on specific constructs (never the app or the stack), each with a real reason."""
    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    for synth in (one, two):
        seen = 0
        for construct in [synth.app, *synth.app.node.find_all()]:
            for entry in construct.node.metadata:
                if entry.type != key:
                    continue
                assert construct is not synth.app and construct is not synth.stack
                for rule, reason in entry.data.items():
                    seen += 1
                    assert any(f"::{pack}-" in rule for pack in nag.PACKS), rule
                    assert len(reason) >= 80, (rule, reason)
        assert seen > 0


def test_disabling_waf_is_acknowledged_on_the_stage_only(two) -> None:
    key = Validations.ACKNOWLEDGED_RULES_METADATA_KEY
    holders = [
        c.node.path
        for c in two.app.node.find_all()
        for e in c.node.metadata
        if e.type == key and any("APIG3" in r for r in e.data)
    ]
    assert holders == [two.stack.api.stage.node.path]
