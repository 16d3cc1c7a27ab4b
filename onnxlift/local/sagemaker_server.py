"""A local SageMaker: the real container code on loopback, and the runtime API in front of it.

For each SageMaker-target model: its version is packed into model.tar.gz and unpacked into
a folder as SageMaker does with ModelDataUrl, then `functions/sagemaker/serve` (gunicorn and
the container app, CPU provider) is started on a free port, bound to 127.0.0.1.

In front, one server answers the SageMaker runtime's InvokeEndpoint as AWS does, so boto3's
`sagemaker-runtime` client works unchanged with AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME:

    POST /endpoints/{EndpointName}/invocations
      -> the container's POST /invocations (Content-Type, Accept and
         X-Amzn-SageMaker-Custom-Attributes forwarded both ways)
      2xx              -> 200, the container's body, x-Amzn-Invoked-Production-Variant
      container 4xx/5xx-> 424 ModelError {Message, OriginalStatusCode, OriginalMessage, ...}
      unknown endpoint -> 400 ValidationError "Endpoint ... not found."
      body over 6 MB   -> 400 ValidationError
      container down   -> 503 ServiceUnavailable; no answer in 60 s -> 424 ModelError
Errors carry `x-amzn-ErrorType`, which is what botocore reads the error code from.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from onnxlift_serving.artifact import load_artifact
from onnxlift_serving.contract import (
    JSON_CONTENT_TYPE,
    SAGEMAKER_INVOCATION_TIMEOUT_S,
    SAGEMAKER_PAYLOAD_BYTES,
    SAGEMAKER_VARIANT,
    Env,
    batching_environment,
    endpoint_name,
)
from onnxlift_serving.errors import ArtifactError

from onnxlift.local.http import (
    BackendResponse,
    BackendUnreachable,
    KeepAliveClient,
    LoopbackHandler,
    LoopbackServer,
    Reply,
    json_reply,
)
from onnxlift.local.processes import Child, base_env, free_port, start_child, wait_http
from onnxlift.sagemaker_artifact import pack_model, unpack_model

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SERVE = Path("functions/sagemaker/serve")
RUNTIME_LAYER = Path("layers/runtime")
INVOKE_PATH = re.compile(r"^/endpoints/(?P<endpoint>[^/]+)/invocations$")
ACCOUNT = "123456789012"
REGION = "us-east-1"
FORWARDED = ("Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes")


@dataclass(frozen=True)
class ContainerTarget:
    """Where one model's container listens: the gateway may forward V2 paths straight here."""

    name: str
    endpoint_name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class LocalSageMaker:
    """Handle on the running containers and the runtime front."""

    server: LoopbackServer
    containers: dict[str, ContainerTarget]
    children: list[Child] = field(default_factory=list)

    @property
    def url(self) -> str:
        """AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME for boto3."""
        return self.server.url

    @property
    def endpoints(self) -> dict[str, str]:
        """Endpoint name -> model name."""
        return {t.endpoint_name: name for name, t in self.containers.items()}

    def info(self) -> dict[str, Any]:
        """What `.onnxlift/local.json` lists under "sagemaker"."""
        return {
            "runtime_url": self.url,
            "env": {"AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.url},
            "endpoints": {
                t.endpoint_name: {
                    "model": name,
                    "invoke_url": f"{self.url}/endpoints/{t.endpoint_name}/invocations",
                    "container_url": t.url,
                }
                for name, t in self.containers.items()
            },
        }

    def stop(self) -> None:
        self.server.stop()
        for child in reversed(self.children):
            child.stop()
        self.children.clear()


def _error(status: int, error_type: str, body: dict[str, Any]) -> Reply:
    return json_reply(status, body, {"x-amzn-ErrorType": error_type})


_NOT_FOUND = _error(404, "UnknownOperationException", {"message": "not found"})


def model_error(endpoint: str, status: int | None, message: str) -> Reply:
    """SageMaker's answer when the container answers with an error (or not at all)."""
    log_stream = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{endpoint}"
    if status is None:
        text = (
            "Your invocation timed out while waiting for a response from container "
            f"{SAGEMAKER_VARIANT}."
        )
        return _error(424, "ModelError", {"Message": text, "LogStreamArn": log_stream})
    kind = "client" if status < 500 else "server"
    text = (
        f'Received {kind} error ({status}) from primary with message "{message}". '
        f"See {log_stream} in account {ACCOUNT} for more information."
    )
    return _error(
        424,
        "ModelError",
        {
            "ErrorCode": f"{kind.upper()}_ERROR_FROM_MODEL",
            "Message": text,
            "OriginalStatusCode": status,
            "OriginalMessage": message,
            "LogStreamArn": log_stream,
        },
    )


class Endpoints:
    """InvokeEndpoint's semantics: find the endpoint, forward to its container, and answer
    what SageMaker answers for the container's reply. Endpoint and bare model names resolve."""

    def __init__(self, containers: Mapping[str, ContainerTarget]) -> None:
        self.by_name = {t.endpoint_name: t for t in containers.values()}
        self.by_name.update({t.name: t for t in containers.values()})
        self._client = KeepAliveClient(timeout_s=SAGEMAKER_INVOCATION_TIMEOUT_S)

    def invoke(self, name: str, body: bytes, headers: dict[str, str]) -> Reply:
        target = self.by_name.get(name)
        if target is None:
            return _error(
                400,
                "ValidationError",
                {"message": f"Endpoint {name} of account {ACCOUNT} not found."},
            )
        try:
            response = self._client.request(
                target.host, target.port, "POST", "/invocations", body, headers
            )
        except TimeoutError:
            return model_error(target.endpoint_name, None, "")
        except BackendUnreachable:
            return _error(
                503,
                "ServiceUnavailable",
                {"message": f"Endpoint {target.endpoint_name} is not available. Try again."},
            )
        return _invocation_reply(target, response)


def _invocation_reply(target: ContainerTarget, response: BackendResponse) -> Reply:
    """A 2xx from the container is InvokeEndpoint's 200; anything else is a ModelError."""
    if not 200 <= response.status < 300:
        message = response.body.decode(errors="replace")
        return model_error(target.endpoint_name, response.status, message)
    headers = dict(response.headers.items())
    out = {
        "Content-Type": headers.get("Content-Type", JSON_CONTENT_TYPE),
        "x-Amzn-Invoked-Production-Variant": SAGEMAKER_VARIANT,
    }
    attributes = {k.lower(): v for k, v in headers.items()}.get(
        "x-amzn-sagemaker-custom-attributes"
    )
    if attributes:
        out["X-Amzn-SageMaker-Custom-Attributes"] = attributes
    return 200, out, response.body


class _RuntimeHandler(LoopbackHandler):
    """The runtime API over HTTP; make_front subclasses it with the endpoints it serves."""

    endpoints: ClassVar[Endpoints]
    server_version = "onnxlift-sagemaker-runtime"
    own_headers = LoopbackHandler.own_headers | {"date", "server"}

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_reply(status, {**headers, "x-amzn-RequestId": str(uuid.uuid4())}, body)

    def do_POST(self) -> None:
        body = self.read_body(SAGEMAKER_PAYLOAD_BYTES)
        if body is None:
            size = f"of {self.body_length()} bytes " if self.body_length() else ""
            self._send(
                *_error(
                    400,
                    "ValidationError",
                    {"message": f"Request payload {size}is over the 6 MB limit."},
                )
            )
            return
        match = INVOKE_PATH.match(urlsplit(self.path).path)
        if not match:
            self._send(*_NOT_FOUND)
            return
        headers = {k: v for k in FORWARDED if (v := self.headers.get(k)) is not None}
        self._send(*self.endpoints.invoke(unquote(match["endpoint"]), body, headers))

    def do_GET(self) -> None:
        self._send(*_NOT_FOUND)


def make_front(
    containers: Mapping[str, ContainerTarget], *, host: str, port: int
) -> LoopbackServer:
    """The runtime API server, not started yet."""
    handler = type("RuntimeHandler", (_RuntimeHandler,), {"endpoints": Endpoints(containers)})
    return LoopbackServer(handler, host=host, port=port, name="sagemaker-runtime")


def prepare_model_dir(folder: Path, work: Path) -> Path:
    """Pack the version into model.tar.gz and unpack it as SageMaker does into /opt/ml/model.

    A warm start reuses the unpacked copy when it is the same version, byte for byte
    (sha256-checked), instead of packing 90 MB again.
    """
    target = work / "opt-ml-model"
    try:
        current, wanted = load_artifact(target).manifest, load_artifact(folder).manifest
        if (current["sha256"], current.get("version")) == (wanted["sha256"], wanted.get("version")):
            return target
    except ArtifactError:
        pass  # nothing there yet, or a stale copy: unpack afresh
    archive = work / "model.tar.gz"
    pack_model(folder, archive)
    shutil.rmtree(target, ignore_errors=True)
    unpack_model(archive, target)
    archive.unlink()
    return target


def container_environment(spec: Any) -> dict[str, str]:
    """What a model's spec adds to its container's environment (the endpoint's too, see
    infra/sagemaker_endpoint.py): [serving.batching], when the spec has one."""
    batching = spec.serving.batching
    if batching is None:
        return {}
    return batching_environment(
        batching.max_batch_size, batching.max_queue_delay_ms, batching.max_queue_size
    )


def start_container(
    name: str,
    model_dir: Path,
    *,
    host: str,
    port: int,
    log: Path,
    threads: int = 1,
    workers: int = 1,
    root: Path = PROJECT_ROOT,
    env: Mapping[str, str] | None = None,
) -> Child:
    """`serve` with the CPU provider, bound to loopback; returns when the process started."""
    python_path = os.pathsep.join(
        p for p in (str(root / RUNTIME_LAYER), os.environ.get("PYTHONPATH", "")) if p
    )
    child_env = (
        base_env()
        | {
            Env.SM_MODEL_DIR: str(model_dir),
            "PYTHONPATH": python_path,
            Env.ORT_PROVIDERS: "CPUExecutionProvider",
            Env.ORT_INTRA_OP_THREADS: str(threads),
            Env.SAGEMAKER_GRACEFUL_TIMEOUT: "5",
        }
        | dict(env or {})
    )
    return start_child(
        f"sagemaker {name}",
        [str(root / SERVE), "--bind", f"{host}:{port}", "--workers", str(workers)],
        log=log,
        env=child_env,
    )


def start_sagemaker_models(
    models: Mapping[str, Path],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_dir: Path,
    work_dir: Path,
    threads: int = 1,
    root: Path = PROJECT_ROOT,
    timeout: float = 120.0,
    envs: Mapping[str, Mapping[str, str]] | None = None,
) -> LocalSageMaker:
    """Start one container per model (name -> published artifact folder) and the front.

    `port` 0 picks a free one. `envs`: more environment for a model's container, as its
    endpoint gets (container_environment: the spec's dynamic batching). Everything is stopped
    again if anything fails to start.
    """
    children: list[Child] = []
    containers: dict[str, ContainerTarget] = {}
    try:
        for name, folder in models.items():
            model_dir = prepare_model_dir(folder, work_dir / name)
            container_port = free_port(host)
            child = start_container(
                name,
                model_dir,
                host=host,
                port=container_port,
                log=log_dir / f"sagemaker-{name}.log",
                threads=threads,
                root=root,
                env=(envs or {}).get(name),
            )
            children.append(child)
            containers[name] = ContainerTarget(name, endpoint_name(name), host, container_port)
        for name, child in zip(containers, children, strict=True):
            wait_http(child, f"{containers[name].url}/ping", timeout=timeout)
        server = make_front(containers, host=host, port=port)
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise
    server.start()
    return LocalSageMaker(server=server, containers=containers, children=children)
