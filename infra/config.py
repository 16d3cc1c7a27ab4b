"""The deployment model: which models to serve and how, read from CDK context.

Plain records only (no constructs): every construct module imports from here, never the
other way round.

`cdk.json` holds the defaults under `context.onnxlift`; any field can be overridden on the
command line with a dotted key, e.g. `npx cdk deploy -c onnxlift.image_source=ecr`.
Per-model sizing (memory, timeout, concurrency) comes from the model specs; the context may
override it per model (`onnxlift.models.<name>.<field>`).

Environments: `-c onnxlift.env=dev|staging|prod` picks one; `onnxlift.environments.<env>`
holds its settings, applied over the top-level ones (apply_environment): deployment fields
(log_retention_days, waf_enabled, ...), model defaults (MODEL_FIELDS: rollout,
provisioned_concurrency, ...) and per-model overrides (`models.<name>.<field>`).
Precedence, highest first: `-c onnxlift.<field>`, the environment's per-model override, the
top-level per-model override, the environment's model default, the model spec.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from onnxlift_serving import contract

CONTEXT_KEY = "onnxlift"

# The AWS limits are the serving contract's (onnxlift_serving.contract); infra adds its own.
LAMBDA_MEMORY_MB = contract.LAMBDA_MEMORY_MB
LAMBDA_MAX_TIMEOUT_S = contract.LAMBDA_TIMEOUT_S[1]
# API Gateway REST integrations time out after 29 s (raisable by quota for regional APIs only).
APIGW_INTEGRATION_TIMEOUT_S = contract.API_GATEWAY_TIMEOUT_S
# The retention periods CloudWatch Logs accepts, with their aws_logs.RetentionDays member.
LOG_RETENTION_DAYS = {
    1: "ONE_DAY", 3: "THREE_DAYS", 5: "FIVE_DAYS", 7: "ONE_WEEK", 14: "TWO_WEEKS",
    30: "ONE_MONTH", 60: "TWO_MONTHS", 90: "THREE_MONTHS", 120: "FOUR_MONTHS",
    150: "FIVE_MONTHS", 180: "SIX_MONTHS", 365: "ONE_YEAR", 400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS", 731: "TWO_YEARS", 1096: "THREE_YEARS", 1827: "FIVE_YEARS",
    2192: "SIX_YEARS", 2557: "SEVEN_YEARS", 2922: "EIGHT_YEARS", 3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}  # fmt: skip
IMAGE_SOURCES = ("asset", "ecr")
MODEL_SOURCES = ("image", "registry")
SIGNING_MODES = ("none", "kms", "kms-optional")
# Every model function is published as a version behind this alias; API Gateway invokes the
# alias and CodeDeploy shifts it from the old version to the new one.
LAMBDA_ALIAS = "live"
# How CodeDeploy shifts the alias (spec `[serving] rollout`, or `onnxlift.models.<name>.rollout`).
ROLLOUTS = ("canary10-5m", "linear10-1m", "all-at-once")
DEFAULT_ROLLOUT = "canary10-5m"
# Without a spec figure, p99 Duration over this share of the timeout rolls a deploy back: at
# the timeout itself the requests are already failing.
DEFAULT_P99_BUDGET_SHARE = 0.8
ENVIRONMENTS = contract.ENVIRONMENTS
DEFAULT_ENVIRONMENT = "dev"
# Lambda architectures (spec `[serving] architecture`, or `onnxlift.models.<name>.architecture`);
# arm64 (Graviton) costs 20% less per GB-second. The image is built for the same platform.
ARCHITECTURES = contract.LAMBDA_ARCHITECTURES
# Application Auto Scaling's LambdaProvisionedConcurrencyUtilization target range.
UTILIZATION_RANGE = (0.1, 0.9)
DEFAULT_TARGET_UTILIZATION = 0.7
# The per-model fields the context may set (per model, or per environment as a default).
MODEL_FIELDS = (
    "memory_mb", "reserved_concurrency", "provisioned_concurrency",
    "autoscaling_target_utilization", "rollout", "architecture",
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_STAGE = re.compile(r"^[A-Za-z0-9_]{1,128}$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_ECR_REPO = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_INSTANCE = re.compile(r"^ml\.[a-z0-9]+\.[a-z0-9]+$")


class ConfigError(ValueError):
    """The deployment configuration (cdk.json context or a model spec) is not deployable."""


@dataclass(frozen=True, kw_only=True)
class ModelDeployment:
    """One model served by its own Lambda function."""

    name: str
    version: str
    memory_mb: int
    timeout_s: int
    reserved_concurrency: int
    rollout: str = DEFAULT_ROLLOUT
    p99_budget_ms: int | None = None
    """p99 Duration (ms) above which a deploy rolls back; None: DEFAULT_P99_BUDGET_SHARE of
    the timeout (see latency_budget_ms)."""
    architecture: str = "x86_64"
    provisioned_concurrency: int = 0
    """Provisioned on the live alias; above 0 Application Auto Scaling keeps utilisation near
    autoscaling_target_utilization, between this and reserved_concurrency."""
    autoscaling_target_utilization: float = DEFAULT_TARGET_UTILIZATION
    env: str | None = None
    """The environment whose names it takes (DeploymentConfig stamps its own)."""
    batching_ignored: bool = False
    """The spec has [serving.batching] but `target = "auto"` sent the model to Lambda, which
    serves one request at a time: nothing batches, and the stack says so (a warning)."""

    def __post_init__(self) -> None:
        self._check_basics()
        self._check_scaling()

    def _check_basics(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"model name {self.name!r} must be 1-40 letters, digits, '-' or '_', "
                "starting with a letter (it becomes an API path segment and an image tag)"
            )
        if not _VERSION.match(self.version):
            raise ConfigError(f"model {self.name}: version {self.version!r} is not a valid tag")
        lo, hi = LAMBDA_MEMORY_MB
        if not lo <= self.memory_mb <= hi:
            raise ConfigError(f"model {self.name}: memory_mb must be within {lo}..{hi}")
        if not 1 <= self.timeout_s <= LAMBDA_MAX_TIMEOUT_S:
            raise ConfigError(
                f"model {self.name}: timeout_s must be within 1..{LAMBDA_MAX_TIMEOUT_S}"
            )
        if self.reserved_concurrency < 1:
            raise ConfigError(f"model {self.name}: reserved_concurrency must be at least 1")
        if self.rollout not in ROLLOUTS:
            raise ConfigError(
                f"model {self.name}: rollout {self.rollout!r} not in {ROLLOUTS} "
                "(spec [serving] rollout, or onnxlift.models.<name>.rollout)"
            )
        if self.p99_budget_ms is not None and not 1 <= self.p99_budget_ms <= self.timeout_s * 1000:
            raise ConfigError(
                f"model {self.name}: p99_budget_ms must be within 1..{self.timeout_s * 1000} "
                "(the function's timeout)"
            )
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"model {self.name}: architecture {self.architecture!r} not in {ARCHITECTURES} "
                "(spec [serving] architecture, or onnxlift.models.<name>.architecture)"
            )
        if self.env is not None and self.env not in ENVIRONMENTS:
            raise ConfigError(f"model {self.name}: env {self.env!r} not in {ENVIRONMENTS}")

    def _check_scaling(self) -> None:
        if not 0 <= self.provisioned_concurrency <= self.reserved_concurrency:
            raise ConfigError(
                f"model {self.name}: provisioned_concurrency must be within "
                f"0..reserved_concurrency ({self.reserved_concurrency})"
            )
        lo, hi = UTILIZATION_RANGE
        if not lo <= self.autoscaling_target_utilization <= hi:
            raise ConfigError(
                f"model {self.name}: autoscaling_target_utilization must be within {lo}..{hi}"
            )

    @property
    def function_name(self) -> str:
        """The Lambda function's name: onnxlift-<env>-<model>."""
        return contract.function_name(self.name, self.env)

    @property
    def latency_budget_ms(self) -> int:
        """The p99 Duration alarm's threshold: the spec's p99_budget_ms, else a share of the
        timeout."""
        if self.p99_budget_ms is not None:
            return self.p99_budget_ms
        return int(self.timeout_s * 1000 * DEFAULT_P99_BUDGET_SHARE)

    @property
    def ort_threads(self) -> int:
        """onnxruntime intra-op threads: the vCPUs Lambda gives this much memory."""
        return contract.threads_for_memory(self.memory_mb)

    @property
    def image_tag(self) -> str:
        """The tag of this model's prebuilt image when `image_source == "ecr"`."""
        return contract.image_tag("lambda", self.name, self.version, self.architecture)


def output_key(model: str) -> str:
    """A model's stack-output id prefix: Model + its name's letters and digits, each run
    capitalized (minilm-fp32 -> ModelMinilmFp32). Names differing only in case or separators
    share one, so DeploymentConfig refuses them together."""
    return "Model" + "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", model))


def endpoint_name(model: str, env: str | None = None) -> str:
    """The SageMaker endpoint that serves `model` (the local stack's has no env)."""
    return contract.endpoint_name(model, env)


@dataclass(frozen=True, kw_only=True)
class SageMakerDeployment:
    """One model served by a SageMaker real-time endpoint (sizing from its spec)."""

    name: str
    version: str
    instance_type: str = "ml.g5.xlarge"
    initial_instances: int = 1
    min_instances: int = 1
    max_instances: int = 4
    # SageMakerVariantInvocationsPerInstance is per minute. A MiniLM-class encoder on one A10G
    # answers a few hundred batch-8 requests a second; 600/min (10/s) leaves room for larger
    # models and batches before p95 latency climbs. Tune from a load test per model.
    target_invocations_per_instance: int = 600
    data_capture: bool = False
    data_capture_sampling_percent: int = 10
    batching: Any = None  # the spec's [serving.batching] (onnxlift.spec.BatchingSpec); None: off
    env: str | None = None  # DeploymentConfig stamps its own

    def __post_init__(self) -> None:
        if not _INSTANCE.match(self.instance_type):
            raise ConfigError(f"model {self.name}: instance_type {self.instance_type!r} is invalid")
        if not 1 <= self.min_instances <= self.initial_instances <= self.max_instances:
            raise ConfigError(
                f"model {self.name}: need 1 <= min_instances <= initial_instances "
                f"<= max_instances, got {self.min_instances}, {self.initial_instances}, "
                f"{self.max_instances}"
            )
        if self.target_invocations_per_instance < 1:
            raise ConfigError(f"model {self.name}: target_invocations_per_instance must be >= 1")
        if not 1 <= self.data_capture_sampling_percent <= 100:
            raise ConfigError(f"model {self.name}: data_capture_sampling_percent in 1..100")

    @property
    def endpoint_name(self) -> str:
        return endpoint_name(self.name, self.env)

    @property
    def image_tag(self) -> str:
        """Tag of the prebuilt container image (one image serves every SageMaker model)."""
        return contract.image_tag("sagemaker", self.name, self.version)


@dataclass(frozen=True, kw_only=True)
class DeploymentConfig:
    models: tuple[ModelDeployment, ...]
    sagemaker_models: tuple[SageMakerDeployment, ...] = ()
    env: str = DEFAULT_ENVIRONMENT
    """dev | staging | prod: the stack (Onnxlift-<env>) and every physical name carry it."""
    registry_bucket_name: str | None = None
    stage_name: str = "v1"
    throttle_rate_limit: float = 50
    throttle_burst_limit: int = 100
    quota_per_day: int | None = None
    image_source: str = "asset"
    ecr_repository_name: str | None = None
    model_source: str = "image"
    log_retention_days: int = 30
    signing: str = "none"
    """kms: an asymmetric KMS key signs manifests; every model role may verify, and the
    functions refuse versions whose manifest.sig does not verify (onnxlift_serving.signing).
    kms-optional: the same key, but versions without a manifest.sig still load (a registry
    published before signing was turned on); a signature that is there must verify."""
    tracing: bool = True
    """Active X-Ray tracing of the model functions (powertools' Tracer). Off: the function
    is not traced and its handler builds no Tracer, so it never imports the X-Ray SDK
    (about 0.2 s of every cold start, `onnxlift bench`)."""
    # Additions beyond the original contract (both default to the safe choice):
    waf_enabled: bool = True
    """Associate a WAFv2 web ACL with the stage (AWS common rules + per-IP rate limit)."""
    manage_apigateway_account: bool = True
    """Set the region-wide API Gateway CloudWatch role that stage logging needs. Turn off
    when the account already has one configured by another stack."""

    def __post_init__(self) -> None:
        if self.env not in ENVIRONMENTS:
            raise ConfigError(f"env {self.env!r} not in {ENVIRONMENTS} (-c onnxlift.env=...)")
        # Every model takes this environment's names (frozen: set through object.__setattr__).
        object.__setattr__(self, "models", tuple(replace(m, env=self.env) for m in self.models))
        object.__setattr__(
            self,
            "sagemaker_models",
            tuple(replace(m, env=self.env) for m in self.sagemaker_models),
        )
        if not self.models and not self.sagemaker_models:
            raise ConfigError("no models to deploy: add a model folder under models/")
        names = [m.name for m in (*self.models, *self.sagemaker_models)]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique, got {names}")
        keys: dict[str, str] = {}
        for name in names:
            other = keys.setdefault(output_key(name), name)
            if other != name:
                raise ConfigError(
                    f"models {other!r} and {name!r} differ only in case or separators: their "
                    f"stack outputs would share the id {output_key(name)}...; rename one"
                )
        if self.registry_bucket_name is not None and not _BUCKET.match(self.registry_bucket_name):
            raise ConfigError(f"registry_bucket_name {self.registry_bucket_name!r} is invalid")
        if not _STAGE.match(self.stage_name):
            raise ConfigError(f"stage_name {self.stage_name!r}: letters, digits and '_' only")
        if self.throttle_rate_limit <= 0 or self.throttle_burst_limit <= 0:
            raise ConfigError("throttle_rate_limit and throttle_burst_limit must be positive")
        if self.quota_per_day is not None and self.quota_per_day <= 0:
            raise ConfigError("quota_per_day must be positive (or null for no quota)")
        if self.image_source not in IMAGE_SOURCES:
            raise ConfigError(f"image_source {self.image_source!r} not in {IMAGE_SOURCES}")
        if self.image_source == "ecr" and not self.ecr_repository_name:
            raise ConfigError('image_source "ecr" needs ecr_repository_name')
        if self.ecr_repository_name is not None and not _ECR_REPO.match(self.ecr_repository_name):
            raise ConfigError(f"ecr_repository_name {self.ecr_repository_name!r} is invalid")
        if self.model_source not in MODEL_SOURCES:
            raise ConfigError(f"model_source {self.model_source!r} not in {MODEL_SOURCES}")
        if self.signing not in SIGNING_MODES:
            raise ConfigError(f"signing {self.signing!r} not in {SIGNING_MODES}")
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ConfigError(
                f"log_retention_days {self.log_retention_days} is not a CloudWatch Logs "
                f"retention period: {sorted(LOG_RETENTION_DAYS)}"
            )

    def name(self, *parts: str) -> str:
        """A physical name in this environment: onnxlift-<env>-<parts> (contract.resource_name)."""
        return contract.resource_name(self.env, *parts)

    @property
    def stack_name(self) -> str:
        return contract.stack_name(self.env)


# Fields of DeploymentConfig that the context may set (everything but `models`).
_FIELDS = {
    f.name: f
    for f in dataclasses.fields(DeploymentConfig)
    if f.name not in ("models", "sagemaker_models")
}


def _coerce(name: str, value: Any) -> Any:
    """Context values given with `-c key=value` arrive as strings; give them their type."""
    if not isinstance(value, str):
        return value
    kind = str(_FIELDS[name].type)  # "float", "int | None", "bool", "str | None", ...
    if value.lower() in ("null", "none", "") and "None" in kind:
        return None
    if kind.startswith("bool"):
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{CONTEXT_KEY}.{name}: expected true or false, got {value!r}")
        return value.lower() == "true"
    try:
        if kind.startswith("float"):
            return float(value)
        if kind.startswith("int"):
            return int(value)
    except ValueError:
        raise ConfigError(f"{CONTEXT_KEY}.{name}: expected a number, got {value!r}") from None
    return value


def read_context(node: Any) -> dict[str, Any]:
    """The `onnxlift` context of a construct node: its environment's settings applied
    (apply_environment), then `-c onnxlift.<field>=...` over both."""
    context = dict(node.try_get_context(CONTEXT_KEY) or {})
    overrides = {}
    for name in _FIELDS:
        override = node.try_get_context(f"{CONTEXT_KEY}.{name}")
        if override is not None:
            overrides[name] = override
    if "env" in overrides:
        context["env"] = overrides["env"]
    return apply_environment(context) | overrides


def _environment_settings(context: Mapping[str, Any], env: str) -> Mapping[str, Any]:
    environments = context.get("environments") or {}
    if not isinstance(environments, Mapping) or set(environments) - set(ENVIRONMENTS):
        raise ConfigError(f"{CONTEXT_KEY}.environments: an object keyed by {ENVIRONMENTS}")
    # The API Gateway account setting is one per region: one environment sets it.
    managing = [
        name
        for name in ENVIRONMENTS
        if _coerce(
            "manage_apigateway_account",
            (environments.get(name) or {}).get(
                "manage_apigateway_account", context.get("manage_apigateway_account", True)
            ),
        )
    ]
    if environments and len(managing) > 1:
        raise ConfigError(
            f"manage_apigateway_account is on for {managing}: the region has one API Gateway "
            "CloudWatch role setting, so exactly one environment may manage it "
            f"({CONTEXT_KEY}.environments.<env>.manage_apigateway_account)"
        )
    if environments and context.get("registry_bucket_name") is not None:
        raise ConfigError(
            f"{CONTEXT_KEY}.registry_bucket_name is set for every environment, but bucket "
            "names are global: set it per environment "
            f"({CONTEXT_KEY}.environments.<env>.registry_bucket_name)"
        )
    settings = environments.get(env) or {}
    unknown = (set(settings) - set(_FIELDS) - set(MODEL_FIELDS) - {"models"}) | (
        {"env"} & set(settings)
    )
    if unknown:
        raise ConfigError(f"{CONTEXT_KEY}.environments.{env}: unknown keys {sorted(unknown)}")
    return settings


def apply_environment(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context with `environments.<env>` merged over it (env: `env`, default dev).

    Deployment fields replace the top-level ones; MODEL_FIELDS become `model_defaults`; the
    environment's `models.<name>` entries are merged over the top-level ones field by field.
    """
    env = str(context.get("env") or DEFAULT_ENVIRONMENT)
    if env not in ENVIRONMENTS:
        raise ConfigError(f"{CONTEXT_KEY}.env {env!r} not in {ENVIRONMENTS}")
    settings = _environment_settings(context, env)
    merged = {k: v for k, v in context.items() if k != "environments"} | {"env": env}
    merged |= {k: v for k, v in settings.items() if k in _FIELDS}
    defaults = dict(context.get("model_defaults") or {})
    merged["model_defaults"] = defaults | {k: v for k, v in settings.items() if k in MODEL_FIELDS}
    models = {name: dict(entry or {}) for name, entry in _versions(context).items()}
    env_models = settings.get("models") or {}
    if not isinstance(env_models, Mapping):
        raise ConfigError(f"{CONTEXT_KEY}.environments.{env}.models: an object keyed by model")
    for name, entry in env_models.items():
        models[name] = models.get(name, {}) | dict(entry or {})
    merged["models"] = models
    return merged


def config_from_context(
    context: Mapping[str, Any],
    models: list[ModelDeployment],
    sagemaker_models: Sequence[SageMakerDeployment] = (),
) -> DeploymentConfig:
    """Build the config from the `onnxlift` context dict; unknown keys are an error."""
    if "environments" in context:  # not through read_context
        context = apply_environment(context)
    unknown = set(context) - set(_FIELDS) - {"models", "model_defaults"}
    if unknown:
        raise ConfigError(
            f"unknown {CONTEXT_KEY} context keys {sorted(unknown)}; known: {sorted(_FIELDS)}"
        )
    values = {name: _coerce(name, context[name]) for name in _FIELDS if name in context}
    return DeploymentConfig(
        models=tuple(models), sagemaker_models=tuple(sagemaker_models), **values
    )


class _Serving(Protocol):
    target: str
    memory_mb: int
    timeout_s: int
    reserved_concurrency: int
    rollout: str
    p99_budget_ms: int | None
    architecture: str


class _Spec(Protocol):
    name: str
    serving: _Serving


def _versions(context: Mapping[str, Any]) -> Mapping[str, Any]:
    versions = context.get("models") or {}
    if not isinstance(versions, Mapping):
        raise ConfigError(f"{CONTEXT_KEY}.models must be an object keyed by model name")
    return versions


def deployed_version(spec: _Spec, context: Mapping[str, Any]) -> str:
    """`onnxlift.models.<name>.version` from the context, "1" by default."""
    return str((_versions(context).get(spec.name) or {}).get("version", "1"))


def resolved_target(spec: _Spec, context: Mapping[str, Any], project_root: Path | None) -> str:
    """lambda or sagemaker. `auto` was decided at build time: the pulled version's manifest
    says where it goes (`onnxlift pull`); without it, Lambda."""
    if spec.serving.target != "auto":
        return spec.serving.target
    if project_root is not None:
        manifest = (
            project_root
            / ".onnxlift"
            / "artifacts"
            / spec.name
            / deployed_version(spec, context)
            / "manifest.json"
        )
        if manifest.is_file():
            return str(json.loads(manifest.read_text()).get("target", "lambda"))
    return "lambda"


def models_from_specs(
    specs: Iterable[_Spec], context: Mapping[str, Any], project_root: Path | None = None
) -> list[ModelDeployment]:
    """Lambda-served models from the specs, versions from `onnxlift.models.<name>.version`."""
    if "environments" in context:  # not through read_context
        context = apply_environment(context)
    models = []
    defaults = context.get("model_defaults") or {}
    for spec in specs:
        if resolved_target(spec, context, project_root) != "lambda":
            continue
        entry = _versions(context).get(spec.name) or {}

        def pick(field: str, spec_value: Any, entry: Mapping[str, Any] = entry) -> Any:
            # Per model (the environment's over the top level's), the environment, the spec.
            return entry.get(field, defaults.get(field, spec_value))

        try:
            model = ModelDeployment(
                name=spec.name,
                version=str(entry.get("version", "1")),
                memory_mb=int(pick("memory_mb", spec.serving.memory_mb)),
                timeout_s=int(spec.serving.timeout_s),
                reserved_concurrency=int(
                    pick("reserved_concurrency", spec.serving.reserved_concurrency)
                ),
                rollout=str(pick("rollout", spec.serving.rollout)),
                p99_budget_ms=spec.serving.p99_budget_ms,
                architecture=str(pick("architecture", spec.serving.architecture)),
                provisioned_concurrency=int(pick("provisioned_concurrency", 0)),
                autoscaling_target_utilization=float(
                    pick("autoscaling_target_utilization", DEFAULT_TARGET_UTILIZATION)
                ),
                # target lambda with the table is refused by the spec; auto may land here
                batching_ignored=getattr(spec.serving, "batching", None) is not None,
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"model {spec.name}: {e}") from None
        models.append(model)
    return models


def sagemaker_from_specs(
    specs: Iterable[Any], context: Mapping[str, Any], project_root: Path | None = None
) -> list[SageMakerDeployment]:
    """SageMaker-served models (target sagemaker, or auto decided so) with their sizing."""
    return [
        SageMakerDeployment(
            name=spec.name,
            version=deployed_version(spec, context),
            instance_type=spec.serving.instance_type,
            initial_instances=spec.serving.initial_instances,
            min_instances=spec.serving.min_instances,
            max_instances=spec.serving.max_instances,
            target_invocations_per_instance=spec.serving.target_invocations_per_instance,
            data_capture=spec.serving.data_capture,
            batching=getattr(spec.serving, "batching", None),
        )
        for spec in specs
        if resolved_target(spec, context, project_root) == "sagemaker"
    ]
