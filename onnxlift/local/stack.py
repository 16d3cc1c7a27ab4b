"""`onnxlift up`: the whole service on one machine.

moto server (the embedded AWS) -> registry bucket -> build and publish every model that
changed -> the local Lambda service: a pool of sandbox processes per model's function, its
first sandbox started (warm) here and more on demand up to the function's reserved
concurrency, each fetching its version from the registry as a deployed function configured
with MODEL_SOURCE=registry does -> the API gateway on 127.0.0.1. `.onnxlift/local.json` is
written once everything answers and removed on the way down; the registry is kept (see
snapshot.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxlift_serving.aliases import DEFAULT_ALIAS
from onnxlift_serving.contract import (
    API_GATEWAY_TIMEOUT_S,
    Env,
    endpoint_name,
    infer_path,
    sandbox_environment,
    serving_environment,
)

from onnxlift import paths
from onnxlift.builder.bounded import BuildLimits, build_bounded
from onnxlift.errors import OnnxliftError
from onnxlift.local import snapshot
from onnxlift.local.gateway import FunctionTarget, Gateway, GatewayConfig
from onnxlift.local.lambda_runtime import bound_heap
from onnxlift.local.lambda_service import FunctionConfig, LambdaService
from onnxlift.local.moto_server import aws_env, start_moto
from onnxlift.local.processes import Child, port_in_use, stack_alive
from onnxlift.local.sagemaker_server import (
    LocalSageMaker,
    container_environment,
    start_sagemaker_models,
)
from onnxlift.registry import Registry
from onnxlift.spec import ModelSpec, discover_specs

LOCAL_BUCKET = "onnxlift-registry-local"
LEFTOVER_WAIT_S = 5.0  # a killed stack's children need WATCH_INTERVAL_S to notice
LOCAL_ALIAS_TTL_S = 1.0  # promote/rollback show up within a second locally (30 s on AWS)
HANDLER = Path("functions/inference/handler.py")
PROXY_HANDLER = Path("functions/sagemaker/proxy/proxy_handler.py")
Report = Callable[[str], None]


@dataclass
class StackOptions:
    root: Path
    port: int = 8080
    aws_port: int = 4566
    host: str = "127.0.0.1"
    api_key: str | None = None
    models: list[str] | None = None  # None: every model in models/
    threads: int | None = None  # None: what each function's memory buys on Lambda
    sign: bool = False  # sign every version with the state folder's key; functions verify
    build_limits: BuildLimits = field(default_factory=BuildLimits)  # each model's build


@dataclass
class LocalStack:
    options: StackOptions
    report: Report = print
    children: list[Child] = field(default_factory=list)
    gateway: Gateway | None = None
    registry: Registry | None = None
    sagemaker: LocalSageMaker | None = None
    lambdas: LambdaService = field(default_factory=LambdaService)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return paths.state_dir(self.options.root)

    @property
    def info_path(self) -> Path:
        return self.state / "local.json"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def signing_key(self) -> Path | None:
        """The local stack's private key (`up --sign`): a file, because moto's KMS keys live in
        memory only and a version signed before a restart must still verify after it."""
        return self.state / "signing" / "key.pem" if self.options.sign else None

    def _signing_registry_args(self) -> dict[str, Any]:
        from onnxlift_serving.signing import (
            SignaturePolicy,
            create_file_key,
            load_file_key,
            write_public_key,
        )

        key = self.signing_key
        if key is None:
            return {}
        if not key.is_file():  # made once, kept across restarts like the API key
            create_file_key(key, key.with_suffix(".pub.pem"))
            self.report(f"created the local signing key {key}")
        elif not key.with_suffix(".pub.pem").is_file():  # a start killed between the two
            write_public_key(key, key.with_suffix(".pub.pem"))
        signer = load_file_key(key)
        return {"signer": signer, "signature": SignaturePolicy(signer)}

    @property
    def aws_endpoint(self) -> str:
        return f"http://{self.options.host}:{self.options.aws_port}"

    def _api_key(self) -> str:
        if self.options.api_key:
            return self.options.api_key
        key_file = self.state / "api_key"
        if not key_file.is_file():  # stable across restarts, so scripts keep working
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(secrets.token_urlsafe(24))
            key_file.chmod(0o600)
        return key_file.read_text().strip()

    def _specs(self) -> list[ModelSpec]:
        specs = discover_specs(paths.models_dir(self.options.root))
        if self.options.models:
            unknown = set(self.options.models) - {s.name for s in specs}
            if unknown:
                raise OnnxliftError(f"no model named {', '.join(sorted(unknown))} in models/")
            specs = [s for s in specs if s.name in self.options.models]
        if not specs:
            raise OnnxliftError("no models to serve")
        return specs

    def start(self) -> dict[str, Any]:
        """Bring everything up in order; the info `.onnxlift/local.json` now holds."""
        started = time.perf_counter()
        bound_heap()  # the gateway forwards request bodies of up to 10 MB on its threads
        self._clear_leftovers()
        self._check_ports()
        aws = self._start_moto()
        self._open_registry(aws)
        functions, served = self._start_models(aws)
        self._wait_for_functions()
        api_key = self._api_key()
        self._start_gateway(api_key, functions)
        self.info = self._describe(api_key, served, time.perf_counter() - started)
        written = self.info_path.with_name(f".local.json.{os.getpid()}")  # whole or not at all
        written.write_text(json.dumps(self.info, indent=2))
        written.chmod(0o600)
        written.replace(self.info_path)
        self.info["curl"] = self._curl_example(api_key, next(iter(functions)))
        return self.info

    def _clear_leftovers(self) -> None:
        """A local.json whose `onnxlift up` still runs: refuse. One left by a stack that was
        killed (SIGKILL, OOM) goes: its children follow it (parent_watch), so wait a moment for
        its ports; its registry is on disk and restored as always."""
        try:
            old = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return
        old = old if isinstance(old, dict) else {}
        pid = old.get("pid")
        if pid != os.getpid() and stack_alive(pid):
            raise OnnxliftError(
                f"onnxlift up is already running with state {self.state} (pid {pid}, "
                f"{old.get('url')}): stop it first, or set ONNXLIFT_STATE_DIR for a second one"
            )
        self.report(f"the last onnxlift up (pid {pid}) did not stop cleanly; starting afresh")
        ports = [
            int(url.rsplit(":", 1)[1])
            for url in (old.get("url"), old.get("aws_endpoint_url"))
            if isinstance(url, str) and url.rsplit(":", 1)[-1].isdigit()
        ]
        deadline = time.monotonic() + LEFTOVER_WAIT_S
        while any(port_in_use(p, self.options.host) for p in ports):
            if time.monotonic() > deadline:
                break  # someone else's now: _check_ports says which
            time.sleep(0.1)
        self.info_path.unlink(missing_ok=True)

    def _check_ports(self) -> None:
        opts = self.options
        for port in (opts.port, opts.aws_port):
            if port_in_use(port, opts.host):
                raise OnnxliftError(
                    f"port {port} on {opts.host} is in use (choose another with --port/--aws-port)"
                )

    def _start_moto(self) -> dict[str, str]:
        """Start the embedded AWS; the environment that points clients at it."""
        self.report(f"starting moto server (embedded AWS) on {self.aws_endpoint}")
        opts = self.options
        self.children.append(
            start_moto(port=opts.aws_port, host=opts.host, log=self.logs / "moto.log")
        )
        return aws_env(self.aws_endpoint)

    def _open_registry(self, aws: dict[str, str]) -> None:
        """The registry bucket in moto, with what the last run kept restored into it."""
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.aws_endpoint,
            region_name=aws["AWS_DEFAULT_REGION"],
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
        )
        self.registry = Registry(
            LOCAL_BUCKET,
            s3,
            mirror=self.state / "registry" / LOCAL_BUCKET,
            **self._signing_registry_args(),
        )
        self.registry.ensure_bucket()
        restored = snapshot.restore(s3, LOCAL_BUCKET, self.state / "registry" / LOCAL_BUCKET)
        if restored:
            self.report(f"restored {restored} registry objects from {self.state / 'registry'}")

    def _start_models(
        self, aws: dict[str, str]
    ) -> tuple[dict[str, FunctionTarget], dict[str, str]]:
        """Build, publish and start every model: (the API's functions, model -> version).

        A Lambda model's sandbox starts as soon as it is built, so its init phase runs while
        the next model builds; SageMaker models start together once all are built."""
        assert self.registry is not None
        functions: dict[str, FunctionTarget] = {}
        served: dict[str, str] = {}
        on_sagemaker: dict[str, Path] = {}
        concurrency: dict[str, int] = {}  # the proxy functions' reserved concurrency
        for spec in self._specs():
            version, target = self._build_and_publish(spec)
            served[spec.name] = version
            if target == "sagemaker":  # the container serves a published copy, as on AWS
                concurrency[spec.name] = spec.serving.reserved_concurrency
                on_sagemaker[spec.name] = self.registry.download(
                    spec.name, version, self.state / "sagemaker-cache"
                )
            else:
                functions[spec.name] = self._start_lambda_model(spec, version, aws)
        if on_sagemaker:
            functions |= self._start_sagemaker_models(on_sagemaker, aws, concurrency)
        return functions, served

    def _start_lambda_model(
        self, spec: ModelSpec, version: str, aws: dict[str, str]
    ) -> FunctionTarget:
        """The inference function, fetching its versions from the registry as deployed."""
        key = self.signing_key  # the functions verify with the public half only
        model_env = serving_environment(
            name=spec.name,
            version=version,
            source="registry",
            alias=DEFAULT_ALIAS,
            alias_ttl_s=LOCAL_ALIAS_TTL_S,
            bucket=LOCAL_BUCKET,
            cache_dir=str(self.state / "lambda-tmp" / spec.name),
            threads=self.options.threads or None,
            signature_key=None if key is None else f"file:{key.with_suffix('.pub.pem')}",
        )
        self.report(f"starting function {spec.name} (version {version})")
        return self._start_function(
            spec.name,
            HANDLER,
            aws | model_env,
            spec.serving.memory_mb,
            spec.serving.timeout_s,
            spec.serving.reserved_concurrency,
        )

    def _start_sagemaker_models(
        self, models: dict[str, Path], aws: dict[str, str], concurrency: dict[str, int]
    ) -> dict[str, FunctionTarget]:
        """The containers and the runtime front, then the API's thin proxy function for each
        model, as deployed."""
        self.report(f"starting the local SageMaker runtime for {', '.join(models)}")
        self.sagemaker = start_sagemaker_models(
            models,
            host=self.options.host,
            port=0,
            log_dir=self.logs,
            work_dir=self.state / "sagemaker",
            threads=self.options.threads or 1,
            root=self.options.root,
            # each container as its endpoint runs it: the spec's [serving.batching]
            envs={s.name: container_environment(s) for s in self._specs() if s.name in models},
        )
        functions: dict[str, FunctionTarget] = {}
        for name in models:
            proxy_env = aws | {
                Env.MODEL_NAME: name,
                Env.ENDPOINT_NAME: endpoint_name(name),
                "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": self.sagemaker.url,
            }
            functions[name] = self._start_function(
                name, PROXY_HANDLER, proxy_env, 256, API_GATEWAY_TIMEOUT_S, concurrency[name]
            )
        return functions

    def _start_gateway(self, api_key: str, functions: dict[str, FunctionTarget]) -> None:
        """The API in front of every function; the first one answers the health routes."""
        config = GatewayConfig(
            api_key=api_key, functions=functions, default_function=next(iter(functions))
        )
        self.gateway = Gateway(config, host=self.options.host, port=self.options.port)
        self.gateway.start()

    def _describe(self, api_key: str, served: dict[str, str], seconds: float) -> dict[str, Any]:
        """What `.onnxlift/local.json` tells scripts: where everything is, and the key."""
        assert self.gateway is not None
        url = self.gateway.url
        return {
            "url": url,
            "api_key": api_key,
            "aws_endpoint_url": self.aws_endpoint,
            "registry_bucket": LOCAL_BUCKET,
            **({"signing_key": f"file:{self.signing_key}"} if self.signing_key else {}),
            "models": {
                name: {"version": v, "infer_url": f"{url}{infer_path(name)}"}
                for name, v in served.items()
            },
            "logs": str(self.logs),
            "pid": os.getpid(),
            **({"sagemaker": self.sagemaker.info()} if self.sagemaker else {}),
            "functions": {
                name: {k: pool[k] for k in ("reserved_concurrency", "sandboxes")}
                for name, pool in self.lambdas.describe().items()
            },
            "started_in_seconds": round(seconds, 2),
        }

    def _curl_example(self, api_key: str, model: str) -> str:
        assert self.gateway is not None
        return (
            f"curl -s {self.gateway.url}{infer_path(model)} -H 'x-api-key: {api_key}' "
            "-H 'content-type: application/json' "
            '-d \'{"inputs":[{"name":"text","shape":[2],"datatype":"BYTES",'
            '"data":["first sentence","second one"]}]}\''
        )

    def _start_function(
        self,
        name: str,
        handler: Path,
        env: dict[str, str],
        memory_mb: int,
        timeout_s: int,
        concurrency: int,
    ) -> FunctionTarget:
        """The function's pool of sandboxes, configured through their environment; its first
        sandbox starts now, so inits run side by side while other models build."""
        pool = self.lambdas.add(
            FunctionConfig(
                name=name,
                handler=self.options.root / handler,
                env=env | sandbox_environment(name, memory_mb),
                memory_mb=memory_mb,
                timeout_s=timeout_s,
                concurrency=concurrency,
                log=self.logs / f"{name}.log",
                host=self.options.host,
            )
        )
        return FunctionTarget(name, pool=pool)

    def _wait_for_functions(self) -> None:
        """The first sandbox of each function has run its init phase once this returns."""
        self.lambdas.wait_ready()

    def _build_and_publish(self, spec: ModelSpec) -> tuple[str, str]:
        """(the version that serves, its target: lambda or sagemaker)."""
        assert self.registry is not None
        # Bounded in a child as `onnxlift build` is: a runaway model cannot hang the stack.
        result = build_bounded(
            spec.folder,
            root=self.options.root,
            limits=self.options.build_limits,
            report=self.report,
        )
        target = str(result.manifest.get("target", "lambda"))
        fingerprint = result.manifest["build_fingerprint"]
        existing = self.registry.find_by_fingerprint(spec.name, fingerprint)
        if existing is not None and not self.registry.is_servable(spec.name, existing):
            existing = None  # published unsigned before `--sign`: a signed copy replaces it
        alias = self.registry.alias(spec.name, DEFAULT_ALIAS)
        if existing is None:  # a new build: publish it and send traffic to it
            version = self.registry.publish(result.folder, name=spec.name)
            self.registry.promote(spec.name, version, DEFAULT_ALIAS)
            self.report(
                f"{spec.name}: published version {version} to s3://{self.registry.bucket}, "
                f"promoted to {DEFAULT_ALIAS}"
            )
            return version, target
        if alias is None:
            self.registry.promote(spec.name, existing, DEFAULT_ALIAS)
            alias = {"version": existing}
        # Unchanged build: the alias stays where the user last promoted or rolled it back.
        self.report(
            f"{spec.name}: version {existing} matches this build; not publishing again; "
            f"{DEFAULT_ALIAS} -> version {alias['version']}"
        )
        return str(alias["version"]), target

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()
            self.gateway = None
        self.lambdas.stop()
        if self.sagemaker is not None:
            self.sagemaker.stop()
            self.sagemaker = None
        if self.registry is not None:
            try:
                saved = snapshot.save(
                    self.registry.s3, LOCAL_BUCKET, self.state / "registry" / LOCAL_BUCKET
                )
                if saved:
                    self.report(f"kept {saved} new registry objects in {self.state / 'registry'}")
            except Exception as exc:  # moto already gone: say so, keep stopping
                self.report(f"could not save the registry: {exc}")
            self.registry = None
        for child in reversed(self.children):
            child.stop()
        self.children.clear()
        if self.info:  # ours: not another stack's, when this one was refused at the start
            self.info_path.unlink(missing_ok=True)
            self.info = {}


def run_until_signalled(stack: LocalStack, on_ready: Callable[[dict[str, Any]], None]) -> None:
    """Start, then block until SIGINT or SIGTERM; stop everything on the way out."""
    stop, started = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        if not started.is_set():  # still starting (a build can take minutes): stop it now
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        info = stack.start()
        started.set()
        on_ready(info)
        stop.wait()
    finally:
        stack.report("stopping")
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
