"""A registry version as SageMaker wants it: one `model.tar.gz` that unpacks into /opt/ml/model.

SageMaker downloads the endpoint model's `ModelDataUrl` and extracts it into /opt/ml/model,
so the archive holds the artifact's files at its root (model.onnx, manifest.json,
assets/...), never under a folder. It is written next to the version in the registry:
`models/<name>/<version>/model.tar.gz`, readable by the endpoint's role like the rest of the
model's prefix. The archive is reproducible (sorted entries, fixed mtime and owner), so the
same version always packs to the same bytes and sha256.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

from onnxlift_serving import layout
from onnxlift_serving.artifact import load_artifact

from onnxlift.errors import OnnxliftError

ARCHIVE = "model.tar.gz"


def archive_key(name: str, version: str) -> str:
    """Registry key of a version's SageMaker archive (its ModelDataUrl)."""
    return layout.object_key(name, version, ARCHIVE)


def _members(folder: Path) -> list[Path]:
    """The model, the manifest (and its signature, if signed) and its assets: no leftovers."""
    manifest = json.loads((folder / layout.MANIFEST_FILE).read_text())
    files = [folder / layout.MODEL_FILE, folder / layout.MANIFEST_FILE]
    if (folder / layout.SIGNATURE_FILE).is_file():  # the container checks it at load
        files.append(folder / layout.SIGNATURE_FILE)
    files += [folder / layout.ASSETS_DIR / relative for relative in manifest.get("assets", {})]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def pack_model(folder: Path, destination: Path) -> dict[str, Any]:
    """Write `destination` (model.tar.gz) from a verified artifact folder; return its digest.

    The folder must be a published version (its manifest has a version): SageMaker serves
    what was published, never a build that has no version yet.
    """
    artifact = load_artifact(folder)  # sha256 of every file checked against the manifest
    if artifact.manifest.get("version") in (None, ""):
        raise OnnxliftError(
            f"{folder}: the manifest has no version; publish the build first "
            "(`onnxlift publish`) and pack the published version"
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(folder):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    # mtime=0 and no file name in the gzip header: same input, same bytes.
    with (
        destination.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    ):
        gz.write(buffer.getvalue())
    digest = hashlib.sha256(destination.read_bytes()).hexdigest()
    return {
        "key": archive_key(artifact.name, artifact.version),
        "sha256": digest,
        "bytes": destination.stat().st_size,
        "members": [p.relative_to(folder).as_posix() for p in _members(folder)],
    }


def unpack_model(archive: Path, destination: Path) -> Path:
    """What SageMaker does with ModelDataUrl (tests and the local server use it)."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode="r:gz") as tar:
        tar.extractall(destination, filter="data")
    return destination
