"""`onnxlift bench`: measure the served models and write the report."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from onnxlift.cli.common import (
    console,
    project_root,
)

__all__ = ["bench"]


@click.command()
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
        root=project_root(),
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
