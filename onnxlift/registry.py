"""The S3 model registry: immutable versions, manifests, aliases.

Works against real S3 and moto server alike: the endpoint comes from the standard AWS
environment (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, profiles), never from code.
Every object is written with `IfNoneMatch="*"` (S3 conditional write), so a published
version can never be overwritten, and two publishers racing for one version get exactly
one winner. The manifest is written last: a version without one is incomplete, but its
number stays taken.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from onnxlift_serving import layout
from onnxlift_serving.aliases import read_alias
from onnxlift_serving.artifact import check_manifest, fetch_from_registry
from onnxlift_serving.contract import is_canonical_version, is_model_name
from onnxlift_serving.errors import ArtifactError
from onnxlift_serving.signing import SignaturePolicy, SigningKey, signature_document

from onnxlift.errors import RegistryError, VersionExistsError

AUTO_VERSION_ATTEMPTS = 5


def s3_client() -> Any:
    import boto3

    return boto3.client("s3")


def _sha256_b64(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    complete: bool
    manifest: dict[str, Any] | None


class Registry:
    def __init__(
        self,
        bucket: str,
        client: Any = None,
        *,
        mirror: Path | None = None,
        signer: SigningKey | None = None,
        signature: SignaturePolicy | None = None,
    ) -> None:
        """`mirror`: a folder that gets every object as soon as it is written (the local stack's
        `.onnxlift/registry/<bucket>/`: moto keeps the bucket in memory only, so a version the
        CLI called published must be on disk before it says so, whatever kills the stack).
        `signer`: publish signs every manifest with it (manifest.sig); `signature`: what
        download demands of a version's signature (onnxlift_serving.signing)."""
        self.bucket = bucket
        self.s3 = client or s3_client()
        self.mirror = mirror
        self.signer = signer
        self.signature = signature

    def _keep(self, what: str) -> None:
        """Write-through to the mirror, if any: new versions and changed aliases.

        A mirror that cannot be written fails the command (exit 2) rather than warning: the
        change is in moto's memory only, and a script that checks the exit status must not
        take it as durable. It is kept if the stack is later stopped cleanly (Ctrl-C)."""
        if self.mirror is None:
            return
        from onnxlift.local import snapshot

        try:
            snapshot.save(self.s3, self.bucket, self.mirror)
        except OSError as exc:
            raise RegistryError(
                f"{what} is in the running local stack's s3://{self.bucket} but could not be "
                f"kept on disk in {self.mirror} ({exc}): it is lost if the stack is killed; "
                "fix that folder, or stop the stack with Ctrl-C, which saves the registry"
            ) from None

    # -- bucket -----------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        """Create the bucket with versioning on (local stacks; CDK owns it on AWS)."""
        try:
            self.s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            region = self.s3.meta.region_name
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.s3.create_bucket(**kwargs)
        self.s3.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )

    # -- reading ----------------------------------------------------------------------
    def models(self) -> list[str]:
        return sorted(p.split("/")[1] for p in self._prefixes("models/"))

    def _prefixes(self, prefix: str) -> list[str]:
        found: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            found.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return found

    def versions(self, name: str) -> list[str]:
        """Every version number taken, complete or not, in numeric order."""
        names = [
            p.rstrip("/").rsplit("/", 1)[-1] for p in self._prefixes(layout.model_prefix(name))
        ]
        return sorted((v for v in names if is_canonical_version(v)), key=int)

    def manifest(self, name: str, version: str) -> dict[str, Any]:
        if not is_model_name(name) or not is_canonical_version(version):  # never a key of them
            raise RegistryError(f"{name[:64]} version {version[:16]} is not a published version")
        key = layout.object_key(name, version, layout.MANIFEST_FILE)
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                raise RegistryError(
                    f"{name} version {version} is not in s3://{self.bucket}"
                ) from None
            raise
        return json.loads(body)

    def describe(self, name: str) -> list[VersionInfo]:
        infos = []
        for version in self.versions(name):
            try:
                infos.append(VersionInfo(name, version, True, self.manifest(name, version)))
            except RegistryError:
                infos.append(VersionInfo(name, version, False, None))
        return infos

    def is_servable(self, name: str, version: str) -> bool:
        """False for a version this registry's readers would refuse: when it signs, one whose
        manifest.sig is missing or does not verify with today's key (a key file made anew
        leaves the older versions unverifiable; `up` then publishes the build again)."""
        if self.signer is None:
            return True
        try:
            manifest, signature = (
                self.s3.get_object(Bucket=self.bucket, Key=layout.object_key(name, version, file))[
                    "Body"
                ].read()
                for file in (layout.MANIFEST_FILE, layout.SIGNATURE_FILE)
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound", "AccessDenied"):
                return False
            raise
        policy = self.signature or SignaturePolicy(self.signer)
        try:
            policy.check(manifest, signature, f"{name} version {version}")
        except ArtifactError:
            return False
        return True

    def find_by_fingerprint(self, name: str, fingerprint: str) -> str | None:
        for info in reversed(self.describe(name)):
            if info.manifest and info.manifest.get("build_fingerprint") == fingerprint:
                return info.version
        return None

    def asset(self, name: str, version: str, relative: str) -> bytes | None:
        """One asset of a published version, without the model: its manifest signature-checked
        (with a policy) and its sha256 checked against it; None when the manifest names no
        such asset."""
        if not is_model_name(name) or not is_canonical_version(version):
            raise RegistryError(f"{name[:64]} version {version[:16]} is not a published version")
        where = f"{name} version {version}"
        raw = self._get(layout.object_key(name, version, layout.MANIFEST_FILE))
        if raw is None:
            raise RegistryError(f"{where} is not in s3://{self.bucket}")
        if self.signature is not None:
            signed = self._get(layout.object_key(name, version, layout.SIGNATURE_FILE))
            self.signature.check(raw, signed, where)
        try:
            manifest = json.loads(raw)
        except ValueError:
            raise ArtifactError(f"the manifest of {where} is not JSON") from None
        check_manifest(manifest, name=name, version=version)
        digest = manifest.get("assets", {}).get(relative)
        if digest is None:
            return None
        body = self._get(layout.object_key(name, version, f"{layout.ASSETS_DIR}/{relative}"))
        if body is None or hashlib.sha256(body).hexdigest() != digest:
            raise ArtifactError(
                f"{where}: asset {relative} is missing or does not match its sha256"
            )
        return body

    def _get(self, key: str) -> bytes | None:
        """An object's bytes; None when it is not there (S3 says 403 to who may not list)."""
        try:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "AccessDenied"):
                return None
            raise

    def download(self, name: str, version: str, cache_dir: Path) -> Path:
        return fetch_from_registry(
            bucket=self.bucket,
            name=name,
            version=version,
            cache_dir=cache_dir,
            s3_client=self.s3,
            signature=self.signature,
        )

    # -- writing ----------------------------------------------------------------------
    def _put_new(self, key: str, path: Path | None = None, body: bytes | None = None) -> None:
        kwargs: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": key,
            "IfNoneMatch": "*",
            "ChecksumAlgorithm": "SHA256",
        }
        try:
            if path is not None:
                with path.open("rb") as handle:
                    self.s3.put_object(Body=handle, ChecksumSHA256=_sha256_b64(path), **kwargs)
            else:
                self.s3.put_object(Body=body, **kwargs)
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise VersionExistsError(f"s3://{self.bucket}/{key} exists") from None
            raise

    def publish(self, folder: Path, *, name: str, version: str | None = None) -> str:
        """Upload a built artifact as a new immutable version and return its number."""
        manifest = json.loads((folder / layout.MANIFEST_FILE).read_text())
        if manifest.get("name") != name:
            raise RegistryError(f"{folder} holds model '{manifest.get('name')}', not '{name}'")
        if not is_model_name(name):
            raise RegistryError(f"'{name[:64]}' is not a model name (letters, digits, '-', '_')")
        if version is not None:
            if not is_canonical_version(version):  # '01' would be a second version 1, '²' none
                raise RegistryError(
                    f"version must be a whole number without leading zeros, got '{version[:16]}'"
                )
            self._publish_as(folder, manifest, name, version)
            return version
        for _ in range(AUTO_VERSION_ATTEMPTS):
            taken = self.versions(name)
            candidate = str(int(taken[-1]) + 1 if taken else 1)
            try:
                self._publish_as(folder, manifest, name, candidate)
                return candidate
            except VersionExistsError:
                continue  # another publisher took this number first: take the next one
        raise RegistryError(
            f"could not claim a new version of {name} after {AUTO_VERSION_ATTEMPTS} tries"
        )

    def _publish_as(self, folder: Path, manifest: dict[str, Any], name: str, version: str) -> None:
        final = dict(manifest, version=version)
        body = json.dumps(final, indent=2).encode()  # the exact bytes the signature covers
        # Signed before the version is claimed: a signer that refuses (no kms:Sign, a key
        # file without its private half) must not leave a claimed version without a manifest.
        signed = None if self.signer is None else signature_document(body, self.signer)
        try:
            # The model object is the claim: whoever writes it first owns the version.
            self._put_new(
                layout.object_key(name, version, layout.MODEL_FILE), folder / layout.MODEL_FILE
            )
        except VersionExistsError:
            raise VersionExistsError(
                f"{name} version {version} is already published in s3://{self.bucket}; "
                "published versions are immutable: publish a new version instead"
            ) from None
        for relative in manifest.get("assets", {}):
            path = folder / layout.ASSETS_DIR / relative
            self._put_new(layout.object_key(name, version, f"{layout.ASSETS_DIR}/{relative}"), path)
        if final.get("target") == "sagemaker":  # its ModelDataUrl, packed from this version
            self._put_archive(folder, (body, signed), name, version)
        if signed is not None:  # before the manifest: no reader ever sees it unsigned
            self._put_new(layout.object_key(name, version, layout.SIGNATURE_FILE), body=signed)
        self._put_new(layout.object_key(name, version, layout.MANIFEST_FILE), body=body)
        self._keep(f"{name} version {version}")

    def _put_archive(
        self, folder: Path, manifest: tuple[bytes, bytes | None], name: str, version: str
    ) -> None:
        import shutil
        import tempfile

        from onnxlift.sagemaker_artifact import archive_key, pack_model

        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / "version"
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("work", "build.json"))
            body, signed = manifest
            (staged / layout.MANIFEST_FILE).write_bytes(body)
            if signed is not None:
                (staged / layout.SIGNATURE_FILE).write_bytes(signed)
            pack_model(staged, Path(tmp) / "model.tar.gz")
            self._put_new(archive_key(name, version), Path(tmp) / "model.tar.gz")

    # -- aliases ----------------------------------------------------------------------
    def alias(self, name: str, alias: str) -> dict[str, Any] | None:
        return read_alias(self.s3, self.bucket, name, alias)[0]

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version for every alias of `name`."""
        found: dict[str, str] = {}
        paginator = self.s3.get_paginator("list_objects_v2")
        prefix = f"{layout.model_prefix(name)}aliases/"
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                alias = item["Key"][len(prefix) :].removesuffix(".json")
                doc = self.alias(name, alias)
                if doc:
                    found[alias] = str(doc["version"])
        return found

    def promote(self, name: str, version: str, alias: str) -> dict[str, Any]:
        """Point `alias` at a complete, published `version`."""
        self.manifest(name, version)  # raises unless the version exists and is complete
        return self._update_alias(name, alias, lambda stack: [*stack, version], "promote")

    def rollback(self, name: str, alias: str) -> dict[str, Any]:
        """Point `alias` back at the version it named before the current one."""
        return self._update_alias(name, alias, self._previous, "rollback")

    @staticmethod
    def _previous(stack: list[str]) -> list[str]:
        if len(stack) < 2:
            raise RegistryError("nothing to roll back to: the alias has no earlier version")
        return stack[:-1]

    def _update_alias(self, name: str, alias: str, change: Any, action: str) -> dict[str, Any]:
        """Read-modify-write with S3 conditional writes, so concurrent changes never get lost."""
        if not is_model_name(alias) or not is_model_name(name):  # ASCII: '²' is alnum too
            raise RegistryError(f"alias must be letters, digits, '-' or '_', got '{alias[:64]}'")
        for _ in range(AUTO_VERSION_ATTEMPTS):
            current, etag = read_alias(self.s3, self.bucket, name, alias)
            if current is None and action == "rollback":
                raise RegistryError(f"{name} has no alias '{alias}'")
            stack = [str(v) for v in (current or {}).get("stack", [])]
            new_stack = change(stack)
            version = new_stack[-1]
            entry = {
                "action": action,
                "version": version,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            }
            doc = {
                "name": name,
                "alias": alias,
                "version": version,
                "stack": new_stack,
                "log": [*(current or {}).get("log", []), entry],
            }
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self.s3.put_object(
                    Bucket=self.bucket,
                    Key=layout.alias_key(name, alias),
                    Body=json.dumps(doc, indent=2).encode(),
                    ContentType="application/json",
                    **condition,
                )
                self._keep(f"{name} {alias} -> version {version}")
                return doc
            except ClientError as exc:
                if _error_code(exc) not in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise
        raise RegistryError(f"alias {name}/{alias} kept changing under us; try again")
