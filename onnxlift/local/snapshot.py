"""Keep the local registry across restarts: moto keeps state in memory only.

Every publish and alias change through the local stack's registry is copied to
`.onnxlift/registry/<bucket>/` as it happens (Registry's mirror), and the stack copies the
bucket again on the way down; on the way up it puts it back. Versions are immutable, so a
file already on disk is never fetched again; alias files can change and are always refreshed.

Crash-safe: each file is written to a temporary name in its own folder, fsynced, renamed into
place and its folder fsynced, so a kill mid-write leaves either the old file or the new one
plus a temporary file that restore neither uploads nor keeps. Manifests go last, on the way
down and up: a version whose files were cut short never looks complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from onnxlift_serving import layout

__all__ = ["is_temporary", "restore", "save"]

TEMP_SUFFIX = ".partial"
# ours (".<name>.<random>.partial"), and s3transfer's "<name>.partial.<8 hex>" of older runs
_TEMPORARY = re.compile(r"\.partial(\.[0-9a-fA-F]{8})?$")


def is_temporary(path: Path) -> bool:
    """A file a killed write left behind: never a registry object."""
    return _TEMPORARY.search(path.name) is not None


def _manifests_last(key: str) -> tuple[bool, str]:
    return key.rsplit("/", 1)[-1] == layout.MANIFEST_FILE, key


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(folder: Path) -> None:
    """mkdir -p, with each new folder's entry fsynced in its parent."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another writer made it first
            new.mkdir()
        _fsync_dir(new.parent)


def _write_object(s3: Any, bucket: str, key: str, size: int, target: Path) -> None:
    _make_dirs(target.parent)
    fd, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            shutil.copyfileobj(body, handle, 1 << 20)
            handle.flush()
            os.fsync(handle.fileno())
            written = handle.tell()
        if written != size:
            raise OSError(f"s3://{bucket}/{key}: got {written} bytes of {size}")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def save(s3: Any, bucket: str, folder: Path) -> int:
    """Copy what the folder lacks (and every alias) from the bucket; how many files were written."""
    items: list[tuple[str, int]] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        items.extend((item["Key"], item["Size"]) for item in page.get("Contents", []))
    count = 0
    for key, size in sorted(items, key=lambda item: _manifests_last(item[0])):
        if ".." in key.split("/") or key.startswith("/"):  # a key is never a way out
            continue
        target = folder / key
        if is_temporary(target):
            continue
        mutable = "/aliases/" in key
        if target.is_file() and target.stat().st_size == size and not mutable:
            continue
        _write_object(s3, bucket, key, size, target)
        count += 1
    return count


def restore(s3: Any, bucket: str, folder: Path) -> int:
    """Upload every kept file (manifests last); leftovers of killed writes are removed instead."""
    if not folder.is_dir():
        return 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    for path in files:
        if is_temporary(path):
            path.unlink(missing_ok=True)
    kept = sorted(
        (p.relative_to(folder).as_posix() for p in files if not is_temporary(p)),
        key=_manifests_last,
    )
    for key in kept:
        s3.upload_file(str(folder / key), bucket, key)
    return len(kept)
