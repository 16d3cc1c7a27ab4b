"""Model commands: build models from their specs, add an ONNX file you already have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from onnxlift_serving.contract import is_model_name
from rich.table import Table

from onnxlift import paths
from onnxlift.cli.common import (
    BUCKET_OPTION,
    SIGNING_KEY_OPTION,
    console,
    open_registry,
    project_root,
    select_specs,
)
from onnxlift.errors import OnnxliftError

__all__ = ["add", "build"]


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_models", is_flag=True, help="Build every model under models/.")
@click.option("--force", is_flag=True, help="Rebuild even when an identical build exists.")
def build(names: tuple[str, ...], all_models: bool, force: bool) -> None:
    """Export, quantize and verify models (all of them when no NAME is given)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from onnxlift.builder.build import build_model

    specs = select_specs(names, all_models)
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

            result = build_model(spec, root=project_root(), force=force, report=report)
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


def refusal(path: Path, exc: BaseException) -> str:
    """One line for a file the checks refused: what raised, and its first line."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{path.name} refused: {type(exc).__name__}: {first} (nothing was added)"


def _add_staged(
    folder: Path, path: Path, model: Any, samples: Path | None, spec: dict[str, Any]
) -> Any:
    """Build the new model in a hidden folder beside models/NAME and move it there only once
    every check has passed: a failed or killed add leaves no model folder that `up` would
    pick up (discover_specs reads models/*/model.toml), and no build of it either."""
    import shutil
    import tempfile

    import tomli_w

    from onnxlift.builder.build import build_model
    from onnxlift.sources.onnx_file import external_data_files
    from onnxlift.spec import load_spec

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".adding-{folder.name}-", dir=folder.parent))
    draft = staging / folder.name  # the spec's name must match its folder's
    build_dir = paths.cache_dir(project_root()) / "build" / folder.name
    try:
        draft.mkdir()
        shutil.copyfile(path, draft / "model.onnx")
        for location in external_data_files(model):
            (draft / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path.parent / location, draft / location)
        if samples is not None:
            shutil.copyfile(samples, draft / "samples.npz")
        header = f"# Added with `onnxlift add` from {json.dumps(path.name)}.\n"
        (draft / "model.toml").write_text(header + tomli_w.dumps(spec))
        result = build_model(
            load_spec(draft), root=project_root(), report=lambda m: console.print(f"  {m}")
        )
        draft.rename(folder)
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)  # nothing of a failed add stays
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


@click.command()
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
@SIGNING_KEY_OPTION
def add(
    path: Path,
    name: str,
    quantize: str,
    max_abs_error: float | None,
    samples: Path | None,
    memory_mb: int,
    publish: bool,
    bucket: str | None,
    signing_key: str | None,
) -> None:
    """Bring an ONNX file you already have: check it, optionally quantize it, publish it."""
    from onnxlift.sources.onnx_file import check_onnx_file

    if not is_model_name(name):  # before any folder is made of it
        raise OnnxliftError(
            f"--name {name[:64]!r} is not a model name: a letter, then letters, digits, "
            "'-' or '_' (at most 64)"
        )
    try:
        model = check_onnx_file(path)  # before anything is written
    except OnnxliftError:
        raise
    except Exception as exc:  # onnx's and onnxruntime's own refusals of the file
        raise OnnxliftError(refusal(path, exc)) from None
    folder = paths.models_dir(project_root()) / name
    if folder.exists():
        raise OnnxliftError(f"{folder} exists: pick another --name (nothing was changed)")
    threshold = (
        max_abs_error if max_abs_error is not None else (1e-5 if quantize == "none" else 0.05)
    )
    spec = {
        "name": name,
        "task": "tensor",
        "source": {"framework": "onnx", "file": "model.onnx"},
        "quantization": {"mode": quantize},
        "parity": {"metric": "max_abs_error", "threshold": threshold},
        "serving": {"target": "lambda", "memory_mb": memory_mb},
    }
    try:
        result = _add_staged(folder, path, model, samples, spec)
    except OnnxliftError:
        raise
    except Exception as exc:  # the build's checks and reference run refused the file or samples
        raise OnnxliftError(refusal(path, exc)) from None
    figure = result.manifest["parity"]
    console.print(f"{name}: max abs error {figure['value']:.2e} (gate {threshold}) -> {folder}")
    if publish:
        registry = open_registry(bucket, signing_key)
        version = registry.publish(result.folder, name=name)
        click.echo(f"published {name} version {version} to s3://{registry.bucket}")
