"""cdk-nag 3 wiring: the AwsSolutions and Serverless packs, acknowledging findings, and
reading them back; and the per-resource cfn-lint ignores (`cfn_lint_ignore`) and checkov
skips (`checkov_skip`).

cdk-nag 3 is a CDK policy-validation plugin, not an Aspect:

* enable:      ``Validations.of(app).add_plugins(AwsSolutionsChecks(app), ServerlessChecks())``.
               Only these two packs run: acknowledge nothing for a pack that never runs
               (HIPAA, NIST 800-53, PCI). The CDK runs them
               after synthesis; unacknowledged *error* findings fail `cdk synth`, and every
               finding is written to ``<cdk.out>/validation-report.json``.
* acknowledge: ``Validations.of(construct).acknowledge(Acknowledgment(id=..., reason=...))``;
               it covers the construct and everything under it. Rules that report several
               findings per resource (IAM4/IAM5) are acknowledged one finding at a time as
               ``RuleId[Finding]`` (v2's ``applies_to``); there is no prefix matching.
* read:        ``<Pack>Checks().validate_scope(app)`` returns the
               ``PolicyValidationPluginReport`` directly (no synth needed), or read the
               ``validation-report.json`` that synth wrote (see `report_findings`).

Generic helpers only: each construct acknowledges its own findings with `ack` (cdk-nag),
`cfn_lint_ignore` (cfn-lint) and `checkov_skip` (checkov), next to the resources they are
about, so this module imports no construct or stack module.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from cdk_nag import AwsSolutionsChecks, ServerlessChecks
from constructs import IConstruct

__all__ = [
    "CFN_LINT_METADATA",
    "CHECKOV_METADATA",
    "PACK",
    "PACKS",
    "REASON_API_DLQ",
    "REASON_ENV_NO_SECRETS",
    "REASON_LOGS_KMS",
    "REASON_NO_VPC",
    "REASON_OWN_LOG_GROUP",
    "REASON_ROLE_DEPENDS_ON",
    "REPORT_FILE",
    "SERVERLESS",
    "Finding",
    "ack",
    "cfn_lint_ignore",
    "cfn_lint_ignore_function",
    "checkov_skip",
    "checkov_skip_function",
    "enable",
    "findings",
    "flatten_cfn_reference",
    "report_findings",
    "resource_finding",
]

PACK = "AwsSolutions"
SERVERLESS = "Serverless"
PACKS = (PACK, SERVERLESS)  # the cdk-nag packs that run at synth; nothing else is acknowledged
CFN_LINT_METADATA = "cfn-lint"
CHECKOV_METADATA = "checkov"

# Reasons shared by several constructs (each still acknowledges at its own resource).
REASON_API_DLQ = (
    "API Gateway invokes this function synchronously (Lambda proxy integration, "
    "RequestResponse): a failure goes back to the caller as an HTTP error. A dead-letter queue "
    "only ever receives failed asynchronous invocations, so it does not apply."
)
REASON_ROLE_DEPENDS_ON = (
    "The CDK writes DependsOn [Role, Role's DefaultPolicy] so the policy exists before the "
    "resource uses the role; the Role entry is redundant with the GetAtt but harmless."
)
REASON_OWN_LOG_GROUP = (
    "The function logs to its own AWS::Logs::LogGroup (LoggingConfig.LogGroup) with "
    "RetentionInDays set; WS1004 only recognizes a group named /aws/lambda/<function>."
)
# checkov findings every Lambda function and log group here has by design (checkov_skip_function).
REASON_NO_VPC = (
    "The function reaches only AWS service endpoints (S3, KMS, Lambda, SageMaker runtime, "
    "CodeDeploy, CloudWatch, X-Ray) over TLS with IAM-signed requests, and no private "
    "resource (database, cache, internal host). A VPC would add NAT gateways or interface "
    "endpoints (cost, another failure path) and protect nothing this function talks to."
)
REASON_ENV_NO_SECRETS = (
    "The environment holds only names and identifiers (model name and version, bucket, "
    "endpoint or function name, key ARN, log level), no secret; Lambda encrypts it at rest "
    "with its AWS managed key. A customer managed key would guard nothing more."
)
REASON_LOGS_KMS = (
    "CloudWatch Logs encrypts this group at rest with a service key. It holds request "
    "metadata and errors, never request or response bodies (the handlers do not log them, "
    "API Gateway data tracing is off), and IAM on the group controls who reads it; a customer "
    "managed key would add a key policy for the logs service and KMS charges for no data that "
    "needs key-level separation."
)
REPORT_FILE = "validation-report.json"


@dataclass(frozen=True)
class Finding:
    rule_id: str  # e.g. "AwsSolutions-S1" or "AwsSolutions-IAM5[Resource::*]"
    construct_path: str
    severity: str
    description: str


def ack(construct: IConstruct, rule_id: str, reason: str, *, skip: Collection[str] = ()) -> None:
    """Acknowledge `rule_id` on `construct` and everything under it, with its reason.

    `skip` leaves out acknowledgements by rule id (with or without the [finding] part);
    tests use it to prove that each acknowledgement is what silences its finding.
    """
    if rule_id in skip or rule_id.split("[", 1)[0] in skip:
        return
    Validations.of(construct).acknowledge(Acknowledgment(id=rule_id, reason=reason))


def cfn_lint_ignore(resource: IConstruct, rule_id: str, reason: str) -> None:
    """Have cfn-lint skip `rule_id` on this one resource (an L2 means its default child).

    cfn-lint reads ``Metadata.cfn-lint.config.ignore_checks``; the reason sits beside it in
    ``Metadata.cfn-lint.reasons`` (cfn-lint leaves other keys alone), and the scanner test
    asserts every ignored check there has one.
    """
    cfn = _cfn_resource(resource)
    metadata = cfn.get_metadata(CFN_LINT_METADATA) or {"config": {"ignore_checks": []}}
    if rule_id not in metadata["config"]["ignore_checks"]:
        metadata["config"]["ignore_checks"].append(rule_id)
    metadata.setdefault("reasons", {})[rule_id] = reason
    cfn.add_metadata(CFN_LINT_METADATA, metadata)


def cfn_lint_ignore_function(function: IConstruct) -> None:
    """The two cfn-lint findings every Lambda function here has by construction (reasons above)."""
    cfn_lint_ignore(function, "W3005", REASON_ROLE_DEPENDS_ON)
    cfn_lint_ignore(function, "WS1004", REASON_OWN_LOG_GROUP)


def checkov_skip(resource: IConstruct, check_id: str, reason: str) -> None:
    """Have checkov skip `check_id` on this one resource (an L2 means its default child).

    checkov reads ``Metadata.checkov.skip``, a list of ``{"id": ..., "comment": ...}``; the
    comment is the reason (checkov reports it as the suppression comment), and the scanner
    test asserts every skip has one.
    """
    cfn = _cfn_resource(resource)
    metadata = cfn.get_metadata(CHECKOV_METADATA) or {"skip": []}
    skips = [entry for entry in metadata["skip"] if entry["id"] != check_id]
    metadata["skip"] = [*skips, {"id": check_id, "comment": reason}]
    cfn.add_metadata(CHECKOV_METADATA, metadata)


def checkov_skip_function(function: IConstruct, log_group: IConstruct, *, dlq: str) -> None:
    """The checkov findings every Lambda function here has by design, and its log group's:
    no dead-letter queue (`dlq` says why for this function), no VPC, environment under the
    AWS managed key, log group under the service key (reasons above)."""
    checkov_skip(function, "CKV_AWS_116", dlq)
    checkov_skip(function, "CKV_AWS_117", REASON_NO_VPC)
    checkov_skip(function, "CKV_AWS_173", REASON_ENV_NO_SECRETS)
    checkov_skip(log_group, "CKV_AWS_158", REASON_LOGS_KMS)


def _cfn_resource(resource: IConstruct) -> CfnResource:
    cfn = resource if isinstance(resource, CfnResource) else resource.node.default_child
    assert isinstance(cfn, CfnResource), f"{resource.node.path} has no CloudFormation resource"
    return cfn


def enable(
    app: IConstruct, *, verbose: bool = False
) -> tuple[AwsSolutionsChecks, ServerlessChecks]:
    """Run the AwsSolutions and Serverless packs over the whole app at synth."""
    packs = (AwsSolutionsChecks(app, verbose=verbose), ServerlessChecks(app, verbose=verbose))
    Validations.of(app).add_plugins(*packs)
    return packs


def findings(scope: IConstruct) -> list[Finding]:
    """Unacknowledged AwsSolutions and Serverless findings under `scope`, without synthesizing."""
    return [
        finding
        for checks in (AwsSolutionsChecks(), ServerlessChecks())
        for finding in _findings(checks, scope)
    ]


def _findings(checks: AwsSolutionsChecks | ServerlessChecks, scope: IConstruct) -> list[Finding]:
    report = checks.validate_scope(scope)
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
    """AwsSolutions and Serverless findings from the report a synth wrote (none: no report)."""
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
        if plugin.get("pluginName") in PACKS
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
