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


def _target(row: dict[str, Any]) -> str:
    return f"{row['target']}: {row['target_reason']}" if row.get("target_reason") else "-"


def _integer_kernels(manifest: dict[str, Any]) -> str:
    """How the integer kernels ran parity: weights' width, session setting, the CPU's flags."""
    kernels = manifest.get("quantization", {}).get("integer_kernels")
    measured = manifest.get("parity", {}).get("measured_on") or {}
    if not kernels:
        return "-"
    if not kernels.get("integer_weights"):
        weights = "no integer weights"
    elif kernels.get("weights_cannot_saturate"):
        weights = "7-bit weights"
    else:
        weights = "8-bit weights"
    setting = ",".join(f"{k.split('.')[-1]}={v}" for k, v in kernels["session_config"].items())
    flags = " ".join(measured.get("flags", [])) or measured.get("machine", "?")
    return f"{weights}; {setting}; parity on {flags}"


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


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
            # One line however wide the terminal: scripts and people grep it.
            console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True, markup=True)
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
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from onnxlift.build.pipeline import build_model

    specs = _specs(names, all_models)
    table = Table(
        "model",
        "source",
        "parity metric",
        "FP32",
        "INT8",
        "threshold",
        "FP32 MB",
        "served MB",
        "seconds",
        title="onnxlift build",
    )
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        overall = progress.add_task(f"building {len(specs)} model(s)", total=len(specs))
        for spec in specs:
            step = progress.add_task(f"{spec.name}: starting", total=None)

            def report(message: str, step: Any = step) -> None:
                progress.update(step, description=message)

            result = build_model(spec, root=_root(), force=force, report=report)
            progress.update(
                step, description=f"[green]{spec.name}: done[/green]", total=1, completed=1
            )
            progress.advance(overall)
            parity = result.manifest["parity"]
            int8 = parity.get("int8")
            table.add_row(
                spec.name,
                spec.framework,
                parity["metric"],
                f"{parity['fp32']['value']:.4f}",
                f"{int8['value']:.4f}" if int8 else "-",
                f"{parity['threshold']}",
                f"{parity['fp32']['bytes'] / 1e6:.2f}",
                f"{result.manifest['bytes'] / 1e6:.2f}",
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


BUCKET_OPTION = click.option(
    "--bucket", envvar="ONNXLIFT_BUCKET", help="Registry bucket (default: the local stack's)."
)


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (a new folder models/NAME).")
@click.option(
    "--quantize",
    type=click.Choice(["none", "dynamic", "static"]),
    default="none",
    show_default=True,
    help="INT8 mode; static calibrates on the samples.",
)
@click.option(
    "--max-abs-error",
    type=float,
    help="Parity gate vs the original file [default: 1e-5 unquantized, 0.05 quantized].",
)
@click.option(
    "--samples",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An .npz of inputs for parity (and calibration); else seeded random inputs.",
)
@click.option("--memory-mb", type=int, default=1024, show_default=True)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Publish to the registry (--bucket, or the running local stack).",
)
@BUCKET_OPTION
def add(
    path: Path,
    name: str,
    quantize: str,
    max_abs_error: float | None,
    samples: Path | None,
    memory_mb: int,
    publish: bool,
    bucket: str | None,
) -> None:
    """Bring an ONNX file you already have: check it, optionally quantize it, publish it."""
    import shutil

    from onnxlift.build.pipeline import build_model
    from onnxlift.sources.onnx_file import check_onnx_file, external_data_files
    from onnxlift.spec import load_spec

    model = check_onnx_file(path)  # before anything is written
    folder = paths.models_dir(_root()) / name
    if folder.exists():
        raise OnnxliftError(f"{folder} exists: pick another --name (nothing was changed)")
    threshold = (
        max_abs_error if max_abs_error is not None else (1e-5 if quantize == "none" else 0.05)
    )
    try:
        folder.mkdir(parents=True)
        shutil.copyfile(path, folder / "model.onnx")
        for location in external_data_files(model):
            (folder / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / location, folder / location)
        if samples is not None:
            shutil.copyfile(samples, folder / "samples.npz")
        (folder / "model.toml").write_text(
            f"# Added with `onnxlift add {path.name} --name {name}`.\n"
            f'name = "{name}"\ntask = "tensor"\n\n[source]\nframework = "onnx"\n'
            f'file = "model.onnx"\n\n[quantization]\nmode = "{quantize}"\n\n'
            f'[parity]\nmetric = "max_abs_error"\nthreshold = {threshold}\n\n'
            f'[serving]\ntarget = "lambda"\nmemory_mb = {memory_mb}\n'
        )
        result = build_model(
            load_spec(folder), root=_root(), report=lambda m: console.print(f"  {m}")
        )
    except Exception:
        shutil.rmtree(folder, ignore_errors=True)  # a failed add leaves nothing behind
        raise
    figure = result.manifest["parity"]
    console.print(f"{name}: max abs error {figure['value']:.2e} (gate {threshold}) -> {folder}")
    if publish:
        registry = _registry(bucket)
        version = registry.publish(result.folder, name=name)
        click.echo(f"published {name} version {version} to s3://{registry.bucket}")


@cli.command()
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="prod", show_default=True, help="The alias to point.")
@BUCKET_OPTION
def promote(name: str, version: str, alias: str, bucket: str | None) -> None:
    """Point ALIAS of NAME at VERSION: it answers requests that name no version."""
    doc = _registry(bucket).promote(name, version, alias)
    click.echo(f"{name} {alias} -> version {doc['version']}")


@cli.command()
@click.argument("name")
@click.option("--alias", default="prod", show_default=True, help="The alias to move back.")
@BUCKET_OPTION
def rollback(name: str, alias: str, bucket: str | None) -> None:
    """Point ALIAS of NAME back at the version it named before."""
    doc = _registry(bucket).rollback(name, alias)
    click.echo(f"{name} {alias} -> version {doc['version']} (rolled back)")


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
                    "integer_kernels_summary": _integer_kernels(manifest),
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
        size = _size(row["bytes"]) if row["bytes"] else "-"
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
            _target(row),
            row["created_at"] or "-",
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
