"""The local stack's registry mirror (.onnxlift/registry/) is crash-safe: a write cut short
leaves a temporary file that restore neither uploads nor keeps, a version's manifest is
written after its files, and a mirror that cannot be written fails the publish loudly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onnxlift.errors import RegistryError
from onnxlift.local import snapshot
from tests.registry.test_registry import make_artifact


class Recording:
    """The real S3 client, with the keys it was asked to upload, in order."""

    def __init__(self, s3: Any) -> None:
        self.s3, self.uploaded = s3, []

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.uploaded.append(key)
        self.s3.upload_file(filename, bucket, key)


class CutShort:
    """The real S3 client, whose download of `key` breaks off after a few bytes: what a kill
    of the writer mid-file leaves, minus the cleanup a kill never runs."""

    def __init__(self, s3: Any, key: str) -> None:
        self.s3, self.key = s3, key

    def get_paginator(self, name: str) -> Any:
        return self.s3.get_paginator(name)

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        answer = self.s3.get_object(**kwargs)
        if kwargs["Key"] == self.key:
            answer["Body"].read = self._broken
        return answer

    @staticmethod
    def _broken(*_: Any) -> bytes:
        raise ConnectionError("stack killed mid-download")


def empty(s3: Any, bucket: str) -> None:
    """moto's memory gone, as after SIGKILL of the stack."""
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"], VersionId=item["VersionId"])


def test_leftovers_of_a_killed_write_are_not_restored(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    mirror = tmp_path / "mirror"
    assert snapshot.save(s3, registry.bucket, mirror) == 3
    version = mirror / "models" / "tiny" / "1"
    leftovers = [
        version / ".model.onnx.k3j2h1.partial",  # ours, mid-write
        version / "model.onnx.partial",  # an older run's
        version / "assets" / "tokenizer.json.partial.0A1b2C3d",  # s3transfer's, older runs
    ]
    for path in leftovers:
        path.write_bytes(b"half a fi")
    assert all(snapshot.is_temporary(p) for p in leftovers)
    empty(s3, registry.bucket)

    recording = Recording(s3)
    assert snapshot.restore(recording, registry.bucket, mirror) == 3
    assert not any(p.exists() for p in leftovers)
    assert recording.uploaded[-1] == "models/tiny/1/manifest.json"  # the files first
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=registry.bucket)["Contents"]}
    assert keys == {f"models/tiny/1/{f}" for f in ("manifest.json", "model.onnx")} | {
        "models/tiny/1/assets/tokenizer.json"
    }
    assert registry.download("tiny", "1", tmp_path / "cache").is_dir()  # sha256 checked


def test_a_write_cut_short_leaves_no_file_and_no_manifest(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    """The model's download breaks: no model.onnx, no temporary file, and the manifest (saved
    after every other file) is not there either, so restore shows an incomplete version, never
    one that looks complete and is not."""
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    mirror = tmp_path / "mirror"
    with pytest.raises(ConnectionError):
        snapshot.save(CutShort(s3, "models/tiny/1/model.onnx"), registry.bucket, mirror)
    version = mirror / "models" / "tiny" / "1"
    assert sorted(p.name for p in version.rglob("*")) == ["assets", "tokenizer.json"]

    assert snapshot.save(s3, registry.bucket, mirror) == 2  # the next save completes it
    assert json.loads((version / "manifest.json").read_text())["version"] == "1"
    assert not [p for p in mirror.rglob("*") if snapshot.is_temporary(p)]


def test_an_unwritable_mirror_fails_the_publish_and_the_promote(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    """Not a warning: the CLI must not say published (exit 0) for a version that lives only in
    moto's memory. A file where the mirror's folder should be stops root as well as anyone."""
    from onnxlift.registry import Registry

    blocked = tmp_path / "registry"
    blocked.write_text("not a folder")
    local = Registry(registry.bucket, s3, mirror=blocked / registry.bucket)
    with pytest.raises(RegistryError, match=r"tiny version 1 is in .* could not be kept on disk"):
        local.publish(make_artifact(tmp_path / "a"), name="tiny")
    assert registry.versions("tiny") == ["1"]  # taken in moto: lost unless saved on a clean stop
    with pytest.raises(RegistryError, match=r"tiny prod -> version 1 is in .* not be kept"):
        local.promote("tiny", "1", "prod")
