"""The `onnxlift` command line: one command per concern, each a thin layer over the library."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from onnxlift import __version__, paths
from onnxlift.errors import OnnxliftError

console = Console(stderr=True, highlight=False)


def _root() -> Path:
    return paths.project_root()


def _local_stack_info(root: Path) -> dict[str, Any] | None:
    info = paths.state_dir(root) / "local.json"
    return json.loads(info.read_text()) if info.is_file() else None


def _registry(bucket: str | None) -> Any:
    """The registry named by --bucket / ONNXLIFT_BUCKET; else the running local stack's."""
    from onnxlift.registry import Registry

    if bucket:
        return Registry(bucket)
    local = _local_stack_info(_root())
    if local is None:
        raise OnnxliftError(
            "no registry given: pass --bucket (or set ONNXLIFT_BUCKET), or start `onnxlift up`"
        )
    import boto3

    from onnxlift.local.moto_server import LOCAL_CREDENTIALS

    client = boto3.client(
        "s3",
        endpoint_url=local["aws_endpoint_url"],
        region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    return Registry(local["registry_bucket"], client)


def _specs(names: tuple[str, ...], all_models: bool) -> list[Any]:
    from onnxlift.spec import discover_specs

    specs = discover_specs(paths.models_dir(_root()))
    if all_models or not names:
        return specs
    by_name = {s.name: s for s in specs}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise OnnxliftError(f"unknown model(s): {', '.join(missing)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]


class _Group(click.Group):
    """Turns the toolkit's user-facing errors into a clean message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OnnxliftError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}")
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="onnxlift")
def cli() -> None:
    """Quantized ONNX models as a service on AWS."""


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_models", is_flag=True, help="Build every model under models/.")
@click.option("--force", is_flag=True, help="Rebuild even when an identical build exists.")
def build(names: tuple[str, ...], all_models: bool, force: bool) -> None:
    """Export, quantize and verify models (all of them when no NAME is given)."""
    from onnxlift.build.pipeline import build_model

    table = Table("model", "build", "INT8 min cos", "FP32 min cos", "size MB", "seconds")
    for spec in _specs(names, all_models):
        result = build_model(
            spec, root=_root(), force=force, report=lambda m: console.print(f"  {m}")
        )
        parity = result.manifest["parity"]
        int8 = parity.get("int8", {})
        table.add_row(
            spec.name,
            result.folder.name,
            f"{int8.get('min', float('nan')):.4f}",
            f"{parity['fp32']['min']:.4f}",
            f"{result.manifest['bytes'] / 1e6:.1f}",
            "cached" if result.skipped else f"{result.seconds:.1f}",
        )
    console.print(table)


@cli.command()
@click.argument("name")
@click.option("--version", "version", help="Version number to publish as (default: next free).")
@click.option(
    "--bucket", envvar="ONNXLIFT_BUCKET", help="Registry bucket (default: the local stack's)."
)
def publish(name: str, version: str | None, bucket: str | None) -> None:
    """Publish the current build of NAME as a new immutable version."""
    from onnxlift.build.pipeline import latest_build

    (spec,) = _specs((name,), False)
    folder = latest_build(spec, _root())
    if folder is None:
        raise OnnxliftError(
            f"{name} has no build for its current spec: run `onnxlift build {name}`"
        )
    registry = _registry(bucket)
    published = registry.publish(folder, name=name, version=version)
    click.echo(f"published {name} version {published} to s3://{registry.bucket}")


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option(
    "--bucket", envvar="ONNXLIFT_BUCKET", help="Registry bucket (default: the local stack's)."
)
def pull(name: str, version: str, bucket: str | None) -> None:
    """Fetch a published version (sha256-checked) to where the image build bakes it in."""
    registry = _registry(bucket)
    folder = registry.download(name, version, paths.cache_dir(_root()) / "artifacts")
    click.echo(f"{name} version {version} -> {folder}")


@cli.command("list")
@click.option(
    "--bucket", envvar="ONNXLIFT_BUCKET", help="Registry bucket (default: the local stack's)."
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_models(bucket: str | None, as_json: bool) -> None:
    """Models and versions in the registry, with size, parity and target."""
    registry = _registry(bucket)
    rows = []
    for name in registry.models():
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
                    "target": manifest.get("target"),
                    "created_at": manifest.get("created_at"),
                    "sha256": manifest.get("sha256"),
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(
        "model",
        "version",
        "size MB",
        "parity",
        "target",
        "created",
        title=f"s3://{registry.bucket}",
    )
    for row in rows:
        size = f"{row['bytes'] / 1e6:.1f}" if row["bytes"] else "-"
        parity = (
            f"{row['parity']:.4f} ({row['parity_metric']})" if row["parity"] is not None else "-"
        )
        version = row["version"] if row["complete"] else f"{row['version']} (incomplete)"
        table.add_row(
            row["name"], version, size, parity, row["target"] or "-", row["created_at"] or "-"
        )
    Console().print(table)


@cli.command()
@click.option("--port", default=8080, show_default=True, help="Port of the local API gateway.")
@click.option(
    "--aws-port", default=4566, show_default=True, help="Port of moto server (embedded AWS)."
)
@click.option(
    "--api-key",
    envvar="ONNXLIFT_API_KEY",
    help="API key to require (default: a stable generated one).",
)
@click.option("--model", "models", multiple=True, help="Serve only these models (repeatable).")
@click.option(
    "--threads", type=int, help="intra_op_num_threads per function (default: from its memory)."
)
def up(
    port: int, aws_port: int, api_key: str | None, models: tuple[str, ...], threads: int | None
) -> None:
    """Bring the whole service up on 127.0.0.1; Ctrl-C stops it."""
    from onnxlift.local.stack import LocalStack, StackOptions, run_until_signalled

    options = StackOptions(
        root=_root(),
        port=port,
        aws_port=aws_port,
        api_key=api_key,
        models=list(models) or None,
        threads=threads,
    )
    stack = LocalStack(options, report=lambda m: console.print(f"[dim]·[/dim] {m}"))

    def ready(info: dict[str, Any]) -> None:
        console.print(f"\n[bold green]onnxlift is up[/bold green] in {info['started_in_seconds']}s")
        console.print(f"  url       {info['url']}")
        console.print(f"  api key   {info['api_key']}")
        console.print(f"  aws       {info['aws_endpoint_url']} (moto)")
        console.print(f"  state     {paths.state_dir(options.root) / 'local.json'}")
        console.print(f"\n  {info['curl']}\n", soft_wrap=True)
        console.print("Ctrl-C to stop.")

    run_until_signalled(stack, ready)


@cli.command()
@click.option("--quick", is_flag=True, help="A bounded check of the harness (under a minute).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench"),
    show_default=True,
    help="Where results.json, REPORT.md and the PNG plots go.",
)
@click.option("--model", "models", multiple=True, help="Benchmark only these models (repeatable).")
@click.option(
    "--state",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="local.json of a running `onnxlift up` to use instead of starting a stack.",
)
def bench(quick: bool, out: Path, models: tuple[str, ...], state: Path | None) -> None:
    """Where every millisecond goes, beside FP32 and PyTorch: results.json, REPORT.md, plots."""
    from onnxlift.bench.runner import BenchConfig, run

    args = " --quick" if quick else ""
    config = BenchConfig(
        root=_root(),
        out=out,
        models=models,
        quick=quick,
        state=state,
        command=f"onnxlift bench{args}" + "".join(f" --model {m}" for m in models),
    )
    results = run(config, report=lambda m: console.print(f"[dim]·[/dim] {m}"))
    table = Table("model", "goal", "figure", "met")
    for goal in results["goals"]:
        met = {True: "[green]met[/green]", False: "[red]not met[/red]"}.get(goal["met"], "-")
        table.add_row(goal["model"], goal["goal"], goal["figure"], met)
    console.print(table)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched from a model hub
    cli()


if __name__ == "__main__":
    main()
