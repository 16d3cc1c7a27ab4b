"""moto server on loopback: the embedded AWS of the local stack."""

from __future__ import annotations

from pathlib import Path

from onnxlift.local.processes import Child, base_env, start_child, wait_http

LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "onnxlift-local",
    "AWS_SECRET_ACCESS_KEY": "onnxlift-local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def start_moto(*, port: int, log: Path, host: str = "127.0.0.1", timeout: float = 30.0) -> Child:
    child = start_child(
        "moto", ["-m", "moto.server", "-H", host, "-p", str(port)], log=log, env=base_env()
    )
    wait_http(child, f"http://{host}:{port}/moto-api/", timeout=timeout)
    return child


def aws_env(endpoint: str) -> dict[str, str]:
    """What a boto3 client (or the cdk CLI) needs to talk to the embedded AWS."""
    return {"AWS_ENDPOINT_URL": endpoint, **LOCAL_CREDENTIALS}
