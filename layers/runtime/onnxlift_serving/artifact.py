"""A model artifact on disk: manifest, ONNX file and assets, verified before use."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxlift_serving import layout
from onnxlift_serving.contract import is_asset_key, is_canonical_version, is_model_name
from onnxlift_serving.errors import ArtifactError, VersionNotPublished
from onnxlift_serving.protocol import TensorSpec
from onnxlift_serving.signing import read_signature

if TYPE_CHECKING:
    from onnxlift_serving.signing import SignaturePolicy

_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(manifest: Any, *, name: str | None = None, version: str | None = None) -> None:
    """The manifest's identity and every file it names, checked before any of them becomes a
    path or a download: a model name, a canonical version (when it has one; a build has
    none yet), asset keys that stay under assets/, and a sha256 for each file."""
    if not isinstance(manifest, dict):
        raise ArtifactError("the manifest is not a JSON object")
    if not is_model_name(manifest.get("name")) or (name is not None and manifest["name"] != name):
        raise ArtifactError(f"the manifest names model {str(manifest.get('name'))[:64]!r}")
    found = str(manifest.get("version") or "")
    if (found and not is_canonical_version(found)) or (version is not None and found != version):
        raise ArtifactError(f"the manifest names version {found[:16]!r}")
    assets = manifest.get("assets", {})
    if not isinstance(assets, dict):
        raise ArtifactError("the manifest's assets are not an object of file -> sha256")
    for key, digest in [(layout.MODEL_FILE, manifest.get("sha256")), *assets.items()]:
        if not is_asset_key(key):
            raise ArtifactError(f"the manifest names an asset {str(key)[:64]!r} outside assets/")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"the manifest's sha256 of {key} is not a sha256")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    folder: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        """The published version; "" for a build that has none yet."""
        return str(self.manifest.get("version") or "")

    @property
    def model_path(self) -> Path:
        return self.folder / layout.MODEL_FILE

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        return {t["name"]: TensorSpec.from_json(t) for t in self.manifest["inputs"]}

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return {t["name"]: TensorSpec.from_json(t) for t in self.manifest["outputs"]}

    def asset(self, relative: str) -> Path:
        path = (self.folder / layout.ASSETS_DIR / relative).resolve()
        if self.folder.resolve() not in path.parents:
            raise ArtifactError(f"asset path '{relative}' leaves the artifact folder")
        return path


def _read_signature(folder: Path) -> bytes | None:
    try:
        return (folder / layout.SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        return None


def load_artifact(folder: Path, *, signature: SignaturePolicy | None = None) -> Artifact:
    """Read the manifest and check every file's sha256 against it before anything loads them;
    with a `signature` policy, the manifest's signature (manifest.sig beside it) first."""
    manifest_path = folder / layout.MANIFEST_FILE
    try:
        raw = manifest_path.read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise ArtifactError(f"no manifest at {manifest_path}") from None
    except ValueError as exc:
        raise ArtifactError(f"manifest {manifest_path} is not JSON: {exc}") from None
    if signature is not None:
        signature.check(raw, _read_signature(folder), str(folder))

    check_manifest(manifest)
    artifact = Artifact(folder=folder, manifest=manifest)
    model_path = artifact.model_path
    if not model_path.is_file():
        raise ArtifactError(f"no model file at {model_path}")
    actual = sha256_file(model_path)
    if actual != manifest.get("sha256"):
        raise ArtifactError(
            f"{model_path}: sha256 {actual} does not match the manifest's {manifest.get('sha256')}"
        )
    for relative, expected in manifest.get("assets", {}).items():
        asset_path = artifact.asset(relative)
        if not asset_path.is_file() or sha256_file(asset_path) != expected:
            raise ArtifactError(f"asset {relative} is missing or does not match its sha256")
    return artifact


def _get_manifest(s3_client: Any, bucket: str, key: str, what: str) -> bytes:
    """A version's manifest bytes; VersionNotPublished where S3 has no such key, for every
    caller alike (the serving 404, `onnxlift pull`), not botocore's NoSuchKey."""
    from botocore.exceptions import ClientError

    try:
        return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise VersionNotPublished(f"model version {what} is not published") from None
        raise


def fetch_from_registry(
    *,
    bucket: str,
    name: str,
    version: str,
    cache_dir: Path,
    s3_client: Any = None,
    signature: SignaturePolicy | None = None,
) -> Path:
    """Download one published version into `cache_dir` (Lambda: under /tmp) and return the folder.

    The name, version and every key the manifest names are checked before anything is written;
    the files go to a fresh folder beside the target and are verified there (sha256 of every
    file) before it is renamed into place, so a refused download leaves nothing behind. A
    folder that already holds a verified copy is reused: a warm sandbox never downloads twice.
    With a `signature` policy the manifest bytes are verified as they came from S3, before any
    other file is fetched, and kept verbatim with their manifest.sig (a baked-in copy is
    checked again at load); a reused copy is verified again, once.
    """
    if not is_model_name(name) or not is_canonical_version(version):
        raise ArtifactError(f"no such model version: {name[:64]!r} {version[:16]!r}")
    target = cache_dir / name / version
    if (target / layout.MANIFEST_FILE).is_file():
        try:
            load_artifact(target, signature=signature)
            return target
        except ArtifactError:
            pass  # a partial or corrupt copy: download again
    if s3_client is None:
        import boto3  # lazily: a baked-in model never needs it

        s3_client = boto3.client("s3")
    prefix = layout.version_prefix(name, version)
    raw = _get_manifest(s3_client, bucket, prefix + layout.MANIFEST_FILE, f"{name} {version}")
    signed = None
    if signature is not None:
        signed = read_signature(s3_client, bucket, prefix + layout.SIGNATURE_FILE)
        signature.check(raw, signed, f"{name} version {version}")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ArtifactError(f"the manifest of {name} version {version} is not JSON") from None
    check_manifest(manifest, name=name, version=version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.partial-", dir=target.parent))
    try:
        assets = manifest.get("assets", {})
        files = [layout.MODEL_FILE, *(f"{layout.ASSETS_DIR}/{a}" for a in assets)]
        for relative in files:
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            s3_client.download_file(bucket, prefix + relative, str(destination))
        (staging / layout.MANIFEST_FILE).write_bytes(raw)  # verbatim: what the signature covers
        if signed is not None:
            (staging / layout.SIGNATURE_FILE).write_bytes(signed)
        load_artifact(staging)  # every sha256, before it takes the target's place
        shutil.rmtree(target, ignore_errors=True)  # a corrupt earlier copy, if any
        with contextlib.suppress(OSError):  # a concurrent download won: its copy is as good
            staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
