"""Signed manifests: who may publish a model, beyond what a sha256 proves.

The manifest names every file of a version with its sha256, so a signature over the exact
manifest bytes (as stored in the registry) covers the whole version. The signature lies
beside it, in `manifest.sig`: a small JSON document with the key that made it, the
algorithm and the base64 DER ECDSA signature of sha256(manifest bytes).

Two kinds of key, one interface (ECDSA P-256 over a SHA-256 digest, both of them):

- `kms:<key arn>`: an AWS KMS asymmetric key (ECC_NIST_P256, ECDSA_SHA_256,
  MessageType=DIGEST). The private key never leaves KMS; the serving function verifies with
  one kms:Verify call per loaded version, through boto3, so the image needs no new package.
- `file:<path>`: a PEM file (the local stack's key under its state folder). A private key
  signs and verifies; a public key verifies. Needs `cryptography`, which the dev venv has
  and the serving image does not: the deployed stack uses KMS.

A verifier never trusts the key id written in `manifest.sig`: it checks against the key it was
configured with, and the id is only there to make a refusal readable.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from onnxlift_serving.errors import ArtifactError

__all__ = [
    "ALGORITHM",
    "FileKey",
    "KmsKey",
    "SignaturePolicy",
    "SigningKey",
    "create_file_key",
    "open_key",
    "read_signature",
    "signature_document",
]

ALGORITHM = "ECDSA_SHA_256"
SIGNATURE_FORMAT = 1
MAX_SIGNATURE_BYTES = 4096  # a manifest.sig is ~250 bytes; anything larger is refused unread


class SigningKey(Protocol):
    """A key that verifies (and, where it holds the private half, signs) a SHA-256 digest."""

    key_id: str

    def sign_digest(self, digest: bytes) -> bytes: ...

    def verify_digest(self, digest: bytes, signature: bytes) -> bool: ...


@dataclass
class KmsKey:
    """An AWS KMS asymmetric signing key (ECC_NIST_P256)."""

    key_id: str  # the key's ARN (or id, or alias ARN: whatever KMS accepts as KeyId)
    client: Any = None

    def _kms(self) -> Any:
        if self.client is None:
            import boto3  # lazily: only a deployment that signs ever needs a KMS client

            self.client = boto3.client("kms")
        return self.client

    def sign_digest(self, digest: bytes) -> bytes:
        answer = self._kms().sign(
            KeyId=self.key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm=ALGORITHM
        )
        return bytes(answer["Signature"])

    def verify_digest(self, digest: bytes, signature: bytes) -> bool:
        from botocore.exceptions import ClientError

        kms = self._kms()
        try:
            answer = kms.verify(
                KeyId=self.key_id,
                Message=digest,
                MessageType="DIGEST",
                Signature=signature,
                SigningAlgorithm=ALGORITHM,
            )
        except kms.exceptions.KMSInvalidSignatureException:
            return False
        except ClientError as exc:  # no access, no such key, a malformed signature: refused
            error = exc.response.get("Error", {})
            raise ArtifactError(
                f"kms:Verify with {self.key_id} failed: {error.get('Code')}: "
                f"{str(error.get('Message'))[:200]}"
            ) from None
        return bool(answer.get("SignatureValid"))


@dataclass
class FileKey:
    """An ECDSA P-256 key in a PEM file: private (signs and verifies) or public (verifies)."""

    path: Path
    key_id: str = field(init=False, default="")  # of the public key: file:sha256:<16 hex>

    def __post_init__(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        data = self.path.read_bytes()
        self._private: Any = None
        public: Any
        if b"PRIVATE KEY" in data:
            self._private = serialization.load_pem_private_key(data, password=None)
            if not isinstance(self._private, ec.EllipticCurvePrivateKey):
                raise ArtifactError(f"{self.path} is not an ECDSA P-256 key")
            public = self._private.public_key()
        else:
            public = serialization.load_pem_public_key(data)
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise ArtifactError(f"{self.path} is not an ECDSA P-256 key")
        self._public = public
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.key_id = "file:sha256:" + hashlib.sha256(der).hexdigest()[:16]

    @staticmethod
    def _algorithm() -> Any:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        return ec.ECDSA(utils.Prehashed(hashes.SHA256()))

    def sign_digest(self, digest: bytes) -> bytes:
        if self._private is None:
            raise ArtifactError(f"{self.path} holds a public key: it cannot sign")
        return bytes(self._private.sign(digest, self._algorithm()))

    def verify_digest(self, digest: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(signature, digest, self._algorithm())
        except InvalidSignature:
            return False
        return True


def create_file_key(private: Path, public: Path) -> None:
    """A new P-256 key pair: the private PEM readable by its owner only, the public beside.
    Each file appears whole or not at all (a temporary name, then a rename), so a kill midway
    never leaves an empty key that every later start would trip on."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_whole(private, pem, mode=0o600)
    write_public_key(private, public)


def write_public_key(private: Path, public: Path) -> None:
    """The public half of the private PEM `private`, written whole to `public`."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(private.read_bytes(), password=None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_whole(public, pem, mode=0o644)


def _write_whole(path: Path, data: bytes, *, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load_file_key(path: Path) -> FileKey:
    """A PEM key file, or one line saying why it cannot be one (missing, not PEM, encrypted,
    not an elliptic-curve key)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        return FileKey(path)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ArtifactError(f"signing key {path}: {type(exc).__name__}: {exc}") from None


def open_key(spec: str, *, kms_client: Any = None) -> SigningKey:
    """`kms:<arn>` or `file:<path>` (see the module doc)."""
    kind, _, where = spec.partition(":")
    if kind == "kms" and where:
        return KmsKey(where, kms_client)
    if kind == "file" and where:
        return load_file_key(Path(where))
    raise ArtifactError(f"signing key {spec[:80]!r} is neither kms:<key arn> nor file:<path>")


def signature_document(manifest: bytes, key: SigningKey) -> bytes:
    """The `manifest.sig` of these exact manifest bytes."""
    digest = hashlib.sha256(manifest).digest()
    doc = {
        "format": SIGNATURE_FORMAT,
        "key_id": key.key_id,
        "algorithm": ALGORITHM,
        "manifest_sha256": digest.hex(),
        "signature": base64.b64encode(key.sign_digest(digest)).decode(),
    }
    return json.dumps(doc, indent=2).encode()


@dataclass
class SignaturePolicy:
    """What a loader demands of a version's signature: checked with `key`; a version without
    one is refused when `required` (the default with a key), else let through unchecked."""

    key: SigningKey
    required: bool = True

    def check(self, manifest: bytes, signature: bytes | None, where: str) -> None:
        """Refuse (ArtifactError) unless `signature` is this key's over these manifest bytes."""
        if signature is None:
            if self.required:
                raise ArtifactError(f"{where} is not signed, and this deployment requires it")
            return
        try:
            if len(signature) > MAX_SIGNATURE_BYTES:
                raise ValueError("too large")
            doc = json.loads(signature)
            raw = base64.b64decode(doc["signature"], validate=True)
            algorithm = doc["algorithm"]
        except (ValueError, KeyError, TypeError):
            raise ArtifactError(f"{where}: its manifest.sig is not a signature document") from None
        if algorithm != ALGORITHM:
            raise ArtifactError(f"{where}: signed with {str(algorithm)[:32]}, not {ALGORITHM}")
        if not self.key.verify_digest(hashlib.sha256(manifest).digest(), raw):
            raise ArtifactError(
                f"{where}: the manifest's signature does not verify with key {self.key.key_id} "
                f"(it names key {str(doc.get('key_id'))[:120]})"
            )


def read_signature(s3_client: Any, bucket: str, key: str) -> bytes | None:
    """A manifest.sig's bytes from S3, or None where there is none (for every reader: the
    serving fetch, the PreTraffic hook).

    S3 answers a missing key with 403 AccessDenied, not 404, to a caller who may not list that
    prefix (the functions' roles list their model's prefix only by condition): both mean "not
    signed", which the policy then accepts or refuses."""
    from botocore.exceptions import ClientError

    try:
        return bytes(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "AccessDenied", "403"):
            return None
        raise
