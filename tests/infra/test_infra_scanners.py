"""Scanners over the synthesized templates: cfn-lint with the serverless rules, and checkov.

cdk-nag (AwsSolutions and Serverless packs) runs at every synth and is checked in
test_infra_nag.py. Here two scanners read the template of each deployment shape the infra
tests build (one, two, full) and of each environment as cdk.json sets it (dev, staging, prod).

cfn-lint, with the cfn-lint-serverless rules appended:

    cfn-lint --format json --append-rules cfn_lint_serverless.rules -- <template>.json

must report nothing (errors, warnings, informational). A check is skipped only per
resource, in ``Metadata.cfn-lint.config.ignore_checks``, with its reason beside it in
``Metadata.cfn-lint.reasons`` (written by `infra.nag.cfn_lint_ignore`).

checkov, CloudFormation framework, from its own venv (.venv-scan, installed by `make setup`
from requirements/scan.lock: checkov pins packaging<24 and boto3 ~=1.35, below dev.lock):

    .venv-scan/bin/checkov -f <template>.json ... --framework cloudformation -o json
        --skip-download          (offline: no platform download, no update check)

must fail no check. A check is skipped only per resource, in ``Metadata.checkov.skip``
(``[{"id": ..., "comment": <reason>}]``, written by `infra.nag.checkov_skip`).

For both, each skip must be load-bearing: the same template without them reports exactly
the skipped (resource, check) pairs. One run of each scanner covers every template and its
stripped copies (cfn-lint about 5 s, checkov about 2 s per template): the tests are `slow`.
"""

from __future__ import annotations

import copy
import json
import os
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
CHECKOV = ROOT / ".venv-scan" / "bin" / "checkov"
CHECKOV_STRIPPED = ".checkov-stripped.json"
# checkov otherwise asks PyPI for a newer version and its platform for check metadata.
CHECKOV_OFFLINE = {"CKV_SKIP_PACKAGE_UPDATE_CHECK": "true", "BC_SKIP_MAPPING": "TRUE"}


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


def environment(env: str, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from tests.infra.test_infra_environments import env_config

    return synth(env_config(env), ROOT, tmp_path_factory.mktemp(env))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The dev environment as cdk.json sets it: no WAF, no account role, all-at-once."""
    return environment("dev", tmp_path_factory)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The staging environment as cdk.json sets it: WAF, linear rollouts."""
    return environment("staging", tmp_path_factory)


@pytest.fixture(scope="module")
def prod(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The prod environment as cdk.json sets it: provisioned concurrency with autoscaling,
    WAF, canary rollouts, the account's API Gateway role, an arm64 model."""
    return environment("prod", tmp_path_factory)


@pytest.fixture(scope="module")
def templates(
    one: Synth, two: Synth, full: Synth, dev: Synth, staging: Synth, prod: Synth
) -> dict[str, Path]:
    """Every template the six synths wrote (any stack name), keyed by a readable label."""
    shapes = {"one": one, "two": two, "full": full, "dev": dev, "staging": staging, "prod": prod}
    found = {
        f"{label}/{path.name}": path
        for label, built in shapes.items()
        for path in sorted(built.outdir.glob("*.template.json"))
    }
    assert len(found) >= len(shapes), found
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


# -- checkov -------------------------------------------------------------------------------


def checkov_skips(path: Path) -> dict[tuple[str, str], str]:
    """{(resource id, check id): reason} for every Metadata.checkov skip in the template."""
    return {
        (rid, entry["id"]): entry.get("comment", "")
        for rid, r in resources(path).items()
        for entry in r.get("Metadata", {}).get(nag.CHECKOV_METADATA, {}).get("skip", [])
    }


def checkov_stripped(path: Path) -> Path:
    """A copy of the template without any resource's checkov metadata."""
    clean = json.loads(path.read_text())
    for resource in clean["Resources"].values():
        resource.get("Metadata", {}).pop(nag.CHECKOV_METADATA, None)
    out = path.with_name(path.name.removesuffix(".json") + CHECKOV_STRIPPED)
    out.write_text(json.dumps(clean))
    return out


CheckovResults = dict[Path, dict[str, list[dict[str, Any]]]]


@pytest.fixture(scope="module")
def checkov(templates: dict[str, Path]) -> CheckovResults:
    """One checkov run over every template and its stripped copy:
    {file: {"passed" | "failed" | "skipped": [check, ...]}}."""
    if not CHECKOV.is_file():
        pytest.fail(f"{CHECKOV.relative_to(ROOT)} is missing: `make setup` installs it")
    files = [*templates.values(), *(checkov_stripped(p) for p in templates.values())]
    result = subprocess.run(
        [
            str(CHECKOV),
            *(arg for f in files for arg in ("-f", str(f))),
            "--framework",
            "cloudformation",
            "--output",
            "json",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, **CHECKOV_OFFLINE},
    )
    # 0: no failed check; 1: some failed (the stripped copies must).
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["check_type"] == "cloudformation", report.get("check_type")
    assert report["results"]["parsing_errors"] == [], report["results"]["parsing_errors"]
    found: CheckovResults = {
        f.resolve(): {"passed": [], "failed": [], "skipped": []} for f in files
    }
    for outcome in ("passed", "failed", "skipped"):
        for check in report["results"][f"{outcome}_checks"]:
            found[Path(check["file_abs_path"]).resolve()][outcome].append(check)
    return found


def pairs(checks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """{(resource id, check id)}: checkov names a resource `<Type>.<logical id>`."""
    return {(check["resource"].rsplit(".", 1)[1], check["check_id"]) for check in checks}


def test_checkov_fails_no_check(templates: dict[str, Path], checkov: CheckovResults) -> None:
    for label, path in templates.items():
        results = checkov[path.resolve()]
        assert len(results["passed"]) > 100, label  # it did read the template
        assert pairs(results["failed"]) == set(), label


def test_checkov_honours_each_skip_with_its_reason(
    templates: dict[str, Path], checkov: CheckovResults
) -> None:
    """checkov reports as skipped exactly the Metadata.checkov skips, each with its comment:
    it reads them (and none is for a check that does not apply to its resource)."""
    for label, path in templates.items():
        skips = checkov_skips(path)
        reported = {
            (pair, check["check_result"]["suppress_comment"])
            for check in checkov[path.resolve()]["skipped"]
            for pair in pairs([check])
        }
        assert reported == set(skips.items()), label


def test_each_checkov_skip_is_load_bearing(
    templates: dict[str, Path], checkov: CheckovResults
) -> None:
    for label, path in templates.items():
        skipped = set(checkov_skips(path))
        assert skipped, label
        stripped_path = path.with_name(path.name.removesuffix(".json") + CHECKOV_STRIPPED)
        assert pairs(checkov[stripped_path.resolve()]["failed"]) == skipped, label


def test_each_checkov_skip_has_its_reason(templates: dict[str, Path]) -> None:
    for label, path in templates.items():
        for (rid, check_id), reason in checkov_skips(path).items():
            assert check_id.startswith("CKV_"), (label, rid, check_id)
            assert len(reason) > 40, (label, rid, check_id)


def test_what_the_checkov_skips_cover(templates: dict[str, Path]) -> None:
    """Each skipped check only on the kind of resource its reason is about."""
    allowed = {
        "CKV_AWS_115": {"AWS::Lambda::Function"},  # the SageMaker proxy's concurrency
        "CKV_AWS_116": {"AWS::Lambda::Function"},  # no DLQ: synchronous, or the hook
        "CKV_AWS_117": {"AWS::Lambda::Function"},  # no VPC
        "CKV_AWS_173": {"AWS::Lambda::Function"},  # environment under the AWS managed key
        "CKV_AWS_158": {"AWS::Logs::LogGroup"},  # log groups under the service key
        "CKV_AWS_120": {"AWS::ApiGateway::Stage"},  # no stage cache
        "CKV_AWS_18": {"AWS::S3::Bucket"},  # the access-log bucket
    }
    for label, path in templates.items():
        types = {rid: r["Type"] for rid, r in resources(path).items()}
        for rid, check_id in checkov_skips(path):
            assert types[rid] in allowed.get(check_id, set()), (label, rid, check_id)
