"""What every command group shares: the console, the project root, the registry, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from onnxlift_serving.errors import ArtifactError
from rich.console import Console
from rich.markup import escape

from onnxlift import paths
from onnxlift.builder.bounded import DEFAULT_MEMORY_MB, DEFAULT_SECONDS
from onnxlift.errors import OnnxliftError

__all__ = [
    "BUCKET_OPTION",
    "EXIT_INTERRUPTED",
    "EXIT_REFUSED",
    "SIGNING_KEY_OPTION",
    "OnnxliftGroup",
    "console",
    "human_size",
    "integer_kernels_text",
    "limit_options",
    "local_stack_info",
    "open_registry",
    "project_root",
    "select_specs",
    "target_text",
]

console = Console(stderr=True, highlight=False)

# The CLI's exit codes (README, "Exit codes"); LimitExceeded carries 3 itself.
EXIT_REFUSED, EXIT_INTERRUPTED = 2, 130


def project_root() -> Path:
    return paths.project_root()


def local_stack_info(root: Path) -> dict[str, Any] | None:
    info = paths.state_dir(root) / "local.json"
    return json.loads(info.read_text()) if info.is_file() else None


def _signing(spec: str | None, local: dict[str, Any] | None) -> dict[str, Any]:
    """Registry arguments for a signing key: --signing-key, else the local stack's (when it was
    started with --sign). Publish signs with it; download refuses what it does not verify."""
    from onnxlift_serving.signing import SignaturePolicy, open_key

    spec = spec or (local or {}).get("signing_key")
    if not spec:
        return {}
    key = open_key(spec)
    return {"signer": key, "signature": SignaturePolicy(key, required=True)}


def open_registry(bucket: str | None, signing_key: str | None = None) -> Any:
    """The registry named by --bucket / ONNXLIFT_BUCKET; else the running local stack's."""
    from onnxlift.registry import Registry

    if bucket:
        return Registry(bucket, **_signing(signing_key, None))
    local = local_stack_info(project_root())
    if local is None:
        raise OnnxliftError(
            "no registry given: pass --bucket (or set ONNXLIFT_BUCKET), or start `onnxlift up`"
        )
    import boto3

    from onnxlift.local.moto_server import LOCAL_CREDENTIALS
    from onnxlift.local.processes import stack_alive

    if not stack_alive(local.get("pid")):  # killed: its moto and local.json are leftovers
        state = paths.state_dir(project_root())
        raise OnnxliftError(
            f"the local stack in {state} (pid {local.get('pid')}) is not running: it was "
            f"killed before it could clean up; start it again with `onnxlift up` (what it "
            f"published is kept in {state / 'registry'})"
        )

    client = boto3.client(
        "s3",
        endpoint_url=local["aws_endpoint_url"],
        region_name=LOCAL_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = local["registry_bucket"]
    mirror = paths.state_dir(project_root()) / "registry" / bucket  # as `up` restores it
    return Registry(bucket, client, mirror=mirror, **_signing(signing_key, local))


def target_text(row: dict[str, Any]) -> str:
    return f"{row['target']}: {row['target_reason']}" if row.get("target_reason") else "-"


def integer_kernels_text(manifest: dict[str, Any]) -> str:
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


def human_size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def select_specs(names: tuple[str, ...], all_models: bool) -> list[Any]:
    from onnxlift.spec import discover_specs

    specs = discover_specs(paths.models_dir(project_root()))
    if all_models or not names:
        return specs
    by_name = {s.name: s for s in specs}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise OnnxliftError(f"unknown model(s): {', '.join(missing)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def aws_failure(exc: BaseException) -> str | None:
    """One line for an AWS call that failed (a missing bucket, denied access, no credentials,
    no endpoint), or None for anything that is not botocore's."""
    if not type(exc).__module__.startswith("botocore"):
        return None
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return (
            f"AWS refused {exc.operation_name}: {error.get('Code', '?')}: "
            f"{error.get('Message', '')}".strip()
        )
    return f"AWS could not be reached: {exc}"


class OnnxliftGroup(click.Group):
    """Turns the toolkit's user-facing errors into a clean message and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (OnnxliftError, ArtifactError) as exc:
            # One line however wide the terminal: scripts and people grep it. ArtifactError is
            # the serving runtime's refusal of a tampered or malformed version (pull).
            console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
            ctx.exit(getattr(exc, "exit_code", EXIT_REFUSED))
        except Exception as exc:
            if (line := aws_failure(exc)) is None:
                raise  # a bug in onnxlift: its traceback, exit 1
            console.print(f"[bold red]error:[/bold red] {escape(line)}", soft_wrap=True)
            ctx.exit(EXIT_REFUSED)
        except KeyboardInterrupt:
            # add and build removed what they half made on the way out (the staging folder,
            # the build's child process); 128 + SIGINT, as shells report it.
            console.print("[bold red]interrupted[/bold red]")
            ctx.exit(EXIT_INTERRUPTED)


SIGNING_KEY_OPTION = click.option(
    "--signing-key",
    envvar="ONNXLIFT_SIGNING_KEY",
    help="kms:<key arn> or file:<pem>: publish signs the manifest, pull refuses what does not "
    "verify (default: the local stack's key when `onnxlift up --sign` runs).",
)
BUCKET_OPTION = click.option(
    "--bucket", envvar="ONNXLIFT_BUCKET", help="Registry bucket (default: the local stack's)."
)


def limit_options(command: Any) -> Any:
    """--time-limit-s and --memory-limit-mb: the bounds of a build's child process."""
    command = click.option(
        "--memory-limit-mb",
        type=click.IntRange(min=256),
        default=DEFAULT_MEMORY_MB,
        envvar="ONNXLIFT_BUILD_MEMORY_LIMIT_MB",
        show_default=True,
        help="Memory the checks and reference run of a build may use (exit 3 beyond it).",
    )(command)
    return click.option(
        "--time-limit-s",
        type=click.FloatRange(min=1),
        default=DEFAULT_SECONDS,
        envvar="ONNXLIFT_BUILD_TIME_LIMIT_S",
        show_default=True,
        help="Wall-clock seconds one model's build may take (exit 3 beyond it).",
    )(command)
