"""Scanners over the synthesized templates: cfn-lint with the serverless rules.

cdk-nag (AwsSolutions and Serverless packs) runs at every synth and is checked in
test_infra_nag.py. Here cfn-lint, with the cfn-lint-serverless rules appended, lints the
template of each deployment shape the infra tests build:

    cfn-lint --format json --append-rules cfn_lint_serverless.rules -- <template>.json

It must report nothing (errors, warnings, informational). A check is skipped only per
resource, in ``Metadata.cfn-lint.config.ignore_checks``, with its reason beside it in
``Metadata.cfn-lint.reasons`` (written by `infra.nag.cfn_lint_ignore`). Each ignore must be
load-bearing: the same template without them reports exactly the ignored (resource, rule)
pairs.

checkov is not run: it pins packaging<24 and boto3 1.35, below this project's lock.
One cfn-lint run lints every template (about 5 s per template): the tests are `slow`.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra import nag
from infra.config import DeploymentConfig, SageMakerDeployment

from .conftest import BGE, MINILM, ROOT, Synth, synth

pytestmark = pytest.mark.slow

CFN_LINT = Path(sys.executable).parent / "cfn-lint"
SERVERLESS_RULES = "cfn_lint_serverless.rules"
STRIPPED = ".stripped.json"


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """Every kind of resource at once: two Lambda models (hooks, rollouts), a SageMaker
    endpoint with data capture on a non-NVMe instance (its volume key), WAF, signing."""
    config = DeploymentConfig(
        models=(MINILM, BGE),
        sagemaker_models=(
            SageMakerDeployment(
                name="big", version="1", instance_type="ml.c7i.2xlarge", data_capture=True
            ),
        ),
        image_source="ecr",
        ecr_repository_name="onnxlift",
        signing="kms",
    )
    return synth(config, ROOT, tmp_path_factory.mktemp("full"))


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The prod environment as cdk.json sets it: provisioned concurrency with autoscaling,
    WAF, canary rollouts, the account's API Gateway role, an arm64 model."""
    from tests.infra.test_infra_environments import env_config

    return synth(env_config("prod"), ROOT, tmp_path_factory.mktemp("prod"))


@pytest.fixture(scope="module")
def templates(one: Synth, two: Synth, full: Synth, prod: Synth) -> dict[str, Path]:
    """Every template the four synths wrote (any stack name), keyed by a readable label."""
    found = {
        f"{label}/{path.name}": path
        for label, built in (("one", one), ("two", two), ("full", full), ("prod", prod))
        for path in sorted(built.outdir.glob("*.template.json"))
    }
    assert len(found) >= 4, found
    return found


def resources(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text())["Resources"]


def ignores(path: Path) -> dict[str, dict[str, Any]]:
    """{resource id: its Metadata.cfn-lint} for every resource that ignores a check."""
    return {
        rid: r["Metadata"][nag.CFN_LINT_METADATA]
        for rid, r in resources(path).items()
        if nag.CFN_LINT_METADATA in r.get("Metadata", {})
    }


def stripped(path: Path) -> Path:
    """A copy of the template without any resource's cfn-lint metadata."""
    template = json.loads(path.read_text())
    clean = copy.deepcopy(template)
    for resource in clean["Resources"].values():
        resource.get("Metadata", {}).pop(nag.CFN_LINT_METADATA, None)
    out = path.with_name(path.name.removesuffix(".json") + STRIPPED)
    out.write_text(json.dumps(clean))
    return out


@pytest.fixture(scope="module")
def lint(templates: dict[str, Path]) -> dict[Path, list[tuple[str, str]]]:
    """One cfn-lint run over every template and its stripped copy: {file: [(resource, rule)]}."""
    files = [*templates.values(), *(stripped(p) for p in templates.values())]
    result = subprocess.run(
        [
            str(CFN_LINT),
            "--format",
            "json",
            "--append-rules",
            SERVERLESS_RULES,
            "--",
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    # 0: nothing found; 2/4/8 (bit flags): errors/warnings/informational were reported.
    assert result.returncode in (0, 2, 4, 6, 8, 10, 12, 14), result.stderr[-3000:]
    found: dict[Path, list[tuple[str, str]]] = {Path(f): [] for f in files}
    for match in json.loads(result.stdout):
        location = match["Location"]["Path"]
        resource = location[1] if len(location) > 1 and location[0] == "Resources" else ""
        found[Path(match["Filename"])].append((resource, match["Rule"]["Id"]))
    return found


def test_cfn_lint_with_serverless_rules_reports_nothing(
    templates: dict[str, Path], lint: dict[Path, list[tuple[str, str]]]
) -> None:
    for label, path in templates.items():
        assert lint[path] == [], label


def test_the_serverless_rules_are_loaded(lint: dict[Path, list[tuple[str, str]]]) -> None:
    """Guard against a silently missing plugin: WS1004 is a cfn-lint-serverless rule."""
    rules = {rule for found in lint.values() for _, rule in found}
    assert "WS1004" in rules, rules


def test_each_cfn_lint_ignore_is_load_bearing(
    templates: dict[str, Path], lint: dict[Path, list[tuple[str, str]]]
) -> None:
    for label, path in templates.items():
        ignored = {
            (rid, rule)
            for rid, meta in ignores(path).items()
            for rule in meta["config"]["ignore_checks"]
        }
        assert ignored, label
        found = set(lint[path.with_name(path.name.removesuffix(".json") + STRIPPED)])
        assert found == ignored, label


def test_each_cfn_lint_ignore_has_its_reason(templates: dict[str, Path]) -> None:
    for label, path in templates.items():
        for rid, meta in ignores(path).items():
            checks = meta["config"]["ignore_checks"]
            assert checks and set(meta["reasons"]) == set(checks), (label, rid)
            for rule, reason in meta["reasons"].items():
                assert len(reason) > 40, (label, rid, rule)


def test_what_the_ignores_cover(templates: dict[str, Path]) -> None:
    """Only the two by-construction findings are ignored, and only where they arise: W3005
    on Lambda functions and the SageMaker model, WS1004 on Lambda functions."""
    allowed = {
        "W3005": {"AWS::Lambda::Function", "AWS::SageMaker::Model"},
        "WS1004": {"AWS::Lambda::Function"},
    }
    for label, path in templates.items():
        types = {rid: r["Type"] for rid, r in resources(path).items()}
        for rid, meta in ignores(path).items():
            for rule in meta["config"]["ignore_checks"]:
                assert types[rid] in allowed.get(rule, set()), (label, rid, rule)
