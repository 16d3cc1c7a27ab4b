"""Keep the local registry across restarts: moto keeps state in memory only.

Every publish and alias change through the local stack's registry is copied to
`.onnxlift/registry/<bucket>/` as it happens (Registry's mirror), and the stack copies the
bucket again on the way down; on the way up it puts it back. Versions are immutable, so a
file already on disk is never fetched again; alias files can change and are always refreshed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save(s3: Any, bucket: str, folder: Path) -> int:
    count = 0
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            key = item["Key"]
            target = folder / key
            if ".." in key.split("/") or key.startswith("/"):  # a key is never a way out
                continue
            mutable = "/aliases/" in key
            if target.is_file() and target.stat().st_size == item["Size"] and not mutable:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            s3.download_file(bucket, key, str(partial))
            partial.replace(target)
            count += 1
    return count


def restore(s3: Any, bucket: str, folder: Path) -> int:
    count = 0
    if not folder.is_dir():
        return 0
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".partial")
    ):
        s3.upload_file(str(path), bucket, path.relative_to(folder).as_posix())
        count += 1
    return count
