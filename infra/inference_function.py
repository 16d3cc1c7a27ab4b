"""One container-image Lambda function per model."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from aws_cdk import Annotations, Duration, RemovalPolicy
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct
from onnxlift_serving import contract

from infra import nag
from infra.config import (
    APIGW_INTEGRATION_TIMEOUT_S,
    LAMBDA_ALIAS,
    LOG_RETENTION_DAYS,
    DeploymentConfig,
    ModelDeployment,
)
from infra.images import image_build
from infra.registry_bucket import REASON_MODEL_PREFIX, ModelRegistry

ARCHITECTURES = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}
REASON_NO_TRACING = (
    "Tracing is turned off for this deployment (onnxlift.tracing=false): the operator chose "
    "the shorter cold start (no X-Ray SDK import) over per-request traces; logs and EMF "
    "metrics still cover every request."
)
REASON_XRAY = (
    "Active X-Ray tracing: xray:PutTraceSegments and xray:PutTelemetryRecords do not "
    "support resource-level permissions, so their statement must use Resource '*'. "
    "A test asserts those two are the only actions on '*'."
)


class InferenceFunction(Construct):
    """The Lambda that serves `model` over the V2 protocol (proxy integration)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: ModelDeployment,
        config: DeploymentConfig,
        registry: ModelRegistry,
        project_root: Path,
        signature_key: str | None = None,
        signature_required: bool | None = None,
    ) -> None:
        super().__init__(scope, id)
        self.model = model
        self.signature_key = signature_key  # kms:<arn>: loads verify; the stack grants Verify
        self.signature_required = signature_required  # False: unsigned versions load too
        self.tracing = config.tracing
        # The steps run in this order: each reads what the ones before it set on self.
        self.log_group = self._log_group(config)
        self.role = self._role(model, registry)
        self.function = self._function(model, config, registry, project_root)
        # Every change to the function publishes a new version; API Gateway invokes the alias,
        # which CodeDeploy (infra/rollout.py) moves from the old version to this one.
        self.version = self.function.current_version
        self.alias = lambda_.Alias(
            self,
            "Alias",
            alias_name=LAMBDA_ALIAS,
            version=self.version,
            description=f"onnxlift: the version of model {model.name} the API serves",
            provisioned_concurrent_executions=model.provisioned_concurrency or None,
        )
        self.scaling = self._provisioned_scaling(model)
        self._warn_if_slower_than_api_gateway(model)
        self._warn_if_batching_ignored(model)

    def _provisioned_scaling(
        self, model: ModelDeployment
    ) -> lambda_.IScalableFunctionAttribute | None:
        """With provisioned concurrency: Application Auto Scaling keeps the alias's
        utilisation near the target, between the provisioned floor and reserved concurrency."""
        if not model.provisioned_concurrency:
            return None
        scaling = self.alias.add_auto_scaling(
            min_capacity=model.provisioned_concurrency,
            max_capacity=model.reserved_concurrency,
        )
        scaling.scale_on_utilization(utilization_target=model.autoscaling_target_utilization)
        return scaling

    @property
    def api_target(self) -> lambda_.IFunction:
        """What API Gateway invokes: the alias, never the unqualified function."""
        return self.alias

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        """cdk-nag acknowledgements (and cfn-lint ignores) for this function and its role,
        each with its reason."""
        policy = self.role.node.find_child("DefaultPolicy")
        if self.tracing:
            nag.ack(policy, f"{nag.PACK}-IAM5[Resource::*]", REASON_XRAY, skip=skip)
        else:
            nag.ack(self.function, f"{nag.SERVERLESS}-LambdaTracing", REASON_NO_TRACING, skip=skip)
            nag.cfn_lint_ignore(self.function, "WS1000", REASON_NO_TRACING)
        model_objects = nag.resource_finding(self, self.model_objects_arn)
        nag.ack(policy, f"{nag.PACK}-IAM5[{model_objects}]", REASON_MODEL_PREFIX, skip=skip)
        nag.ack(self.function, f"{nag.SERVERLESS}-LambdaDLQ", nag.REASON_API_DLQ, skip=skip)
        # W3005 only: its log group is /aws/lambda/<function name>, which WS1004 looks for
        nag.cfn_lint_ignore(self.function, "W3005", nag.REASON_ROLE_DEPENDS_ON)
        nag.checkov_skip_function(self.function, self.log_group, dlq=nag.REASON_API_DLQ)

    def _log_group(self, config: DeploymentConfig) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            "Logs",
            log_group_name=f"/aws/lambda/{self.model.function_name}",
            retention=logs.RetentionDays[LOG_RETENTION_DAYS[config.log_retention_days]],
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _role(self, model: ModelDeployment, registry: ModelRegistry) -> iam.Role:
        """Also sets `model_objects_arn`, which acknowledge_findings names."""
        # Our own role: no AWS managed policies (AWSLambdaBasicExecutionRole would allow
        # logs:* on every log group); only what this function uses.
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"onnxlift inference function for model {model.name}",
        )
        self.log_group.grant_write(role)
        registry.grant_model_read(role, model.name)
        self.model_objects_arn = registry.model_objects_arn(model.name)
        return role

    def _function(
        self,
        model: ModelDeployment,
        config: DeploymentConfig,
        registry: ModelRegistry,
        project_root: Path,
    ) -> lambda_.DockerImageFunction:
        return lambda_.DockerImageFunction(
            self,
            "Function",
            description=f"onnxlift: serves model {model.name} v{model.version} (V2 protocol)",
            function_name=model.function_name,
            code=self._image_code(model, config, project_root),
            architecture=ARCHITECTURES[model.architecture],
            memory_size=model.memory_mb,
            timeout=Duration.seconds(model.timeout_s),
            reserved_concurrent_executions=model.reserved_concurrency,
            tracing=lambda_.Tracing.ACTIVE if config.tracing else lambda_.Tracing.DISABLED,
            role=self.role,
            log_group=self.log_group,
            environment=contract.serving_environment(
                name=model.name,
                version=model.version,
                source=config.model_source,
                bucket=registry.bucket.bucket_name,
                threads=model.ort_threads,
                signature_key=self.signature_key,
                signature_required=self.signature_required,
            )
            | {
                "POWERTOOLS_SERVICE_NAME": model.function_name,
                "POWERTOOLS_METRICS_NAMESPACE": contract.POWERTOOLS_NAMESPACE,
                str(contract.Env.TRACE_DISABLED): "false" if config.tracing else "true",
                "LOG_LEVEL": "INFO",
            },
        )

    def _warn_if_slower_than_api_gateway(self, model: ModelDeployment) -> None:
        if model.timeout_s > APIGW_INTEGRATION_TIMEOUT_S:
            Annotations.of(self).add_warning_v2(
                "onnxlift:TimeoutAboveApiGateway",
                f"model {model.name}: timeout_s={model.timeout_s} exceeds the "
                f"{APIGW_INTEGRATION_TIMEOUT_S} s API Gateway integration timeout; callers get "
                "504 after 29 s while the function may keep running.",
            )

    def _warn_if_batching_ignored(self, model: ModelDeployment) -> None:
        if model.batching_ignored:
            Annotations.of(self).add_warning_v2(
                "onnxlift:BatchingIgnoredOnLambda",
                f"model {model.name}: its spec's [serving.batching] is ignored: target "
                '"auto" sent it to Lambda, where a sandbox serves one request at a time. Set '
                'serving.target = "sagemaker" to batch, or remove the table.',
            )

    def _image_code(
        self, model: ModelDeployment, config: DeploymentConfig, project_root: Path
    ) -> lambda_.DockerImageCode:
        # `onnxlift image` builds the same image (for the same architecture).
        build = image_build("lambda", model.name, model.version, model.architecture)
        if config.image_source == "ecr":
            assert config.ecr_repository_name is not None  # DeploymentConfig checks it
            repository = ecr.Repository.from_repository_name(
                self, "Repository", config.ecr_repository_name
            )
            return lambda_.DockerImageCode.from_ecr(repository, tag_or_digest=build.tag)

        assert build.artifacts is not None  # a Lambda image bakes its version in
        artifacts = project_root / build.artifacts
        if config.model_source == "image" and not artifacts.is_dir():
            Annotations.of(self).add_warning_v2(
                "onnxlift:MissingArtifacts",
                f"model {model.name}: {artifacts.relative_to(project_root)} does not exist; "
                f"run `onnxlift pull {model.name} {model.version}` before `cdk deploy` "
                "or the image build will fail.",
            )
        # Everything is excluded, then the image's inputs are re-included (images.py says
        # why IgnoreMode.DOCKER): the CDK prunes .venv, node_modules, .git whole.
        return lambda_.DockerImageCode.from_image_asset(str(project_root), **build.asset_options())
