"""cdk-nag 3 wiring: the AwsSolutions pack, acknowledging findings, and reading them back.

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

Generic helpers only: each construct acknowledges its own findings with `ack`, next to
the resources they are about, so this module imports no construct or stack module.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aws_cdk import Acknowledgment, Stack, Validations
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

PACK = "AwsSolutions"
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
