"""One served model: its versions, its default alias, loading each version once, V2 operations.

Both the Lambda handler and the SageMaker container wrap a ModelService; neither holds any
protocol or loading logic of its own.

Which version answers:
- `/versions/{v}/...` names it. The baked-in version is always at hand; any other published
  version is fetched from the registry on first use (sha256-checked) and kept, least recently
  used first out, at most `max_loaded_versions` at a time.
- Otherwise the version the alias (default `prod`) names in the registry answers, re-read at
  most every `alias_ttl_s`, so `onnxlift promote` / `rollback` move traffic without a deploy.
  With no registry (or no alias yet, or the registry unreachable) the baked-in version answers.
- Only a canonical version string (contract.is_canonical_version) is ever looked up: any other
  is a 404 before a file or the registry is touched. The default version is never evicted by
  requests for other versions.
- A failed load is remembered per version and retried at most every RELOAD_INTERVAL_S; one
  broken version never makes another answer 503. Error bodies say what failed, never where:
  paths and hashes go to the log.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxlift_serving import layout, protocol
from onnxlift_serving.aliases import DEFAULT_ALIAS, read_alias
from onnxlift_serving.artifact import Artifact, fetch_from_registry, load_artifact
from onnxlift_serving.batching import Batcher, BatchingConfig, batchable, has_per_batch_scales
from onnxlift_serving.contract import (
    API_BODY_BYTES,
    DEFAULT_MAX_LOADED_VERSIONS,
    DYNAMIC_BATCHING,
    LAMBDA_RESPONSE_BYTES,
    Env,
    is_canonical_version,
    memory_limit_mb,
    signature_required,
)
from onnxlift_serving.cpu import cpu_facts
from onnxlift_serving.errors import (
    ArtifactError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    VersionNotPublished,
)
from onnxlift_serving.pipelines import Pipeline, build_pipeline
from onnxlift_serving.session import (
    create_session,
    default_threads,
    integer_kernel_setting,
    optimization_for,
)
from onnxlift_serving.signing import SignaturePolicy, open_key

# Lambda's synchronous invocation payload limit; API Gateway itself allows 10 MB.
DEFAULT_MAX_PAYLOAD_BYTES = API_BODY_BYTES  # what a function behind the API can be sent
RELOAD_INTERVAL_S = 5.0
MAX_REMEMBERED_FAILURES = 32  # per-version load errors kept (only canonical versions get here)
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ServiceConfig:
    name: str
    version: str = ""  # the baked-in (or pinned) version; "" = whatever the alias names
    alias: str = DEFAULT_ALIAS
    source: str = "image"  # image: `version` baked in at model_dir; registry: fetched
    model_dir: Path | None = None
    bucket: str | None = None
    cache_dir: Path = Path("/tmp/onnxlift-models")
    threads: int = 1
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    providers: tuple[str, ...] = ()
    alias_ttl_s: float = 30.0
    max_loaded_versions: int = DEFAULT_MAX_LOADED_VERSIONS
    memory_mb: int | None = None  # what the process may use; None: onnxruntime is not capped
    max_response_bytes: int = LAMBDA_RESPONSE_BYTES
    response_base64: bool = True  # a binary answer rides base64-encoded (Lambda's proxy result)
    signature_key: str = ""  # kms:<arn> | file:<path>; "" = signatures are not checked
    signature_required: bool = True  # with a key: a version without manifest.sig is refused
    # SageMaker container only (wsgi.config_from_env): concurrent requests of a version run
    # as one session.run (batching.py). None: each request runs on its own, as in Lambda.
    batching: BatchingConfig | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        """Read once per sandbox; every name is contract.Env's, every value from `env`."""
        env = dict(os.environ if env is None else env)
        task_root = env.get(Env.LAMBDA_TASK_ROOT, ".")
        return cls(
            name=env[Env.MODEL_NAME],
            version=env.get(Env.MODEL_VERSION, ""),
            alias=env.get(Env.MODEL_ALIAS, DEFAULT_ALIAS),
            source=env.get(Env.MODEL_SOURCE, "image"),
            model_dir=Path(env.get(Env.MODEL_DIR, f"{task_root}/model")),
            bucket=env.get(Env.MODEL_BUCKET) or None,
            cache_dir=Path(env.get(Env.MODEL_CACHE_DIR, "/tmp/onnxlift-models")),
            threads=default_threads(env),
            max_payload_bytes=int(env.get(Env.MAX_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_BYTES)),
            providers=tuple(p for p in env.get(Env.ORT_PROVIDERS, "").split(",") if p),
            alias_ttl_s=float(env.get(Env.ALIAS_TTL_S, 30)),
            max_loaded_versions=int(env.get(Env.MAX_LOADED_VERSIONS, DEFAULT_MAX_LOADED_VERSIONS)),
            memory_mb=memory_limit_mb(env),
            signature_key=env.get(Env.MODEL_SIGNATURE_KEY, ""),
            signature_required=signature_required(env),
        )


@dataclass(frozen=True)
class LoadedVersion:
    artifact: Artifact
    pipeline: Pipeline
    batcher: Batcher | None = None  # with batching on and a signature whose rows stack

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's outputs for `inputs` alone, merged with other requests' rows when
        this version batches."""
        if self.batcher is not None:
            return self.batcher.submit(inputs)
        return self.pipeline.run(inputs)


class ModelService:
    """Loads each version once; a failed load is retried at most every few seconds."""

    def __init__(self, config: ServiceConfig, *, s3_client: Any = None) -> None:
        self.config = config
        self._s3 = s3_client
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._alias_version: str | None = None
        self._alias_checked = float("-inf")
        self._failures: OrderedDict[str, tuple[str, float]] = OrderedDict()  # version -> why, when
        self._init_error: str | None = None
        self._init_problem: str | None = None
        self._baked: str | None = None
        self._signature: SignaturePolicy | None = None
        self.load_seconds: float | None = None
        self.load_phases: dict[str, float] = {}  # of the latest load (see _load)
        started = time.perf_counter()
        try:
            self._version(self.default_version())
            self.load_seconds = time.perf_counter() - started
        except Exception as exc:  # the service stays up and answers 503 until a load works
            self._init_error = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
            self._init_problem = str(getattr(exc, "message", "loading failed (see the logs)"))

    # -- where versions come from -------------------------------------------------------
    @property
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3  # lazily: a baked-in model with no registry never needs it

            self._s3 = boto3.client("s3")
        return self._s3

    @property
    def signature(self) -> SignaturePolicy | None:
        """The signature check every loaded version passes, if the deployment names a key."""
        if self._signature is None and self.config.signature_key:
            self._signature = SignaturePolicy(
                open_key(self.config.signature_key), self.config.signature_required
            )
        return self._signature

    def default_version(self) -> str:
        """The alias's version (cached for alias_ttl_s), else the baked-in one."""
        now = time.monotonic()
        if self.config.bucket and now - self._alias_checked >= self.config.alias_ttl_s:
            self._alias_checked = now
            try:
                doc, _ = read_alias(
                    self.s3, self.config.bucket, self.config.name, self.config.alias
                )
                self._alias_version = str(doc["version"]) if doc else None
            except Exception as exc:  # registry unreachable: keep answering with what we have
                log.warning("alias %s unreadable: %s", self.config.alias, exc)
        version = self._alias_version or self.baked_version
        if not version and self.config.source == "image" and self.config.model_dir is not None:
            log.error("no manifest at %s", self.config.model_dir / layout.MANIFEST_FILE)
            raise ServiceUnavailable(
                f"model '{self.config.name}' has no version: no manifest baked in and no alias "
                "to follow"
            )
        if not version:
            raise ServiceUnavailable(
                f"model '{self.config.name}' has no version: alias '{self.config.alias}' is "
                "not set and no version is baked in"
            )
        return version

    @property
    def baked_version(self) -> str:
        """MODEL_VERSION, else (an image with its model baked in) the version its manifest names.

        Read once, found or not: the image never changes under a running sandbox, and a
        client's odd version must not cost a file read per request."""
        if self.config.version or self.config.source != "image" or self.config.model_dir is None:
            return self.config.version
        if self._baked is not None:
            return self._baked
        try:
            manifest = json.loads((self.config.model_dir / layout.MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            manifest = None
        self._baked = str(manifest.get("version") or "") if isinstance(manifest, dict) else ""
        return self._baked

    def _locate(self, version: str) -> tuple[Path, bool]:
        """Where `version` lies, and whether its signature (if any is demanded) was checked
        on the way (a registry fetch verifies the manifest as it came from S3)."""
        baked = self.config.source == "image" and version == self.baked_version
        if baked and self.config.model_dir is not None:
            return self.config.model_dir, False
        if not self.config.bucket:
            raise NotFound(
                f"version '{version}' of model '{self.config.name}' is not served here; "
                f"this endpoint serves version {self.baked_version}"
            )
        try:
            fetched = fetch_from_registry(
                bucket=self.config.bucket,
                name=self.config.name,
                version=version,
                cache_dir=self.config.cache_dir,
                s3_client=self.s3,
                signature=self.signature,
            )
            return fetched, True
        except VersionNotPublished:
            raise NotFound(
                f"version '{version}' of model '{self.config.name}' is not published"
            ) from None

    def _load(self, version: str) -> LoadedVersion:
        started = time.perf_counter()
        folder, verified = self._locate(version)
        artifact = load_artifact(folder, signature=None if verified else self.signature)
        checked = time.perf_counter()
        if artifact.name != self.config.name or artifact.version != version:
            raise ArtifactError(
                f"artifact is {artifact.name} v{artifact.version}, expected "
                f"{self.config.name} v{version}"
            )
        session = create_session(
            artifact.model_path,
            threads=self.config.threads,
            providers=list(self.config.providers),
            optimization=optimization_for(artifact.manifest, list(self.config.providers)),
            memory_mb=self.config.memory_mb,
            # the cap is set once per process: leave room for every version it may hold
            resident_versions=self.config.max_loaded_versions,
        )
        opened = time.perf_counter()
        pipeline = build_pipeline(artifact, session)
        # Where a load's time goes (the cold start's share after imports): fetch or locate and
        # verify (sha256 of every file), the onnxruntime session, the pre-processing (tokenizer).
        self.load_phases = {
            "verify_s": checked - started,
            "session_s": opened - checked,
            "pipeline_s": time.perf_counter() - opened,
        }
        return LoadedVersion(artifact, pipeline, self._batcher(artifact, pipeline))

    def _batcher(self, artifact: Artifact, pipeline: Pipeline) -> Batcher | None:
        """A batcher for the version's pipeline, if batching is on and its rows stack; merged
        runs never exceed the model's own max_batch (what its memory was sized for)."""
        config = self.config.batching
        if config is None:
            return None
        if not batchable(pipeline.inputs, pipeline.outputs):
            log.warning("model %s: no free batch dimension; batching is off", self.config.name)
            return None
        dynamic = (artifact.manifest.get("quantization") or {}).get("mode") == "dynamic"
        if dynamic or has_per_batch_scales(artifact.model_path):
            # DynamicQuantizeLinear takes one activation scale over the whole merged batch:
            # each caller's answer would move with (and reveal a little of) the others' inputs.
            log.warning("model %s: per-batch activation scales; batching is off", self.config.name)
            return None
        limit = int(getattr(pipeline, "max_batch", config.max_batch_size))
        if config.max_batch_size > limit:
            config = BatchingConfig(
                max_batch_size=limit,
                max_queue_delay_ms=config.max_queue_delay_ms,
                max_queue_size=config.queue_limit,
            )
        return Batcher(pipeline.run, config)

    def close_batching(self, *, refuse_queued: bool = False) -> None:
        """The process is stopping: each loaded version's batcher refuses new requests (503)
        and runs what waits now, or with `refuse_queued` answers it 503 (Batcher.close)."""
        for loaded in list(self._loaded.values()):
            if loaded.batcher is not None:
                loaded.batcher.close(refuse_queued=refuse_queued)

    def _check_version(self, version: str) -> None:
        """404 for a version string that can name nothing, before any file or S3 call."""
        if version in self._loaded or is_canonical_version(version):
            return
        if version and version in (self._alias_version, self.baked_version):
            return  # a non-canonical version the deployment itself names
        raise NotFound(f"version '{version[:64]}' of model '{self.config.name}' does not exist")

    def _failed_recently(self, version: str) -> None:
        failure = self._failures.get(version)
        if failure is not None and time.monotonic() - failure[1] < RELOAD_INTERVAL_S:
            raise ServiceUnavailable(
                f"model '{self.config.name}' version {version} is not loaded: its last load "
                f"failed less than {RELOAD_INTERVAL_S:.0f}s ago (details in the logs)",
                retry_after_s=int(RELOAD_INTERVAL_S),
            )

    def _keep(self, version: str, loaded: LoadedVersion) -> None:
        """Cache `version`; evict least recently used versions, never the default one."""
        self._loaded[version] = loaded
        protected = {version, self._alias_version or self.baked_version}
        for old in list(self._loaded):
            if len(self._loaded) <= self.config.max_loaded_versions:
                break
            if old not in protected:
                del self._loaded[old]

    def _version(self, version: str) -> LoadedVersion:
        loaded = self._loaded.get(version)
        if loaded is not None:
            # try, not contextlib.suppress: no context manager object on every request
            try:  # noqa: SIM105
                self._loaded.move_to_end(version)
            except KeyError:  # evicted meanwhile by another thread: still good for this one
                pass
            return loaded
        self._check_version(version)
        with self._lock:
            if version in self._loaded:
                return self._loaded[version]
            self._failed_recently(version)
            try:
                loaded = self._load(version)
            except NotFound:
                raise
            except Exception as exc:
                self._remember_failure(version, exc)
                raise ServiceUnavailable(
                    f"model '{self.config.name}' version {version} is not loaded: loading it "
                    "failed (details in the logs)",
                    retry_after_s=int(RELOAD_INTERVAL_S),
                ) from exc
            self._failures.pop(version, None)
            self._keep(version, loaded)
            return loaded

    def _remember_failure(self, version: str, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"
        log.error("model %s version %s failed to load: %s", self.config.name, version, why)
        self._failures[version] = (why, time.monotonic())
        self._failures.move_to_end(version)
        while len(self._failures) > MAX_REMEMBERED_FAILURES:
            self._failures.popitem(last=False)

    # -- state ----------------------------------------------------------------------------
    @property
    def load_error(self) -> str | None:
        """Why the default version is not loaded (for logs: it may name paths and hashes)."""
        version = self._alias_version or self.baked_version
        if version and version in self._loaded:
            return None
        failure = self._failures.get(version) if version else None
        return failure[0] if failure is not None else self._init_error

    @property
    def load_problem(self) -> str | None:
        """Why the default version is not loaded, fit for an answer: no paths, no hashes."""
        version = self._alias_version or self.baked_version
        if version and version in self._loaded:
            return None
        if version and version in self._failures:
            return f"version {version} failed to load (details in the logs)"
        return self._init_problem

    @property
    def ready(self) -> bool:
        try:
            return self.default_version() in self._loaded
        except ServiceUnavailable:
            return False

    def check_route(self, name: str) -> None:
        if name != self.config.name:
            raise NotFound(f"model '{name[:64]}' is not served here")

    def resolve(self, name: str, version: str | None = None) -> LoadedVersion:
        """The loaded version that answers a request for `name` (and `version`, if given)."""
        self.check_route(name)
        return self._version(version or self.default_version())

    # -- V2 operations --------------------------------------------------------------------
    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.check_route(name)
        try:
            self.resolve(name, version)
        except ServiceUnavailable:
            return False
        return True

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        loaded = self.resolve(name, version)
        artifact, pipeline, manifest = loaded.artifact, loaded.pipeline, loaded.artifact.manifest
        session = getattr(pipeline, "session", None)
        return {
            "name": artifact.name,
            "versions": [artifact.version],
            "platform": "onnxruntime_onnx",
            "inputs": [spec.to_json() for spec in pipeline.inputs.values()],
            "outputs": [spec.to_json() for spec in pipeline.outputs.values()],
            "parameters": {
                "task": manifest.get("task"),
                "alias": self.config.alias,
                "sha256": manifest.get("sha256"),
                "quantization": manifest.get("quantization"),
                "parity": manifest.get("parity"),
                "max_batch": manifest.get("max_batch"),
                "providers": session.get_providers() if session is not None else [],
                "intra_op_num_threads": self.config.threads,
                "session_config": integer_kernel_setting(),
                "serving_cpu": cpu_facts(),
                **self._batching_metadata(loaded),
            },
        }

    @staticmethod
    def _batching_metadata(loaded: LoadedVersion) -> dict[str, Any]:
        """The version's dynamic batching settings and what it did in this process so far."""
        if loaded.batcher is None:
            return {}
        config, stats = loaded.batcher.config, loaded.batcher.stats
        return {
            DYNAMIC_BATCHING: {
                "max_batch_size": config.max_batch_size,
                "max_queue_delay_ms": config.max_queue_delay_ms,
                "max_queue_size": config.queue_limit,
                "runs": stats.runs,
                "merged_runs": stats.merged_runs,
                "merged_requests": stats.merged_requests,
                "retried_batches": stats.retried_batches,
                "rejected": stats.rejected,
                "queued": loaded.batcher.queued,  # waiting now, behind the running batch
            }
        }

    def infer(
        self, body: str | bytes | None, name: str, version: str | None = None
    ) -> dict[str, Any]:
        self.check_route(name)
        doc = protocol.decode_body(body, max_bytes=self.config.max_payload_bytes)
        return self.infer_doc(doc, name, version)

    def _check_answer_size(self, outputs: dict[str, Any], binary: dict[str, bool] | bool) -> None:
        """413 before encoding an answer that cannot be sent: its encoding would be built in
        memory (a large output's JSON is ~10 bytes a value) only for the platform to refuse it."""
        floor = protocol.encoded_size_floor(outputs, binary, base64=self.config.response_base64)
        if floor > self.config.max_response_bytes:
            raise PayloadTooLarge(
                f"the answer would take at least {floor} bytes, over the "
                f"{self.config.max_response_bytes}-byte response limit; send fewer rows or "
                "ask for fewer outputs"
            )

    def infer_doc(
        self,
        doc: dict[str, Any],
        name: str,
        version: str | None = None,
        *,
        binary: dict[str, bool] | bool = False,
    ) -> dict[str, Any]:
        """Inference on a parsed V2 request (binary.py turns binary bodies into one); resolve
        answers 404 for another model's name. `binary`: which outputs will be sent raw."""
        loaded = self.resolve(name, version)
        pipeline = loaded.pipeline
        request = protocol.decode_infer_request(doc, pipeline.inputs, pipeline.outputs)
        outputs = loaded.run(request.inputs)
        if request.requested_outputs is not None:
            outputs = {k: outputs[k] for k in request.requested_outputs}
        self._check_answer_size(outputs, binary)
        return protocol.encode_infer_response(
            model_name=loaded.artifact.name,
            model_version=loaded.artifact.version,
            request_id=request.id,
            outputs=outputs,
        )
