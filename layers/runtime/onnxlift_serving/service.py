"""One served model: where it comes from, loading it once, and the V2 operations on it.

Both the Lambda handler and the SageMaker container wrap a ModelService; neither holds
any protocol or loading logic of its own.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxlift_serving import protocol
from onnxlift_serving.artifact import Artifact, fetch_from_registry, load_artifact
from onnxlift_serving.errors import ArtifactError, NotFound, ServiceUnavailable
from onnxlift_serving.pipelines import Pipeline, build_pipeline
from onnxlift_serving.session import create_session, default_threads

# Lambda's synchronous invocation payload limit; API Gateway itself allows 10 MB.
DEFAULT_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
RELOAD_INTERVAL_S = 5.0


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    name: str
    version: str
    source: str = (
        "image"  # image: baked into the image at model_dir; registry: fetched to cache_dir
    )
    model_dir: Path | None = None
    bucket: str | None = None
    cache_dir: Path = Path("/tmp/onnxlift-models")
    threads: int = 1
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    providers: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        env = dict(os.environ if env is None else env)
        task_root = env.get("LAMBDA_TASK_ROOT", ".")
        return cls(
            name=env["MODEL_NAME"],
            version=env.get("MODEL_VERSION", ""),
            source=env.get("MODEL_SOURCE", "image"),
            model_dir=Path(env.get("MODEL_DIR", f"{task_root}/model")),
            bucket=env.get("MODEL_BUCKET"),
            cache_dir=Path(env.get("MODEL_CACHE_DIR", "/tmp/onnxlift-models")),
            threads=default_threads(),
            max_payload_bytes=int(env.get("MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES)),
            providers=tuple(p for p in env.get("ORT_PROVIDERS", "").split(",") if p),
        )


class ModelService:
    """Loads its model once; a failed load is retried at most every few seconds, never per call."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._artifact: Artifact | None = None
        self._pipeline: Pipeline | None = None
        self._load_error: str | None = None
        self._last_attempt = 0.0
        self.load_seconds: float | None = None
        self._load()

    def _locate(self) -> Path:
        if self.config.source == "registry":
            if not self.config.bucket or not self.config.version:
                raise ArtifactError("MODEL_SOURCE=registry needs MODEL_BUCKET and MODEL_VERSION")
            return fetch_from_registry(
                bucket=self.config.bucket,
                name=self.config.name,
                version=self.config.version,
                cache_dir=self.config.cache_dir,
            )
        if self.config.model_dir is None:
            raise ArtifactError("MODEL_DIR is not set")
        return self.config.model_dir

    def _load(self) -> None:
        self._last_attempt = time.monotonic()
        started = time.perf_counter()
        try:
            artifact = load_artifact(self._locate())
            if artifact.name != self.config.name:
                raise ArtifactError(f"artifact is '{artifact.name}', expected '{self.config.name}'")
            if self.config.version and artifact.version != self.config.version:
                raise ArtifactError(
                    f"artifact is version {artifact.version}, expected {self.config.version}"
                )
            session = create_session(
                artifact.model_path,
                threads=self.config.threads,
                providers=list(self.config.providers),
            )
            self._pipeline = build_pipeline(artifact, session)
            self._artifact = artifact
            self._load_error = None
            self.load_seconds = time.perf_counter() - started
        except Exception as exc:  # any failure leaves the service up and answering 503
            self._load_error = f"{type(exc).__name__}: {exc}"

    @property
    def load_error(self) -> str | None:
        return self._load_error

    @property
    def ready(self) -> bool:
        return self._pipeline is not None

    def _loaded(self) -> tuple[Artifact, Pipeline]:
        if self._pipeline is None:
            with self._lock:
                if (
                    self._pipeline is None
                    and time.monotonic() - self._last_attempt > RELOAD_INTERVAL_S
                ):
                    self._load()
        if self._pipeline is None or self._artifact is None:
            raise ServiceUnavailable(
                f"model '{self.config.name}' is not loaded: {self._load_error}",
                retry_after_s=int(RELOAD_INTERVAL_S),
            )
        return self._artifact, self._pipeline

    def check_route(self, name: str, version: str | None = None) -> None:
        """404 for a model or version this endpoint does not serve."""
        if name != self.config.name:
            raise NotFound(f"model '{name}' is not served here")
        if version is not None:
            served = self._artifact.version if self._artifact else self.config.version
            if version != served:
                raise NotFound(
                    f"version '{version}' of model '{name}' is not served here; "
                    f"this endpoint serves version {served}"
                )

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.check_route(name, version)
        return self.ready

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        self.check_route(name, version)
        artifact, pipeline = self._loaded()
        manifest = artifact.manifest
        session = getattr(pipeline, "session", None)
        return {
            "name": artifact.name,
            "versions": [artifact.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_json() for spec in pipeline.inputs.values()],
            "outputs": [spec.to_json() for spec in pipeline.outputs.values()],
            "parameters": {
                "task": manifest.get("task"),
                "sha256": manifest.get("sha256"),
                "quantization": manifest.get("quantization"),
                "parity": manifest.get("parity"),
                "max_batch": manifest.get("max_batch"),
                "providers": session.get_providers() if session is not None else [],
                "intra_op_num_threads": self.config.threads,
            },
        }

    def infer(
        self, body: str | bytes | None, name: str, version: str | None = None
    ) -> dict[str, Any]:
        self.check_route(name, version)
        doc = protocol.decode_body(body, max_bytes=self.config.max_payload_bytes)
        artifact, pipeline = self._loaded()
        request = protocol.decode_infer_request(doc, pipeline.inputs, pipeline.outputs)
        outputs = pipeline.run(request.inputs)
        if request.requested_outputs is not None:
            outputs = {k: outputs[k] for k in request.requested_outputs}
        return protocol.encode_infer_response(
            model_name=artifact.name,
            model_version=artifact.version,
            request_id=request.id,
            outputs=outputs,
        )
