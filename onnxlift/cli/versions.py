"""Registry commands: publish, pull, promote, roll back and list model versions."""

from __future__ import annotations

import json
import shutil

import click
from onnxlift_serving.errors import ArtifactError
from rich.console import Console
from rich.table import Table

from onnxlift import paths
from onnxlift.cli.common import (
    BUCKET_OPTION,
    SIGNING_KEY_OPTION,
    human_size,
    integer_kernels_text,
    open_registry,
    project_root,
    select_specs,
    target_text,
)
from onnxlift.errors import OnnxliftError, RegistryError

__all__ = ["list_models", "promote", "publish", "pull", "rollback"]


@click.command()
@click.argument("name")
@click.option("--version", "version", help="Version number to publish as (default: next free).")
@BUCKET_OPTION
@SIGNING_KEY_OPTION
def publish(name: str, version: str | None, bucket: str | None, signing_key: str | None) -> None:
    """Publish the current build of NAME as a new immutable version (signed with a key)."""
    from onnxlift.builder.build import latest_build

    (spec,) = select_specs((name,), False)
    folder = latest_build(spec, project_root())
    if folder is None:
        raise OnnxliftError(
            f"{name} has no build for its current spec: run `onnxlift build {name}`"
        )
    registry = open_registry(bucket, signing_key)
    published = registry.publish(folder, name=name, version=version)
    click.echo(f"published {name} version {published} to s3://{registry.bucket}")


@click.command()
@click.argument("name")
@click.argument("version")
@BUCKET_OPTION
@SIGNING_KEY_OPTION
def pull(name: str, version: str, bucket: str | None, signing_key: str | None) -> None:
    """Fetch a published version (sha256-checked; signature-checked with a key) to where the
    image build bakes it in."""
    registry = open_registry(bucket, signing_key)
    if version not in registry.versions(name):  # a clear line, not S3's NoSuchKey
        raise RegistryError(f"{name} version {version} is not in s3://{registry.bucket}")
    artifacts = paths.cache_dir(project_root()) / "artifacts"
    try:
        folder = registry.download(name, version, artifacts)
    except ArtifactError:
        # An older copy there (pulled before signing was on) would be baked into the image
        # and refused at load: a refused pull leaves no copy of that version at all.
        shutil.rmtree(artifacts / name / version, ignore_errors=True)
        raise
    click.echo(f"{name} version {version} -> {folder}")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="prod", show_default=True, help="The alias to point.")
@BUCKET_OPTION
def promote(name: str, version: str, alias: str, bucket: str | None) -> None:
    """Point ALIAS of NAME at VERSION: it answers requests that name no version."""
    doc = open_registry(bucket).promote(name, version, alias)
    click.echo(f"{name} {alias} -> version {doc['version']}")


@click.command()
@click.argument("name")
@click.option("--alias", default="prod", show_default=True, help="The alias to move back.")
@BUCKET_OPTION
def rollback(name: str, alias: str, bucket: str | None) -> None:
    """Point ALIAS of NAME back at the version it named before."""
    doc = open_registry(bucket).rollback(name, alias)
    click.echo(f"{name} {alias} -> version {doc['version']} (rolled back)")


@click.command("list")
@BUCKET_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(bucket: str | None, as_json: bool) -> None:
    """Models and versions in the registry, with size, parity and target."""
    registry = open_registry(bucket)
    rows = []
    for name in registry.models():
        aliases = registry.aliases(name)
        for info in registry.describe(name):
            manifest = info.manifest or {}
            parity = manifest.get("parity", {})
            rows.append(
                {
                    "name": name,
                    "version": info.version,
                    "complete": info.complete,
                    "bytes": manifest.get("bytes"),
                    "parity_metric": parity.get("metric"),
                    "parity": parity.get("value"),
                    "threshold": parity.get("threshold"),
                    "integer_kernels": manifest.get("quantization", {}).get("integer_kernels"),
                    "parity_measured_on": parity.get("measured_on"),
                    "integer_kernels_summary": integer_kernels_text(manifest),
                    "target": manifest.get("target"),
                    "target_reason": manifest.get("target_reason"),
                    "created_at": manifest.get("created_at"),
                    "sha256": manifest.get("sha256"),
                    "aliases": sorted(a for a, v in aliases.items() if v == info.version),
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "model",
        "version",
        "aliases",
        "size",
        "parity",
        "integer kernels",
        "target (why)",
        "created",
        title=f"s3://{registry.bucket}",
    )
    for row in rows:
        size = human_size(row["bytes"]) if row["bytes"] else "-"
        parity = (
            f"{row['parity']:.4f} ({row['parity_metric']})" if row["parity"] is not None else "-"
        )
        version = row["version"] if row["complete"] else f"{row['version']} (incomplete)"
        aliases = ", ".join(row["aliases"]) or "-"
        table.add_row(
            row["name"],
            version,
            aliases,
            size,
            parity,
            row["integer_kernels_summary"],
            target_text(row),
            row["created_at"] or "-",
        )
    Console().print(table)
