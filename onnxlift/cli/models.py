"""Model commands: build models from their specs, add an ONNX file you already have."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click
from onnxlift_serving.contract import is_model_name
from rich.table import Table

from onnxlift import paths
from onnxlift.builder.bounded import BuildLimits, build_bounded
from onnxlift.cli.common import (
    BUCKET_OPTION,
    SIGNING_KEY_OPTION,
    console,
    limit_options,
    open_registry,
    project_root,
    select_specs,
)
from onnxlift.errors import ModelRejected, OnnxliftError

__all__ = ["add", "build"]


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_models", is_flag=True, help="Build every model under models/.")
@click.option("--force", is_flag=True, help="Rebuild even when an identical build exists.")
@limit_options
def build(
    names: tuple[str, ...],
    all_models: bool,
    force: bool,
    time_limit_s: float,
    memory_limit_mb: int,
) -> None:
    """Export, quantize and verify models (all of them when no NAME is given).

    Each model builds in a child process under --time-limit-s and --memory-limit-mb."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    limits = BuildLimits(seconds=time_limit_s, memory_mb=memory_limit_mb)
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

            result = build_bounded(
                spec.folder, root=project_root(), force=force, limits=limits, report=report
            )
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


STAGING_LOCK = ".lock"  # held (flock) by the add that owns a staging folder, while it runs


def _sweep_killed_adds(models: Path) -> None:
    """Remove what a killed add left: its staging folder and the unfinished build of a model
    that never reached models/. An add holds an flock on its folder's lock file while it runs,
    and the kernel drops it when that process dies however it dies: a folder whose lock can
    be taken is a dead add's; one whose lock cannot be taken is left alone."""
    import fcntl
    import shutil
    import time

    names = set()
    for staging in models.glob(".adding-*"):
        lock = staging / STAGING_LOCK
        if not lock.is_file():  # just made (its lock comes next) or not ours: only when old
            if time.time() - staging.stat().st_mtime < 60:
                continue
        else:
            with lock.open("a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live add
        shutil.rmtree(staging, ignore_errors=True)
        if match := re.fullmatch(r"\.adding-(.+)-[^-]+", staging.name):
            names.add(match[1])
    for name in names:  # the build of a model no add is working on and none finished
        busy = any(models.glob(f".adding-{name}-*"))
        if is_model_name(name) and not busy and not (models / name).exists():
            shutil.rmtree(paths.cache_dir(project_root()) / "build" / name, ignore_errors=True)


def _add_staged(
    folder: Path,
    path: Path,
    model: Any,
    samples: Path | None,
    spec: dict[str, Any],
    limits: BuildLimits,
) -> Any:
    """Build the new model in a hidden folder beside models/NAME and move it there only once
    every check has passed: a failed or killed add leaves no model folder that `up` would
    pick up (discover_specs reads models/*/model.toml), and no build of it either."""
    import fcntl
    import shutil
    import tempfile

    import tomli_w

    from onnxlift.builder.check import external_data_files

    folder.parent.mkdir(parents=True, exist_ok=True)
    _sweep_killed_adds(folder.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".adding-{folder.name}-", dir=folder.parent))
    lock = (staging / STAGING_LOCK).open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)  # this add is alive while it holds it (see the sweep)
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
        result = build_bounded(  # the checks and reference run, bounded, in a child
            draft,
            root=project_root(),
            limits=limits,
            report=lambda m: console.print(f"  {m}", markup=False),
        )
        draft.rename(folder)
    except OnnxliftError as exc:
        shutil.rmtree(build_dir, ignore_errors=True)  # nothing of a failed add stays
        # The checks saw the staged copy; the user knows the file by its own path.
        text = str(exc).replace(str(draft / "model.onnx"), str(path))
        raise type(exc)(text.replace(str(draft), str(path.parent))) from None
    except BaseException:
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        lock.close()
    return result


def _precheck(path: Path, name: str) -> Any:
    """What `add` checks in its own process before anything is copied: the name, then the
    file's protobuf, opset and external data (the full checks run with the build)."""
    from onnxlift.sources.onnx_file import check_onnx_file

    if not is_model_name(name):  # before any folder is made of it
        raise OnnxliftError(
            f"--name {name[:64]!r} is not a model name: a letter, then letters, digits, "
            "'-' or '_' (at most 64)"
        )
    try:
        return check_onnx_file(path, full=False)
    except OnnxliftError:
        raise
    except Exception as exc:  # onnx's own refusal of the file
        raise OnnxliftError(refusal(path, exc)) from None


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
@limit_options
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
    time_limit_s: float,
    memory_limit_mb: int,
    signing_key: str | None,
) -> None:
    """Bring an ONNX file you already have: check it, optionally quantize it, publish it.

    Nothing is written under models/ until every check has passed; the checks and the
    reference run happen in a child process under --time-limit-s and --memory-limit-mb."""
    model = _precheck(path, name)
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
        limits = BuildLimits(seconds=time_limit_s, memory_mb=memory_limit_mb)
        result = _add_staged(folder, path, model, samples, spec, limits)
    except ModelRejected as exc:  # onnx's or onnxruntime's refusal, in the child
        raise OnnxliftError(f"{path.name} refused: {exc} (nothing was added)") from None
    except OnnxliftError:
        raise
    except Exception as exc:  # staging the copy failed (a file vanished, a disk filled)
        raise OnnxliftError(refusal(path, exc)) from None
    figure = result.manifest["parity"]
    console.print(f"{name}: max abs error {figure['value']:.2e} (gate {threshold}) -> {folder}")
    if publish:
        registry = open_registry(bucket, signing_key)
        version = registry.publish(result.folder, name=name)
        click.echo(f"published {name} version {version} to s3://{registry.bucket}")
