"""`onnxlift deploy-local`: the deploy rehearsal (the real cdk CLI against moto server)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from onnxlift_serving import contract

from onnxlift import paths
from onnxlift.cli.common import console, project_root

__all__ = ["deploy_local"]


@click.command("deploy-local")
@click.option(
    "--env",
    "env",
    type=click.Choice(contract.ENVIRONMENTS),
    default="dev",
    show_default=True,
    help="The environment to deploy (-c onnxlift.env=).",
)
@click.option("--aws-port", type=int, help="Port of moto server (default: a free one).")
@click.option(
    "--timeout-s", default=600.0, show_default=True, help="Limit for each cdk command (seconds)."
)
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the report.")
def deploy_local(env: str, aws_port: int | None, timeout_s: float, json_out: Path | None) -> None:
    """Rehearse a deploy on this machine: `cdk bootstrap` and `cdk deploy` (ECR mode) against moto
    server on loopback; print what was created, checked by each service's own API, and every
    template resource moto could not create, by name. Nothing reaches AWS."""
    from onnxlift.local.rehearsal import format_report, rehearse

    root = project_root()
    workdir = paths.state_dir(root) / "rehearsal"
    console.print(f"[dim]·[/dim] cdk bootstrap + cdk deploy against moto (logs in {workdir})")
    started = time.monotonic()
    rehearsal = rehearse(root, workdir, env=env, port=aws_port, timeout=timeout_s)
    click.echo(format_report(rehearsal))
    click.echo(f"rehearsal wall time: {time.monotonic() - started:.1f}s")
    if json_out is not None:
        json_out.write_text(json.dumps(rehearsal.to_json(), indent=2) + "\n")
