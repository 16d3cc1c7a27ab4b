"""The deploy rehearsal end to end: the real cdk CLI (bootstrap + deploy, ECR mode) against moto
server on 127.0.0.1, started and stopped here. It asserts what moto created and, exactly, what
it did not: a resource type moto learns (or forgets) in a new release, or a template change,
fails here until the lists below and README ("Rehearsing a deploy") say so."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest
from onnxlift_serving.contract import stack_name

from onnxlift.local.moto_server import LOCAL_CREDENTIALS
from onnxlift.local.processes import free_port, port_in_use
from onnxlift.local.rehearsal import Rehearsal, format_report, rehearse
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

CREATED = {
    "AWS::ApiGateway::Deployment": 1,
    "AWS::ApiGateway::Method": 80,
    "AWS::ApiGateway::Resource": 44,
    "AWS::ApiGateway::RestApi": 1,
    "AWS::CloudWatch::Dashboard": 1,
    "AWS::IAM::Policy": 8,
    "AWS::IAM::Role": 11,
    "AWS::Lambda::Function": 7,
    "AWS::Lambda::Permission": 8,
    "AWS::Lambda::Version": 3,
    "AWS::Logs::LogGroup": 8,
    "AWS::S3::Bucket": 2,
    "AWS::SageMaker::Endpoint": 1,
    "AWS::SageMaker::EndpointConfig": 1,
    "AWS::SageMaker::Model": 1,
}
# Types moto 5.2.5's CloudFormation does not implement: every resource of them is skipped.
UNSUPPORTED = {
    "AWS::ApiGateway::ApiKey": 1,
    "AWS::ApiGateway::GatewayResponse": 13,
    "AWS::ApiGateway::RequestValidator": 1,
    "AWS::ApiGateway::Stage": 1,
    "AWS::ApiGateway::UsagePlan": 1,
    "AWS::ApiGateway::UsagePlanKey": 1,
    "AWS::ApplicationAutoScaling::ScalableTarget": 1,
    "AWS::ApplicationAutoScaling::ScalingPolicy": 1,
    "AWS::CloudWatch::Alarm": 12,
    "AWS::CodeDeploy::Application": 1,
    "AWS::CodeDeploy::DeploymentGroup": 3,
    "AWS::Lambda::Alias": 3,
    "AWS::S3::BucketPolicy": 2,
    "AWS::SNS::TopicPolicy": 1,
}
# Resources of supported types whose creation moto's handler raised on, with its exception.
RAISED = {
    "PreTrafficminilmRoleDefaultPolicyE784AA45": "TypeError('Object of type LambdaVersion is not "
    "JSON serializable')",
    "PreTraffictabularRoleDefaultPolicy2CDEC5B1": "TypeError('Object of type LambdaVersion is not "
    "JSON serializable')",
    "PreTraffictextclfRoleDefaultPolicy3DA97F24": "TypeError('Object of type LambdaVersion is not "
    "JSON serializable')",
    "AlarmsKey3C2381B3": "KeyError('TagKey')",
    "AlarmsTopic3A2DFEBA": "ValidationError('Template error: instance of Fn::GetAtt references "
    "undefined resource AlarmsKey3C2381B3')",
}
# Created by CloudFormation's word, but the Lambda API cannot read them back (moto keeps the
# Ref of a Lambda::Version in their environment as an object and GetFunction fails with a 500).
UNREADABLE_PREFIXES = ("PreTrafficminilmFunction", "PreTraffictabularFunction",
                       "PreTraffictextclfFunction")  # fmt: skip


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[Rehearsal, dict, float]:
    workdir = tmp_path_factory.mktemp("rehearsal")
    port = free_port()
    started = time.monotonic()
    result = rehearse(ROOT, workdir, env="dev", port=port, timeout=300)  # stops moto, always
    assert not port_in_use(port), "moto server still answers after the rehearsal"
    seconds = time.monotonic() - started
    print(format_report(result), f"\nwall time {seconds:.1f}s")
    template = json.loads((workdir / "cdk.out" / f"{stack_name('dev')}.template.json").read_text())
    return result, template["Resources"], seconds


def test_every_template_resource_is_either_created_or_named_as_not(rehearsal) -> None:
    result, template, seconds = rehearsal
    created = {c.logical_id for c in result.created}
    missing = {n.logical_id for n in result.not_created}
    assert result.status == "CREATE_COMPLETE"
    assert not created & missing
    assert created | missing == set(template)
    assert result.template_resources == len(template) == sum(CREATED.values()) + len(missing)
    assert seconds < 400, f"the rehearsal took {seconds:.0f}s"


def test_created_set(rehearsal) -> None:
    result, template, _ = rehearsal
    assert Counter(c.type for c in result.created) == CREATED
    assert all(template[c.logical_id]["Type"] == c.type for c in result.created)
    assert result.api == {"resources": 45, "methods": 80, "deployments": 1, "stages": 0}
    # Dashboard names are global to an account: the region is in it.
    assert result.outputs["DashboardName"] == f"onnxlift-dev-{LOCAL_CREDENTIALS['AWS_REGION']}"
    # Outputs that read a resource moto skipped (alias, API key, deployment group, topic).
    assert result.outputs_missing == [
        "AlarmTopicArn", "ApiKeyId", "DeploymentApplication",
        "ModelMinilmAliasArn", "ModelMinilmDeploymentGroup", "ModelTabularAliasArn",
        "ModelTabularDeploymentGroup", "ModelTextclfAliasArn", "ModelTextclfDeploymentGroup",
    ]  # fmt: skip


def test_created_resources_are_read_back_by_their_own_service(rehearsal) -> None:
    result, _, _ = rehearsal
    checked = [c for c in result.created if c.verified is not None]
    assert {c.type for c in checked} >= {
        "AWS::S3::Bucket", "AWS::Lambda::Function", "AWS::IAM::Role", "AWS::ApiGateway::RestApi",
        "AWS::SageMaker::Model", "AWS::Logs::LogGroup", "AWS::CloudWatch::Dashboard",
    }  # fmt: skip
    unreadable = sorted(c.logical_id for c in checked if not c.verified)
    assert [u.startswith(UNREADABLE_PREFIXES) for u in unreadable] == [True, True, True]
    assert all("500" in c.check_error for c in checked if not c.verified)


def test_not_created_list_is_exactly_moto_s_gaps(rehearsal) -> None:
    result, template, _ = rehearsal
    unsupported = [n for n in result.not_created if n.reason.startswith("moto has no")]
    assert Counter(n.type for n in unsupported) == UNSUPPORTED
    raised = {n.logical_id: n.reason for n in result.not_created if n not in unsupported}
    permissions = {k for k, v in raised.items() if template[k]["Type"] == "AWS::Lambda::Permission"}
    assert {k: raised[k].split(";")[0] for k in raised.keys() - permissions} == {
        k: f"moto raised {v}" for k, v in RAISED.items()
    }
    # Exactly the permissions for an alias: the Alias type is unsupported, so FunctionName is gone.
    aliases = {k for k, v in template.items() if v["Type"] == "AWS::Lambda::Alias"}
    for_alias = {
        k
        for k, v in template.items()
        if v["Type"] == "AWS::Lambda::Permission"
        and isinstance(v["Properties"]["FunctionName"], dict)
        and v["Properties"]["FunctionName"].get("Ref") in aliases
    }
    assert permissions == for_alias and len(for_alias) == 27
    assert all(raised[k].startswith("moto raised KeyError('FunctionName')") for k in permissions)
    assert all("(not created)" in raised[k] for k in permissions)


def test_report_names_every_resource_not_created(rehearsal) -> None:
    result, _, _ = rehearsal
    text = format_report(result)
    assert f"NOT created: {len(result.not_created)}" in text
    assert all(n.logical_id in text for n in result.not_created)
    assert "moto fixes in force" in text
