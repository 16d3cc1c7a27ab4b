"""`-c onnxlift.signing=kms`: an asymmetric KMS key signs manifests; the model functions may
verify with it and nothing more; cdk-nag stays clean (issue 11, deliverable 6)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving.contract import Env

from infra import nag
from infra.config import ConfigError, DeploymentConfig, config_from_context
from tests.infra.conftest import MINILM, Synth, synth


@pytest.fixture(scope="module")
def signed(project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    config = config_from_context({"signing": "kms", "model_source": "registry"}, [MINILM])
    return synth(config, project_root, tmp_path_factory.mktemp("signed"))


def signing_keys(built: Synth) -> dict[str, dict[str, Any]]:
    return {
        k: r
        for k, r in built.of_type("AWS::KMS::Key").items()
        if r["Properties"].get("KeyUsage") == "SIGN_VERIFY"
    }


def model_functions(built: Synth) -> list[dict[str, Any]]:
    """The image functions that serve models (not the PreTraffic hooks, which load none)."""
    return [
        r
        for r in built.of_type("AWS::Lambda::Function").values()
        if r["Properties"].get("PackageType") == "Image"
    ]


def actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def kms_statements(built: Synth, role_id: str) -> list[dict[str, Any]]:
    """Every KMS statement of the policies attached to the role `role_id`."""
    return [
        statement
        for policy in built.of_type("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if any(a.startswith("kms:") for a in actions(statement))
    ]


def test_signing_is_off_by_default(one: Synth) -> None:
    assert signing_keys(one) == {}
    (function,) = model_functions(one)
    assert Env.MODEL_SIGNATURE_KEY not in function["Properties"]["Environment"]["Variables"]
    assert "ManifestSigningKeyArn" not in one.template.to_json().get("Outputs", {})


def test_the_key_is_asymmetric_p256_and_kept(signed: Synth) -> None:
    ((key_id, key),) = signing_keys(signed).items()
    assert key["Properties"]["KeySpec"] == "ECC_NIST_P256"
    assert "EnableKeyRotation" not in key["Properties"]  # KMS rotates symmetric keys only
    assert key["DeletionPolicy"] == "Retain"
    output = signed.template.to_json()["Outputs"]["ManifestSigningKeyArn"]
    assert output["Value"] == {"Fn::GetAtt": [key_id, "Arn"]}


def test_the_function_verifies_with_that_key_and_may_only_verify(signed: Synth) -> None:
    ((key_id, _),) = signing_keys(signed).items()
    (function,) = model_functions(signed)
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables[Env.MODEL_SIGNATURE_KEY] == {
        "Fn::Join": ["", ["kms:", {"Fn::GetAtt": [key_id, "Arn"]}]]
    }
    assert variables[Env.MODEL_SIGNATURE_REQUIRED] == "true"
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    assert kms_statements(signed, role_id) == [
        {"Action": "kms:Verify", "Effect": "Allow", "Resource": {"Fn::GetAtt": [key_id, "Arn"]}}
    ]


def test_the_pretraffic_hook_checks_the_same_signature_with_the_same_key(signed: Synth) -> None:
    """The hook trusts a parity set only under a manifest that verifies with the key the
    functions use (same env, same grant: kms:Verify on that key, nothing else of KMS)."""
    ((key_id, _),) = signing_keys(signed).items()
    (function,) = model_functions(signed)
    (hook,) = signed.stack.hooks
    props = signed.resources[signed.logical_id(hook.function)]["Properties"]
    variables, served = props["Environment"]["Variables"], function["Properties"]
    for name in (Env.MODEL_SIGNATURE_KEY, Env.MODEL_SIGNATURE_REQUIRED):
        assert variables[name] == served["Environment"]["Variables"][name]
    role_id = props["Role"]["Fn::GetAtt"][0]
    assert kms_statements(signed, role_id) == [
        {"Action": "kms:Verify", "Effect": "Allow", "Resource": {"Fn::GetAtt": [key_id, "Arn"]}}
    ]


def test_without_signing_the_hook_has_no_key(one: Synth) -> None:
    (hook,) = one.stack.hooks
    variables = one.resources[one.logical_id(hook.function)]["Properties"]["Environment"]
    assert Env.MODEL_SIGNATURE_KEY not in variables["Variables"]


def test_cdk_nag_has_nothing_to_say(signed: Synth) -> None:
    assert nag.findings(signed.app) == []
    assert nag.report_findings(signed.outdir) == []


def test_unknown_signing_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="signing 'gpg'"):
        DeploymentConfig(models=(MINILM,), signing="gpg")


def test_kms_optional_lets_unsigned_versions_load_and_still_verifies(
    project_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """For a registry published before signing: the same key and grant, unsigned versions
    load, a signature that is there must verify (ServiceConfig reads the flag back)."""
    from onnxlift_serving.service import ServiceConfig

    config = config_from_context({"signing": "kms-optional", "model_source": "registry"}, [MINILM])
    built = synth(config, project_root, tmp_path_factory.mktemp("optional"))
    assert len(signing_keys(built)) == 1
    (function,) = model_functions(built)
    variables = function["Properties"]["Environment"]["Variables"]
    assert variables[Env.MODEL_SIGNATURE_REQUIRED] == "false"
    plain = {k: v for k, v in variables.items() if isinstance(v, str)}
    read = ServiceConfig.from_env(plain | {Env.MODEL_SIGNATURE_KEY: "kms:arn"})
    assert read.signature_key == "kms:arn" and read.signature_required is False
