"""The S3 registry against moto: layout, checksums, immutability, racing publishers."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving.artifact import load_artifact, sha256_file

from onnxlift.errors import RegistryError, VersionExistsError


def make_artifact(folder: Path, *, name: str = "tiny", payload: bytes = b"onnx-bytes") -> Path:
    """A small artifact laid out as the build writes one (the registry never parses ONNX)."""
    (folder / "assets").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(payload)
    (folder / "assets" / "tokenizer.json").write_text('{"vocab": {}}')
    manifest = {
        "name": name,
        "version": None,
        "task": "text-embedding",
        "sha256": sha256_file(folder / "model.onnx"),
        "bytes": len(payload),
        "assets": {"tokenizer.json": sha256_file(folder / "assets" / "tokenizer.json")},
        "build_fingerprint": "f" * 16,
        "inputs": [],
        "outputs": [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_publish_writes_the_design_layout_with_sha256_checksums(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    folder = make_artifact(tmp_path / "a")
    assert registry.publish(folder, name="tiny") == "1"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=registry.bucket)["Contents"]}
    assert keys == {
        "models/tiny/1/model.onnx",
        "models/tiny/1/manifest.json",
        "models/tiny/1/assets/tokenizer.json",
    }
    head = s3.head_object(
        Bucket=registry.bucket, Key="models/tiny/1/model.onnx", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"]
    manifest = registry.manifest("tiny", "1")
    assert manifest["version"] == "1"
    assert s3.get_bucket_versioning(Bucket=registry.bucket)["Status"] == "Enabled"


def test_versions_count_up_and_list(registry: Any, tmp_path: Path) -> None:
    folder = make_artifact(tmp_path / "a")
    assert [registry.publish(folder, name="tiny") for _ in range(3)] == ["1", "2", "3"]
    assert registry.versions("tiny") == ["1", "2", "3"]
    assert registry.models() == ["tiny"]
    assert registry.find_by_fingerprint("tiny", "f" * 16) == "3"
    assert registry.find_by_fingerprint("tiny", "0" * 16) is None


def test_a_published_version_is_never_overwritten(registry: Any, s3: Any, tmp_path: Path) -> None:
    first = make_artifact(tmp_path / "a", payload=b"first")
    second = make_artifact(tmp_path / "b", payload=b"second")
    registry.publish(first, name="tiny", version="1")
    with pytest.raises(VersionExistsError, match="immutable"):
        registry.publish(second, name="tiny", version="1")
    body = s3.get_object(Bucket=registry.bucket, Key="models/tiny/1/model.onnx")["Body"].read()
    assert body == b"first"
    assert registry.manifest("tiny", "1")["sha256"] == sha256_file(first / "model.onnx")
    versions = s3.list_object_versions(Bucket=registry.bucket, Prefix="models/tiny/1/model.onnx")
    assert len(versions["Versions"]) == 1  # not even a hidden second S3 object version


def test_racing_publishers_of_one_version_get_exactly_one_winner(
    registry: Any, tmp_path: Path
) -> None:
    folders = [make_artifact(tmp_path / str(i), payload=f"model-{i}".encode()) for i in range(6)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(folders))

    def publish(folder: Path) -> None:
        barrier.wait()
        try:
            registry.publish(folder, name="tiny", version="7")
            outcomes.append("won")
        except VersionExistsError:
            outcomes.append("refused")

    threads = [threading.Thread(target=publish, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["won"]
    manifest = registry.manifest("tiny", "7")
    winner = [f for f in folders if sha256_file(f / "model.onnx") == manifest["sha256"]]
    assert len(winner) == 1  # the manifest belongs to the model that won, nothing mixed


def test_auto_versions_from_racing_publishers_are_distinct(registry: Any, tmp_path: Path) -> None:
    folders = [make_artifact(tmp_path / str(i)) for i in range(4)]
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda f=f: got.append(registry.publish(f, name="tiny")))
        for f in folders
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=int) == ["1", "2", "3", "4"]


def test_bad_publishes_are_refused(registry: Any, tmp_path: Path) -> None:
    folder = make_artifact(tmp_path / "a")
    with pytest.raises(RegistryError, match="holds model 'tiny'"):
        registry.publish(folder, name="other")
    with pytest.raises(RegistryError, match="whole number"):
        registry.publish(folder, name="tiny", version="latest")
    with pytest.raises(RegistryError, match="not in s3://"):
        registry.manifest("tiny", "9")


def test_download_verifies_and_reuses_the_cache(registry: Any, s3: Any, tmp_path: Path) -> None:
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    folder = registry.download("tiny", "1", tmp_path / "cache")
    assert load_artifact(folder).version == "1"
    s3.delete_object(Bucket=registry.bucket, Key="models/tiny/1/model.onnx")
    assert registry.download("tiny", "1", tmp_path / "cache") == folder  # served from cache


def test_incomplete_version_keeps_its_number(registry: Any, s3: Any, tmp_path: Path) -> None:
    s3.put_object(Bucket=registry.bucket, Key="models/tiny/1/model.onnx", Body=b"half")
    assert registry.publish(make_artifact(tmp_path / "a"), name="tiny") == "2"
    described = {i.version: i.complete for i in registry.describe("tiny")}
    assert described == {"1": False, "2": True}


def test_promote_and_rollback_move_the_alias(registry: Any, tmp_path: Path) -> None:
    for i in range(3):
        registry.publish(make_artifact(tmp_path / str(i), payload=f"m{i}".encode()), name="tiny")
    assert registry.alias("tiny", "prod") is None
    registry.promote("tiny", "1", "prod")
    registry.promote("tiny", "3", "prod")
    assert registry.alias("tiny", "prod")["version"] == "3"
    assert registry.aliases("tiny") == {"prod": "3"}
    doc = registry.rollback("tiny", "prod")
    assert doc["version"] == "1" and doc["stack"] == ["1"]
    assert [e["action"] for e in doc["log"]] == ["promote", "promote", "rollback"]
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback("tiny", "prod")
    with pytest.raises(RegistryError, match="not in s3://"):
        registry.promote("tiny", "9", "prod")
    with pytest.raises(RegistryError, match="no alias 'staging'"):
        registry.rollback("tiny", "staging")


def test_racing_promotions_lose_nothing(registry: Any, tmp_path: Path) -> None:
    for i in range(4):
        registry.publish(make_artifact(tmp_path / str(i)), name="tiny")
    # S3 checks a conditional write and stores it atomically; moto's in-process backend checks
    # then stores, so under load two IfNoneMatch writers could both win (seen once in a full
    # run). Serialise the store's own step to model S3; the registry's retries stay unlocked.
    store, lock = registry.s3.put_object, threading.Lock()

    def atomic_put(**kwargs: Any) -> Any:
        with lock:
            return store(**kwargs)

    registry.s3.put_object = atomic_put
    threads = [
        threading.Thread(target=registry.promote, args=("tiny", str(v), "prod"))
        for v in range(1, 5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = registry.alias("tiny", "prod")
    assert sorted(doc["stack"]) == ["1", "2", "3", "4"]  # every promotion recorded once
    assert len(doc["log"]) == 4
