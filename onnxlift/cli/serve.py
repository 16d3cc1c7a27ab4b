"""`onnxlift up`: the whole stack on one machine, on loopback."""

from __future__ import annotations

from typing import Any

import click

from onnxlift import paths
from onnxlift.builder.bounded import BuildLimits
from onnxlift.cli.common import (
    console,
    limit_options,
    project_root,
)

__all__ = ["up"]


@click.command()
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
@click.option(
    "--sign",
    is_flag=True,
    help="Sign every published version with a key file under .onnxlift/signing/ (made once); "
    "the functions and `onnxlift pull` refuse versions that do not verify.",
)
@limit_options
def up(
    port: int,
    aws_port: int,
    api_key: str | None,
    models: tuple[str, ...],
    threads: int | None,
    sign: bool,
    time_limit_s: float,
    memory_limit_mb: int,
) -> None:
    """Bring the whole service up on 127.0.0.1; Ctrl-C stops it (also while it builds).

    Models whose build is not cached are built first, each in a child process under
    --time-limit-s and --memory-limit-mb."""
    from onnxlift.local.stack import LocalStack, StackOptions, run_until_signalled

    options = StackOptions(
        root=project_root(),
        port=port,
        aws_port=aws_port,
        api_key=api_key,
        models=list(models) or None,
        threads=threads,
        sign=sign,
        build_limits=BuildLimits(seconds=time_limit_s, memory_mb=memory_limit_mb),
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
