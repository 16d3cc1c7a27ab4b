"""Aliases: `models/<name>/aliases/<alias>.json` names the version that answers by default.

    {"name": "minilm", "alias": "prod", "version": "3",
     "stack": ["1", "3"],            # versions that were current, oldest first; rollback pops
     "log": [{"action": "promote", "version": "3", "at": "..."}, ...]}

Shared by the toolkit (which writes them) and the runtime (which reads them).
"""

from __future__ import annotations

import json
from typing import Any

from onnxlift_serving import layout

DEFAULT_ALIAS = "prod"


def read_alias(
    s3: Any, bucket: str, name: str, alias: str
) -> tuple[dict[str, Any] | None, str | None]:
    """The alias document and its ETag, or (None, None) when the alias does not exist."""
    try:
        response = s3.get_object(Bucket=bucket, Key=layout.alias_key(name, alias))
    except s3.exceptions.NoSuchKey:
        return None, None
    return json.loads(response["Body"].read()), response.get("ETag")
