"""cdk-nag 3 wiring: the AwsSolutions pack, our acknowledgements, and reading findings back.

cdk-nag 3 is a CDK policy-validation plugin, not an Aspect:

* enable:      ``Validations.of(app).add_plugins(AwsSolutionsChecks(app))``. The CDK runs it
               after synthesis; unacknowledged *error* findings fail `cdk synth`, and every
               finding is written to ``<cdk.out>/validation-report.json``.
* acknowledge: ``Validations.of(construct).acknowledge(Acknowledgment(id=..., reason=...))``;
               it covers the construct and everything under it. Rules that report several
               findings per resource (IAM4/IAM5) are acknowledged one finding at a time as
               ``RuleId[Finding]`` (v2's ``applies_to``); there is no prefix matching.
* read:        ``AwsSolutionsChecks().validate_scope(app)`` returns the
               ``PolicyValidationPluginReport`` directly (no synth needed), or read the
               ``validation-report.json`` that synth wrote (see `report_findings`).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_apigateway as apigw
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

if TYPE_CHECKING:
    from infra.stack import OnnxliftStack

PACK = "AwsSolutions"
REPORT_FILE = "validation-report.json"

REASON_API_KEY_AUTH = (
    "onnxlift is a machine-to-machine inference API: every method requires an API key "
    "bound to a usage plan (per-key throttle and quota) and the stage sits behind WAF. "
    "There are no end users to authenticate, so no IAM/Cognito/Lambda authorizer; put one "
    "in front if per-user identity is ever needed."
)
REASON_COGNITO = (
    "No Cognito user pool by design: callers are services holding an API key (usage plan), "
    "not end users; see the APIG4 acknowledgement on the same method."
)
REASON_XRAY = (
    "Active X-Ray tracing: xray:PutTraceSegments and xray:PutTelemetryRecords do not "
    "support resource-level permissions, so their statement must use Resource '*'. "
    "A test asserts those two are the only actions on '*'."
)
REASON_MODEL_PREFIX = (
    "Read-only (s3:GetObject, s3:GetObjectVersion) on this model's own registry prefix "
    "models/<name>/*: the wildcard is the object key under the prefix (versions, manifest, "
    "assets); other models' prefixes are not covered."
)
REASON_APIGW_ACCOUNT_ROLE = (
    "API Gateway's CloudWatch role is one per account and region, shared by every REST API "
    "there; it writes execution logs to service-named groups API-Gateway-Execution-Logs_"
    "<api-id>/<stage> and access logs to each API's own group, so it needs this account and "
    "region's log groups. Same actions as the AWS managed AmazonAPIGatewayPushToCloudWatchLogs "
    "minus its read actions, limited to this account and region."
)
REASON_NO_WAF = (
    "WAF switched off in the deployment config (onnxlift.waf_enabled=false); the API still "
    "requires an API key and a usage plan throttle on every method."
)


@dataclass(frozen=True)
class Finding:
    rule_id: str  # e.g. "AwsSolutions-S1" or "AwsSolutions-IAM5[Resource::*]"
    construct_path: str
    severity: str
    description: str


def enable(app: IConstruct, *, verbose: bool = False) -> AwsSolutionsChecks:
    """Run the AwsSolutions pack over the whole app at synth."""
    pack = AwsSolutionsChecks(app, verbose=verbose)
    Validations.of(app).add_plugins(pack)
    return pack


def findings(scope: IConstruct) -> list[Finding]:
    """Unacknowledged AwsSolutions findings under `scope`, without synthesizing."""
    report = AwsSolutionsChecks().validate_scope(scope)
    return [
        Finding(
            rule_id=violation.rule_name,
            construct_path=resource.construct_path or "",
            severity=violation.severity or "",
            description=violation.description,
        )
        for violation in report.violations
        for resource in violation.violating_resources
    ]


def report_findings(assembly_dir: str | Path) -> list[Finding]:
    """AwsSolutions findings from the validation report a synth wrote (none: no report)."""
    path = Path(assembly_dir) / REPORT_FILE
    if not path.is_file():
        return []
    report = json.loads(path.read_text())
    return [
        Finding(
            rule_id=violation["ruleName"],
            construct_path=construct.get("constructPath", ""),
            severity=violation.get("severity", ""),
            description=violation.get("description", ""),
        )
        for plugin in report.get("pluginReports", [])
        if plugin.get("pluginName") == PACK
        for violation in plugin.get("violations", [])
        for construct in violation.get("violatingConstructs", [])
    ]


def flatten_cfn_reference(node: Any) -> str:
    """Python port of cdk-nag's flattenCfnReference: how findings spell resolved tokens."""
    if node is None:
        return ""
    if isinstance(node, str):
        return node.replace("${", "<").replace("}", ">")
    if isinstance(node, dict):
        if "Fn::Join" in node:
            delimiter, items = node["Fn::Join"]
            return delimiter.join(flatten_cfn_reference(item) for item in items)
        if "Fn::Sub" in node:
            return flatten_cfn_reference(node["Fn::Sub"])
        if "Fn::GetAtt" in node:
            resource, attribute = node["Fn::GetAtt"]
            return f"<{flatten_cfn_reference(resource)}.{flatten_cfn_reference(attribute)}>"
        if "Fn::ImportValue" in node:
            return flatten_cfn_reference(node["Fn::ImportValue"])
        if "Ref" in node:
            return f"<{flatten_cfn_reference(node['Ref'])}>"
    return json.dumps(node, separators=(",", ":"))


def resource_finding(scope: IConstruct, arn: str) -> str:
    """The `Resource::...` finding IAM5 reports for a wildcard resource ARN (may be a token)."""
    return f"Resource::{flatten_cfn_reference(Stack.of(scope).resolve(arn))}"


def acknowledge_findings(stack: OnnxliftStack, *, skip: Collection[str] = ()) -> None:
    """Acknowledge, construct by construct, the findings the design accepts.

    `skip` leaves out acknowledgements by rule id (with or without the [finding] part);
    tests use it to prove that each acknowledgement is what silences its finding.
    """

    def ack(construct: IConstruct, rule_id: str, reason: str) -> None:
        if rule_id in skip or rule_id.split("[", 1)[0] in skip:
            return
        Validations.of(construct).acknowledge(Acknowledgment(id=rule_id, reason=reason))

    # APIG4/COG4 only where the compensating control is really there: a method that
    # does not require an API key stays a finding.
    for method in stack.api.methods:
        cfn_method = method.node.default_child
        assert isinstance(cfn_method, apigw.CfnMethod)
        if cfn_method.api_key_required is True:
            ack(method, f"{PACK}-APIG4", REASON_API_KEY_AUTH)
            ack(method, f"{PACK}-COG4", REASON_COGNITO)

    from infra import sagemaker_endpoint

    for endpoint in stack.endpoints:
        sagemaker_endpoint.acknowledge_findings(endpoint, skip=tuple(skip))

    for fn in stack.functions:
        policy = fn.role.node.find_child("DefaultPolicy")
        ack(policy, f"{PACK}-IAM5[Resource::*]", REASON_XRAY)
        model_objects = stack.registry.model_objects_arn(fn.model.name)
        ack(policy, f"{PACK}-IAM5[{resource_finding(stack, model_objects)}]", REASON_MODEL_PREFIX)

    if stack.api.cloudwatch_role is not None:
        ack(
            stack.api.cloudwatch_role,
            f"{PACK}-IAM5[{resource_finding(stack, stack.api.log_groups_arn)}]",
            REASON_APIGW_ACCOUNT_ROLE,
        )

    if stack.api.web_acl is None:
        ack(stack.api.stage, f"{PACK}-APIG3", REASON_NO_WAF)
