"""`onnxlift verify`: a version's parity set replayed against a running API, over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import click
from onnxlift_serving.contract import JSON_CONTENT_TYPE, infer_path
from onnxlift_serving.verify import PARITY_SET_ASSET, ParitySetError, read_parity_set, verify

from onnxlift.cli.common import (
    BUCKET_OPTION,
    EXIT_REFUSED,
    SIGNING_KEY_OPTION,
    local_stack_info,
    open_registry,
    project_root,
)
from onnxlift.errors import OnnxliftError, RegistryError

__all__ = ["http_sender", "verify_command"]

REQUEST_TIMEOUT_S = 30.0  # one request; API Gateway itself gives up at 29 s


def http_sender(
    url: str, name: str, version: str, api_key: str | None
) -> Callable[[dict[str, Any]], Mapping[str, Any]]:
    """POST a V2 request body to NAME's versioned infer route under `url`; the parsed answer.
    Anything but a 200 with a JSON object is one clear error line."""
    target = url.rstrip("/") + infer_path(name, version)
    headers = {"Content-Type": JSON_CONTENT_TYPE} | ({"x-api-key": api_key} if api_key else {})

    def send(body: dict[str, Any]) -> Mapping[str, Any]:
        request = urllib.request.Request(
            target, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise OnnxliftError(f"{target} answered {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise OnnxliftError(f"{target} could not be reached: {exc}") from None
        try:
            doc = json.loads(raw)
        except ValueError:
            raise OnnxliftError(f"{target} answered something that is not JSON") from None
        if not isinstance(doc, dict):
            raise OnnxliftError(f"{target} answered JSON that is not a V2 answer")
        return doc

    return send


def _version(registry: Any, name: str, version: str | None) -> str:
    """--version, else the version `prod` names, else the newest complete one."""
    if version:
        return version
    alias = registry.alias(name, "prod")
    if alias:
        return str(alias["version"])
    complete = [info.version for info in registry.describe(name) if info.complete]
    if not complete:
        raise RegistryError(f"{name} has no published version in s3://{registry.bucket}")
    return complete[-1]


def _parity_set(registry: Any, name: str, version: str) -> dict[str, Any]:
    """The version's parity set, sha256-checked against its manifest (signature-checked with
    a key), without fetching the model."""
    raw = registry.asset(name, version, PARITY_SET_ASSET)
    if raw is None:
        raise OnnxliftError(
            f"{name} version {version} holds no parity set (built before onnxlift kept one): "
            f"rebuild with `onnxlift build {name} --force` and publish it"
        )
    try:
        return read_parity_set(raw)
    except ParitySetError as exc:
        raise OnnxliftError(f"{name} version {version}: {exc}") from None


@click.command("verify")
@click.argument("name")
@click.option("--version", "version", help="The version to check (default: prod's, or newest).")
@click.option("--url", help="The API's base URL, stage included (default: the local stack's).")
@click.option("--api-key", envvar="ONNXLIFT_API_KEY", help="x-api-key (default: the local's).")
@BUCKET_OPTION
@SIGNING_KEY_OPTION
@click.pass_context
def verify_command(
    ctx: click.Context,
    name: str,
    version: str | None,
    url: str | None,
    api_key: str | None,
    bucket: str | None,
    signing_key: str | None,
) -> None:
    """Replay NAME's parity set (kept with the version at build time) against the API and hold
    the answers to the spec's threshold: exit 0 when they pass, 2 when they do not."""
    registry = open_registry(bucket, signing_key)
    version = _version(registry, name, version)
    parity_set = _parity_set(registry, name, version)
    if url is None:
        local = local_stack_info(project_root())
        if local is None:
            raise OnnxliftError("no --url given and no local stack running (`onnxlift up`)")
        url, api_key = local["url"], api_key or local.get("api_key")
    try:
        result = verify(parity_set, http_sender(url, name, version, api_key))
    except ParitySetError as exc:
        raise OnnxliftError(f"{name} version {version} at {url}: {exc}") from None
    click.echo(result.line(f"{name} version {version} at {url}"))
    if not result.passed:
        ctx.exit(EXIT_REFUSED)
