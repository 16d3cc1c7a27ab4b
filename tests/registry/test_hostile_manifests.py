"""Hostile registry contents and names: every one refused before a file is written, and a
refused pull leaves nothing behind (issue 11, deliverable 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from onnxlift_serving.artifact import fetch_from_registry
from onnxlift_serving.errors import ArtifactError, VersionNotPublished

from onnxlift.cli import cli
from onnxlift.errors import RegistryError
from tests.registry.test_registry import make_artifact

KEY = "models/tiny/1/manifest.json"


def published_manifest(registry: Any, s3: Any, tmp_path: Path) -> dict[str, Any]:
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    return json.loads(s3.get_object(Bucket=registry.bucket, Key=KEY)["Body"].read())


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def rewrite(registry: Any, s3: Any, manifest: dict[str, Any]) -> None:
    """What someone with write access to the bucket could do to a published manifest."""
    s3.put_object(Bucket=registry.bucket, Key=KEY, Body=json.dumps(manifest).encode())


HOSTILE_MANIFESTS = {
    "asset key climbing out": lambda m: m["assets"].update({"../../../../tmp/marker": "0" * 64}),
    "absolute asset key": lambda m: m["assets"].update({"/tmp/marker": "0" * 64}),
    "backslash asset key": lambda m: m["assets"].update({"..\\..\\marker": "0" * 64}),
    "hidden asset": lambda m: m["assets"].update({".bashrc": "0" * 64}),
    "asset named as a killed write": lambda m: m["assets"].update({"w.partial": "0" * 64}),
    "asset digest not a sha256": lambda m: m["assets"].update({"tokenizer.json": "x"}),
    "assets not an object": lambda m: m.update(assets=["tokenizer.json"]),
    "another model's name": lambda m: m.update(name="other"),
    "a name with a path": lambda m: m.update(name="../tiny"),
    "another version": lambda m: m.update(version="2"),
    "model sha256 missing": lambda m: m.pop("sha256"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_a_hostile_manifest_is_refused_before_anything_is_written(
    registry: Any, s3: Any, tmp_path: Path, case: str
) -> None:
    manifest = published_manifest(registry, s3, tmp_path)
    HOSTILE_MANIFESTS[case](manifest)
    rewrite(registry, s3, manifest)
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError):
        registry.download("tiny", "1", cache)
    assert everything_under(cache) == [] or everything_under(cache) == ["tiny"]
    assert not Path("/tmp/marker").exists()


def test_a_tampered_model_is_refused_and_nothing_takes_the_versions_place(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    published_manifest(registry, s3, tmp_path)
    s3.put_object(Bucket=registry.bucket, Key="models/tiny/1/model.onnx", Body=b"evil")
    cache = tmp_path / "cache"
    with pytest.raises(ArtifactError, match="does not match"):
        registry.download("tiny", "1", cache)
    assert everything_under(cache) == ["tiny"]  # no version folder, no partial download


@pytest.mark.parametrize(
    ("name", "version"), [("../x", "1"), ("tiny", "01"), ("tiny", "²"), ("tiny", "../1")]
)
def test_names_and_versions_are_checked_before_any_path_or_key(
    s3: Any, tmp_path: Path, name: str, version: str
) -> None:
    with pytest.raises(ArtifactError, match="no such model version"):
        fetch_from_registry(
            bucket="any", name=name, version=version, cache_dir=tmp_path / "c", s3_client=s3
        )
    assert not (tmp_path / "c").exists()


def test_a_version_never_published_is_said_so(registry: Any, tmp_path: Path) -> None:
    """One exception for every caller (the serving 404, pull), not botocore's NoSuchKey."""
    registry.publish(make_artifact(tmp_path / "a"), name="tiny")
    with pytest.raises(VersionNotPublished, match="model version tiny 7 is not published"):
        fetch_from_registry(
            bucket=registry.bucket, name="tiny", version="7", cache_dir=tmp_path / "c",
            s3_client=registry.s3,
        )  # fmt: skip
    assert not (tmp_path / "c" / "tiny" / "7").exists()


@pytest.mark.parametrize("version", ["01", "²", "0", "1.0", "-1", "1 "])
def test_publish_takes_only_canonical_versions(registry: Any, tmp_path: Path, version: str) -> None:
    with pytest.raises(RegistryError, match="whole number without leading zeros"):
        registry.publish(make_artifact(tmp_path / "a"), name="tiny", version=version)
    assert registry.versions("tiny") == []


def test_registry_refuses_names_that_are_not_names(registry: Any, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not a published version"):
        registry.manifest("../tiny", "1")
    for alias in ("../prod", "prod²"):
        with pytest.raises(RegistryError, match="alias must be"):
            registry.rollback("tiny", alias)


def test_pull_of_a_tampered_version_is_one_line_and_exit_2(
    registry: Any, s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONNXLIFT_ROOT", str(tmp_path))
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "models").mkdir()
    published_manifest(registry, s3, tmp_path)
    s3.put_object(Bucket=registry.bucket, Key="models/tiny/1/model.onnx", Body=b"evil")
    result = CliRunner().invoke(
        cli, ["pull", "tiny", "1"], env={"ONNXLIFT_BUCKET": registry.bucket}
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "does not match" in result.output
    assert not (tmp_path / ".onnxlift" / "artifacts" / "tiny" / "1").exists()


def test_a_version_is_on_disk_as_soon_as_it_is_published(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    """The local stack's registry writes through to its mirror: when publish returns, the
    version survives whatever then kills moto (restore puts it back in a fresh bucket)."""
    from onnxlift.local import snapshot
    from onnxlift.registry import Registry

    mirror = tmp_path / "registry" / registry.bucket
    local = Registry(registry.bucket, s3, mirror=mirror)
    version = local.publish(make_artifact(tmp_path / "a"), name="tiny")
    local.promote("tiny", version, "prod")
    assert (mirror / "models/tiny/1/manifest.json").is_file()
    assert json.loads((mirror / "models/tiny/aliases/prod.json").read_text())["version"] == "1"

    for page in s3.get_paginator("list_object_versions").paginate(Bucket=registry.bucket):
        for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=registry.bucket, Key=item["Key"], VersionId=item["VersionId"])
    assert registry.versions("tiny") == []  # moto's memory is gone, as after SIGKILL
    assert snapshot.restore(s3, registry.bucket, mirror) >= 3
    assert registry.versions("tiny") == ["1"] and registry.alias("tiny", "prod")["version"] == "1"
    assert registry.download("tiny", "1", tmp_path / "cache").is_dir()  # and it verifies


def test_the_mirror_never_follows_a_key_out_of_its_folder(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    from onnxlift.local import snapshot

    s3.put_object(Bucket=registry.bucket, Key="models/../../escaped", Body=b"x")
    snapshot.save(s3, registry.bucket, tmp_path / "mirror" / "bucket")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "mirror" / "escaped").exists()


def test_a_manifest_without_assets_downloads_the_model_alone(
    registry: Any, s3: Any, tmp_path: Path
) -> None:
    manifest = published_manifest(registry, s3, tmp_path)
    manifest.pop("assets")
    rewrite(registry, s3, manifest)
    folder = registry.download("tiny", "1", tmp_path / "cache")
    assert (folder / "model.onnx").is_file() and not (folder / "assets").exists()
