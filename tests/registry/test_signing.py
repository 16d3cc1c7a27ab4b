"""Signed manifests (issue 11, deliverable 6): real ECDSA, moto server on loopback for S3 and
KMS. Whoever can write the bucket can swap a model and its manifest's sha256 together; with a
key configured, pull and load refuse what the key did not sign."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from onnxlift_serving.artifact import fetch_from_registry, load_artifact
from onnxlift_serving.errors import ArtifactError, ServiceUnavailable
from onnxlift_serving.service import ModelService, ServiceConfig
from onnxlift_serving.signing import (
    FileKey,
    KmsKey,
    SignaturePolicy,
    create_file_key,
    open_key,
    signature_document,
)

from onnxlift.cli import cli
from onnxlift.local.moto_server import aws_env, start_moto
from onnxlift.local.processes import free_port
from onnxlift.registry import Registry
from tests.registry.test_hostile_manifests import everything_under
from tests.registry.test_registry import make_artifact

BUCKET = "onnxlift-signing-test"
MANIFEST = "models/tiny/1/manifest.json"


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    child = start_moto(port=port, log=tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    for key, value in aws_env(moto_endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    with_bucket = Registry(BUCKET, s3)
    with_bucket.ensure_bucket()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=BUCKET, Key=item["Key"], VersionId=item["VersionId"])
    return {"s3": s3, "kms": boto3.client("kms", endpoint_url=moto_endpoint)}


@pytest.fixture
def file_key(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "key" / "key.pem", tmp_path / "key" / "key.pub.pem"
    create_file_key(private, public)
    return private, public


def signed_registry(aws: dict[str, Any], key: Any, *, required: bool = True) -> Registry:
    return Registry(BUCKET, aws["s3"], signer=key, signature=SignaturePolicy(key, required))


def verifier(public: Path, *, required: bool = True) -> SignaturePolicy:
    return SignaturePolicy(FileKey(public), required)


def test_file_key_round_trip_and_refusals(file_key: tuple[Path, Path], tmp_path: Path) -> None:
    private, public = file_key
    assert private.stat().st_mode & 0o077 == 0  # the private half is its owner's only
    manifest = b'{"name": "tiny"}'
    doc = signature_document(manifest, FileKey(private))
    policy = verifier(public)
    policy.check(manifest, doc, "tiny")  # verifies with the public half alone
    with pytest.raises(ArtifactError, match="does not verify"):
        policy.check(manifest + b" ", doc, "tiny")  # one byte more
    create_file_key(tmp_path / "other.pem", tmp_path / "other.pub.pem")
    with pytest.raises(ArtifactError, match="does not verify"):
        verifier(tmp_path / "other.pub.pem").check(manifest, doc, "tiny")
    with pytest.raises(ArtifactError, match="not a signature document"):
        policy.check(manifest, b"garbage", "tiny")
    with pytest.raises(ArtifactError, match="cannot sign"):
        signature_document(manifest, FileKey(public))
    with pytest.raises(ArtifactError, match="neither"):
        open_key("vault:somewhere")


def test_signed_publish_pulls_and_loads(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = file_key
    registry = signed_registry(aws, FileKey(private))
    assert registry.publish(make_artifact(tmp_path / "a"), name="tiny") == "1"
    stored = aws["s3"].get_object(Bucket=BUCKET, Key=MANIFEST)["Body"].read()
    sig = json.loads(
        aws["s3"].get_object(Bucket=BUCKET, Key="models/tiny/1/manifest.sig")["Body"].read()
    )
    assert sig["manifest_sha256"] == hashlib.sha256(stored).hexdigest()
    assert sig["algorithm"] == "ECDSA_SHA_256" and sig["key_id"] == FileKey(public).key_id
    folder = Registry(BUCKET, aws["s3"], signature=verifier(public)).download(
        "tiny", "1", tmp_path / "cache"
    )
    assert (folder / "manifest.json").read_bytes() == stored  # verbatim: still verifiable
    assert load_artifact(folder, signature=verifier(public)).version == "1"  # as baked in
    with pytest.raises(Exception, match="exists"):  # the signature is immutable too
        registry._put_new("models/tiny/1/manifest.sig", body=b"{}")


def tamper(aws: dict[str, Any], payload: bytes) -> None:
    """Swap the model and rewrite the manifest's sha256 to match: every sha256 check passes."""
    s3 = aws["s3"]
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=MANIFEST)["Body"].read())
    s3.put_object(Bucket=BUCKET, Key="models/tiny/1/model.onnx", Body=payload)
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=MANIFEST, Body=json.dumps(manifest, indent=2).encode())


def test_swapped_model_with_matching_sha256_is_refused_at_pull_and_load(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = file_key
    signed_registry(aws, FileKey(private)).publish(make_artifact(tmp_path / "a"), name="tiny")
    tamper(aws, b"evil-onnx")
    unsigned_reader = Registry(BUCKET, aws["s3"])  # without a key: sha256s match, it loads
    assert unsigned_reader.download("tiny", "1", tmp_path / "plain").is_dir()
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="does not verify"):
        Registry(BUCKET, aws["s3"], signature=verifier(public)).download("tiny", "1", cache)
    assert everything_under(cache) == []  # refused before any folder is made
    # A copy baked in from elsewhere (the plain download) carries no valid signature either.
    with pytest.raises(ArtifactError, match="not signed"):
        load_artifact(tmp_path / "plain" / "tiny" / "1", signature=verifier(public))


def test_a_signed_manifest_of_another_version_is_refused(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """Validly signed, but for version 2: copying it over version 1 is still refused."""
    private, public = file_key
    registry = signed_registry(aws, FileKey(private))
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    registry.publish(make_artifact(tmp_path / "b", payload=b"other-model"), name="tiny")
    s3 = aws["s3"]
    for name in ("manifest.json", "manifest.sig", "model.onnx"):
        body = s3.get_object(Bucket=BUCKET, Key=f"models/tiny/2/{name}")["Body"].read()
        s3.put_object(Bucket=BUCKET, Key=f"models/tiny/1/{name}", Body=body)
    with pytest.raises(ArtifactError, match="names version '2'"):
        fetch_from_registry(
            bucket=BUCKET,
            name="tiny",
            version="1",
            cache_dir=tmp_path / "cache",
            s3_client=s3,
            signature=verifier(public),
        )


def test_missing_signature_refused_when_required_accepted_when_not(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    _, public = file_key
    Registry(BUCKET, aws["s3"]).publish(make_artifact(tmp_path / "a"), name="tiny")  # unsigned
    required = Registry(BUCKET, aws["s3"], signature=verifier(public))
    with pytest.raises(ArtifactError, match="not signed, and this deployment requires it"):
        required.download("tiny", "1", tmp_path / "strict")
    assert everything_under(tmp_path / "strict") == []
    lenient = Registry(BUCKET, aws["s3"], signature=verifier(public, required=False))
    assert load_artifact(lenient.download("tiny", "1", tmp_path / "lenient")).version == "1"


def test_a_cached_unsigned_copy_is_not_reused_once_signatures_are_required(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = file_key
    signed_registry(aws, FileKey(private)).publish(make_artifact(tmp_path / "a"), name="tiny")
    cache = tmp_path / "cache"
    Registry(BUCKET, aws["s3"]).download("tiny", "1", cache)  # before signing was switched on
    assert not (cache / "tiny" / "1" / "manifest.sig").exists()
    folder = Registry(BUCKET, aws["s3"], signature=verifier(public)).download("tiny", "1", cache)
    assert (folder / "manifest.sig").is_file()  # fetched again, this time with its signature


def test_the_function_answers_503_for_a_tampered_version(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    private, public = file_key
    signed_registry(aws, FileKey(private)).publish(make_artifact(tmp_path / "a"), name="tiny")
    tamper(aws, b"evil-onnx")
    config = ServiceConfig(
        name="tiny",
        version="1",
        source="registry",
        bucket=BUCKET,
        cache_dir=tmp_path / "cache",
        signature_key=f"file:{public}",
    )
    service = ModelService(config, s3_client=aws["s3"])
    assert service.load_seconds is None
    with pytest.raises(ServiceUnavailable):
        service._version("1")
    assert "does not verify" in service._failures["1"][0]


def test_pull_refuses_a_tampered_version_with_one_line(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    private, public = file_key
    monkeypatch.setenv("ONNXLIFT_ROOT", str(tmp_path))
    (tmp_path / "pyproject.toml").write_text("")
    signed_registry(aws, FileKey(private)).publish(make_artifact(tmp_path / "a"), name="tiny")
    env = {"ONNXLIFT_BUCKET": BUCKET, "ONNXLIFT_SIGNING_KEY": f"file:{public}"}
    good = CliRunner().invoke(cli, ["pull", "tiny", "1"], env=env)
    assert good.exit_code == 0, good.output
    tamper(aws, b"evil-onnx")
    (tmp_path / ".onnxlift" / "artifacts").rename(tmp_path / "first-pull")
    bad = CliRunner().invoke(cli, ["pull", "tiny", "1"], env=env)
    assert bad.exit_code == 2, bad.output
    assert bad.output.count("\n") == 1 and "does not verify" in bad.output
    assert everything_under(tmp_path / ".onnxlift" / "artifacts") == []


def kms_key(aws: dict[str, Any]) -> KmsKey:
    created = aws["kms"].create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    return KmsKey(created["KeyMetadata"]["Arn"], aws["kms"])


def test_kms_key_signs_and_verifies_through_moto(aws: dict[str, Any], tmp_path: Path) -> None:
    key = kms_key(aws)
    registry = signed_registry(aws, key)
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    folder = registry.download("tiny", "1", tmp_path / "cache")
    assert json.loads((folder / "manifest.sig").read_text())["key_id"] == key.key_id
    other = kms_key(aws)  # a key this deployment does not trust
    with pytest.raises(ArtifactError, match="does not verify"):
        Registry(BUCKET, aws["s3"], signature=SignaturePolicy(other)).download(
            "tiny", "1", tmp_path / "other"
        )
    tamper(aws, b"evil-onnx")
    with pytest.raises(ArtifactError, match="does not verify"):
        registry.download("tiny", "1", tmp_path / "tampered")
    no_such_key = key.key_id.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    gone = KmsKey(no_such_key, aws["kms"])  # a KMS error is a refusal, not a traceback
    with pytest.raises(ArtifactError, match=r"kms:Verify with .* failed: NotFoundException"):
        SignaturePolicy(gone).check(b"{}", signature_document(b"{}", key), "tiny")


def test_verification_cost_per_version(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """What one version's check adds at cold start (printed; run with -s to see it). The KMS
    figure is moto on loopback, an indication only: real kms:Verify is a network round trip."""
    private, public = file_key
    manifest = b"x" * 2000  # a manifest's size, give or take
    figures = {}
    for label, signer, check in (
        ("file", FileKey(private), lambda: verifier(public)),
        ("kms (moto)", kms_key(aws), None),
    ):
        doc = signature_document(manifest, signer)
        runs = []
        for _ in range(20):
            started = time.perf_counter()
            policy = check() if check else SignaturePolicy(signer)  # key load included
            policy.check(manifest, doc, "m")
            runs.append(time.perf_counter() - started)
        figures[label] = sorted(runs)[len(runs) // 2] * 1000
    print("verification per version, median ms:", {k: round(v, 2) for k, v in figures.items()})
    assert all(v < 1000 for v in figures.values())


def test_local_stack_key_survives_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up --sign`: the key is a file made once, so what was signed before a restart (moto
    forgets everything) still verifies after it, from the registry's on-disk snapshot."""
    from onnxlift.local.stack import LocalStack, StackOptions

    monkeypatch.setenv("ONNXLIFT_STATE_DIR", str(tmp_path / "state"))
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    digests = []
    for run in range(2):  # two `up`s, each with a fresh moto server
        stack = LocalStack(
            StackOptions(root=tmp_path, aws_port=free_port(), sign=True), report=lambda _: None
        )
        stack._open_registry(stack._start_moto())
        try:
            registry = stack.registry
            assert registry is not None and stack.signing_key is not None
            if run == 0:
                registry.publish(make_artifact(tmp_path / "a"), name="tiny")
            folder = registry.download("tiny", "1", tmp_path / f"cache{run}")
            assert (folder / "manifest.sig").is_file()
            digests.append(stack.signing_key.read_bytes())
        finally:
            for child in stack.children:
                child.stop()
    assert digests[0] == digests[1]  # the same key, not a new one per run


def test_the_real_handler_serves_a_signed_version_and_503s_a_tampered_one(
    aws: dict[str, Any],
    file_key: tuple[Path, Path],
    minilm_build: Any,
    lambda_context: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real onnxruntime, the handler's own boto3 client against moto server: version 1 signed
    loads and answers; version 2, swapped with a matching sha256, answers 503."""
    import sys

    from onnxlift_serving.contract import sandbox_environment, serving_environment

    from onnxlift.local.lambda_runtime import load_handler
    from tests.conftest import HANDLER, call, texts_body

    private, public = file_key
    registry = signed_registry(aws, FileKey(private))
    registry.publish(minilm_build.folder, name="minilm")
    registry.publish(minilm_build.folder, name="minilm")
    model_key = "models/minilm/2/model.onnx"
    manifest_key = "models/minilm/2/manifest.json"
    payload = aws["s3"].get_object(Bucket=BUCKET, Key=model_key)["Body"].read() + b"\0"
    manifest = json.loads(aws["s3"].get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
    aws["s3"].put_object(Bucket=BUCKET, Key=model_key, Body=payload)
    manifest["sha256"] = hashlib.sha256(payload).hexdigest()
    aws["s3"].put_object(Bucket=BUCKET, Key=manifest_key, Body=json.dumps(manifest).encode())
    settings = serving_environment(
        name="minilm",
        version="1",
        source="registry",
        bucket=BUCKET,
        cache_dir=str(tmp_path / "models"),
        threads=1,
        signature_key=f"file:{public}",
    ) | sandbox_environment("minilm", 2048)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    sys.modules.pop("handler", None)
    load_handler(HANDLER)
    module = sys.modules["handler"]
    status, body, _ = call(module, lambda_context, texts_body(["signed"]))
    assert status == 200, body
    status, body, _ = call(
        module, lambda_context, texts_body(["x"]), path="/v2/models/minilm/versions/2/infer"
    )
    assert status == 503 and "loading it failed" in body["error"], body
    assert "does not verify" in module.service._failures["2"][0]  # refused for the signature
    assert not (tmp_path / "models" / "minilm" / "2").exists()


def test_up_sign_republishes_a_build_whose_version_is_unsigned(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """`up --sign` after unsigned runs: the matching version would be refused, so it is not
    reused (LocalStack._build_and_publish publishes a signed one)."""
    private, _ = file_key
    Registry(BUCKET, aws["s3"]).publish(make_artifact(tmp_path / "a"), name="tiny")
    signing = signed_registry(aws, FileKey(private))
    assert signing.is_servable("tiny", "1") is False
    assert Registry(BUCKET, aws["s3"]).is_servable("tiny", "1") is True  # nothing to verify
    signing.publish(make_artifact(tmp_path / "b"), name="tiny")
    assert signing.is_servable("tiny", "2") is True
    # a key file made anew: version 2 is signed, but not by today's key
    create_file_key(tmp_path / "new.pem", tmp_path / "new.pub.pem")
    assert signed_registry(aws, FileKey(tmp_path / "new.pem")).is_servable("tiny", "2") is False


def test_a_signer_that_cannot_sign_claims_no_version(
    aws: dict[str, Any], file_key: tuple[Path, Path], tmp_path: Path
) -> None:
    """Signed before the claim: a public-only key refuses, and version 1 stays free."""
    _, public = file_key
    registry = Registry(BUCKET, aws["s3"], signer=FileKey(public))
    with pytest.raises(ArtifactError, match="cannot sign"):
        registry.publish(make_artifact(tmp_path / "a"), name="tiny", version="1")
    assert registry.versions("tiny") == []
    listed = aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix="models/tiny/")
    assert listed.get("KeyCount", 0) == 0  # not even the model object that claims a version


def test_unusable_key_files_are_one_line(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    other_curve = tmp_path / "ed25519.pem"
    other_curve.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    for path in (encrypted, other_curve, empty, tmp_path / "missing.pem"):
        with pytest.raises(ArtifactError, match=f"signing key {path}|is not an ECDSA"):
            open_key(f"file:{path}")


def test_key_files_appear_whole(tmp_path: Path) -> None:
    from onnxlift_serving.signing import write_public_key

    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    create_file_key(private, public)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem", "key.pub.pem"]
    first = public.read_bytes()
    public.unlink()  # as a start killed between the two files would leave it
    write_public_key(private, public)
    assert public.read_bytes() == first and FileKey(public).key_id == FileKey(private).key_id
