"""A SageMaker real-time endpoint for one large model, and the thin function the API calls it by.

Model (network-isolated, model.tar.gz from the registry) -> EndpointConfig (one production
variant; data capture only when switched on; a KMS volume key except on instance types
whose storage is local NVMe, where SageMaker refuses one) -> Endpoint -> Application Auto
Scaling on invocations per instance.

Routing from API Gateway: a thin proxy function (functions/sagemaker/proxy), not an AWS
service integration to runtime.sagemaker. SageMaker answers throttling with HTTP 400, the
same status as a validation error, and only the `x-amzn-ErrorType` response header tells
them apart; an integration response selects on the status code and maps the body, never
that header, so it cannot turn throttling into 429. The direct integration would also need
a mapping template per route to carry GET metadata/ready through a POST-only
/invocations. The function reads the error code with boto3 (and retries throttling once),
and it runs unchanged in the local stack. Its cost: a 256 MB function with no model and a
~0.3 s cold start, small next to a GPU model. README.md, "Large models", has the error map.

This construct exposes `.model` (with `.name`) and `.function` like InferenceFunction, so
InferenceApi routes /v2/models/<name>/... to it without knowing it is a proxy.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import ArnFormat, Duration, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct
from onnxlift_serving import contract

from infra import nag
from infra.config import APIGW_INTEGRATION_TIMEOUT_S, LOG_RETENTION_DAYS, SageMakerDeployment
from infra.images import image_build
from infra.inference_function import REASON_XRAY
from infra.registry_bucket import REASON_MODEL_PREFIX, ModelRegistry

PROXY_CODE = "functions/sagemaker/proxy"
ARCHIVE = "model.tar.gz"  # onnxlift/sagemaker_artifact.py writes it next to the version
DATA_CAPTURE_PREFIX = "datacapture"
# NVIDIA driver 580 / CUDA 13.0: what onnxruntime-gpu 1.31 in the image needs.
GPU_AMI = "al2023-ami-sagemaker-inference-gpu-4-1"
# Families whose instance storage is local NVMe: SageMaker refuses KmsKeyId for them (the
# NVMe volume is encrypted by the hardware, with a key that never leaves the instance).
NVME_FAMILIES = frozenset(
    {"g4dn", "g5", "g6", "g6e", "gr6", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en", "trn1", "trn1n"}
)
_NVME_SUFFIX = re.compile(r"^[a-z]+\d+[a-z]*d[n]?$")  # m5d, c5d, r5d, m6id, c6id, r6id ...
REASON_PROXY_CONCURRENCY = (
    "No reserved concurrency on the proxy: it holds no model and only waits on the endpoint, "
    "so its concurrency follows the endpoint's capacity, which autoscales and is not known "
    "here. A fixed reservation either throttles requests the endpoint could serve or carves "
    "unused concurrency out of the account; the API stage throttle and usage plan bound the "
    "load, and SageMaker throttling already comes back as 429."
)
SCALING_SERVICE_LINKED_ROLE = (
    "aws-service-role/sagemaker.application-autoscaling.amazonaws.com/"
    "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
)

REASON_EXECUTION_ROLE_STAR = (
    "Two actions without resource-level permissions, so Resource '*': "
    "ecr:GetAuthorizationToken (the registry login SageMaker does before pulling the image; "
    "the pull itself is limited to the image's repository) and cloudwatch:PutMetricData, "
    "limited by condition to the /aws/sagemaker/* namespaces."
)
REASON_ENDPOINT_LOGS = (
    "Log streams of this endpoint's own log group /aws/sagemaker/Endpoints/<endpoint>; "
    "SageMaker names one stream per variant and instance at run time."
)
REASON_DATA_CAPTURE = (
    "Data capture writes objects under this model's own datacapture/<name>/ prefix of the "
    "registry bucket; SageMaker names them by date and hour. PutObject only: no read."
)


def batching_environment(model: SageMakerDeployment) -> dict[str, str]:
    """The container's dynamic batching settings: the spec's [serving.batching] (a
    spec.BatchingSpec, or None: off) where the deployment carries it as `batching`."""
    batching = getattr(model, "batching", None)
    if batching is None:
        return {}
    return contract.batching_environment(
        batching.max_batch_size, batching.max_queue_delay_ms, batching.max_queue_size
    )


def instance_family(instance_type: str) -> str:
    return instance_type.split(".")[1]


def has_local_nvme(instance_type: str) -> bool:
    family = instance_family(instance_type)
    return family in NVME_FAMILIES or bool(_NVME_SUFFIX.match(family))


def is_gpu(instance_type: str) -> bool:
    return instance_family(instance_type)[0] in ("g", "p")


@dataclass(frozen=True)
class SageMakerImage:
    """The container image: its URI and the repository the execution role may pull from."""

    uri: str
    repository: ecr.IRepository

    @classmethod
    def from_ecr(
        cls, scope: Construct, id: str, *, repository_name: str, tag: str
    ) -> SageMakerImage:
        repository = ecr.Repository.from_repository_name(scope, id, repository_name)
        return cls(repository.repository_uri_for_tag(tag), repository)

    @classmethod
    def from_asset(cls, scope: Construct, id: str, *, project_root: Path) -> SageMakerImage:
        """Built by `cdk deploy` (needs Docker) from the repo root, container inputs only."""
        build = image_build("sagemaker", "", "")  # one image for every model
        asset = ecr_assets.DockerImageAsset(
            scope, id, directory=str(project_root), **build.asset_options()
        )
        return cls(asset.image_uri, asset.repository)


class SageMakerEndpoint(Construct):
    """Endpoint + autoscaling + the API's proxy function for one model."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        model: SageMakerDeployment,
        registry: ModelRegistry,
        image: SageMakerImage,
        project_root: Path,
        log_retention_days: int = 30,
    ) -> None:
        super().__init__(scope, id)
        self.model = model
        self.model_data_url = (
            f"s3://{registry.bucket.bucket_name}/models/{model.name}/{model.version}/{ARCHIVE}"
        )
        # The steps run in this order: each reads what the ones before it set on self.
        self.role = self._execution_role(model, registry, image)
        self.capture_objects_arn = self._data_capture_access(model, registry)
        self.cfn_model = self._model(model, image)
        self.volume_key = self._volume_key(model)
        self.endpoint_config = self._endpoint_config(model, registry)
        self.endpoint = self._endpoint(model)
        self.scalable_target = self._scalable_target(model)
        self.scaling_policy = self._scaling_policy(model)
        self.log_group = self._proxy_log_group(log_retention_days)
        self.proxy_role = self._proxy_role(model)
        self.function = self._proxy_function(model, project_root)

    @property
    def api_target(self) -> lambda_.IFunction:
        """What API Gateway invokes: the proxy (no alias: it carries no model, CodeDeploy
        has nothing to shift)."""
        return self.function

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        """cdk-nag acknowledgements for this endpoint, each with its reason."""
        policy = self.role.node.find_child("DefaultPolicy")
        model_objects = nag.resource_finding(self, self.model_objects_arn)
        nag.ack(policy, f"{nag.PACK}-IAM5[{model_objects}]", REASON_MODEL_PREFIX, skip=skip)
        nag.ack(policy, f"{nag.PACK}-IAM5[Resource::*]", REASON_EXECUTION_ROLE_STAR, skip=skip)
        logs_arn = nag.resource_finding(self, f"{self.endpoint_log_group_arn}:*")
        nag.ack(policy, f"{nag.PACK}-IAM5[{logs_arn}]", REASON_ENDPOINT_LOGS, skip=skip)
        if self.capture_objects_arn is not None:
            capture = nag.resource_finding(self, self.capture_objects_arn)
            nag.ack(policy, f"{nag.PACK}-IAM5[{capture}]", REASON_DATA_CAPTURE, skip=skip)
        proxy_policy = self.proxy_role.node.find_child("DefaultPolicy")
        nag.ack(proxy_policy, f"{nag.PACK}-IAM5[Resource::*]", REASON_XRAY, skip=skip)
        nag.ack(self.function, f"{nag.SERVERLESS}-LambdaDLQ", nag.REASON_API_DLQ, skip=skip)
        nag.cfn_lint_ignore_function(self.function)
        nag.cfn_lint_ignore(self.cfn_model, "W3005", nag.REASON_ROLE_DEPENDS_ON)
        nag.checkov_skip_function(self.function, self.log_group, dlq=nag.REASON_API_DLQ)
        nag.checkov_skip(self.function, "CKV_AWS_115", REASON_PROXY_CONCURRENCY)

    # -- execution role: this model's registry prefix, its image, its own log group --------

    def _execution_role(
        self, model: SageMakerDeployment, registry: ModelRegistry, image: SageMakerImage
    ) -> iam.Role:
        """Also sets the two ARNs acknowledge_findings names: model objects, log group."""
        name = model.endpoint_name
        role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description=f"onnxlift SageMaker endpoint {name}: reads models/{model.name}/ only",
        )
        registry.grant_model_read(role, model.name)
        self.model_objects_arn = registry.model_objects_arn(model.name)
        image.repository.grant_pull(role)
        self.endpoint_log_group_arn = Stack.of(self).format_arn(
            service="logs",
            resource="log-group",
            resource_name=f"/aws/sagemaker/Endpoints/{name}",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteOwnEndpointLogs",
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:DescribeLogStreams",
                    "logs:PutLogEvents",
                ],
                resources=[self.endpoint_log_group_arn, f"{self.endpoint_log_group_arn}:*"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PublishEndpointMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions
                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            )
        )
        return role

    def _data_capture_access(
        self, model: SageMakerDeployment, registry: ModelRegistry
    ) -> str | None:
        """Let the execution role write captured data; the ARN it may write, or None."""
        if not model.data_capture:
            return None
        capture_objects_arn = registry.bucket.arn_for_objects(
            f"{DATA_CAPTURE_PREFIX}/{model.name}/*"
        )
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteOwnDataCapture",
                actions=["s3:PutObject"],
                resources=[capture_objects_arn],
            )
        )
        return capture_objects_arn

    # -- model, endpoint config, endpoint -------------------------------------------------

    def _model(self, model: SageMakerDeployment, image: SageMakerImage) -> sagemaker.CfnModel:
        cfn_model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=True,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri,
                model_data_url=self.model_data_url,
                mode="SingleModel",
                environment={
                    **contract.serving_environment(
                        name=model.name, version=model.version, providers="CUDAExecutionProvider"
                    ),
                    **batching_environment(model),
                },
            ),
        )
        cfn_model.node.add_dependency(self.role)  # its policy must exist before CreateModel
        return cfn_model

    def _volume_key(self, model: SageMakerDeployment) -> kms.Key | None:
        """A customer managed key for the ML storage volume; None on NVMe instance types."""
        if has_local_nvme(model.instance_type):
            # Local NVMe instance storage is encrypted at rest by the hardware with a key that
            # never leaves the instance; SageMaker rejects a KmsKeyId on these types (g4dn, g5,
            # p4d, ...). No cdk-nag pack that runs here checks it (HIPAA/NIST/PCI would).
            return None
        return kms.Key(
            self,
            "VolumeKey",
            description=f"onnxlift SageMaker endpoint {model.endpoint_name}: ML storage volume",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _endpoint_config(
        self, model: SageMakerDeployment, registry: ModelRegistry
    ) -> sagemaker.CfnEndpointConfig:
        variant = sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=contract.SAGEMAKER_VARIANT,
            model_name=self.cfn_model.attr_model_name,
            instance_type=model.instance_type,
            initial_instance_count=model.initial_instances,
            initial_variant_weight=1.0,
            inference_ami_version=GPU_AMI if is_gpu(model.instance_type) else None,
        )
        return sagemaker.CfnEndpointConfig(
            self,
            "EndpointConfig",
            production_variants=[variant],
            kms_key_id=self.volume_key.key_arn if self.volume_key else None,
            data_capture_config=self._data_capture(model, registry) if model.data_capture else None,
        )

    def _endpoint(self, model: SageMakerDeployment) -> sagemaker.CfnEndpoint:
        return sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=model.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name,
        )

    # -- autoscaling on invocations per instance ------------------------------------------

    def _scalable_target(self, model: SageMakerDeployment) -> appscaling.ScalableTarget:
        stack = Stack.of(self)
        scalable_target = appscaling.ScalableTarget(
            self,
            "Scaling",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{model.endpoint_name}/variant/{contract.SAGEMAKER_VARIANT}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=model.min_instances,
            max_capacity=model.max_instances,
            # Application Auto Scaling's own service-linked role for SageMaker endpoints,
            # rather than a new role the CDK would create without any permissions.
            role=iam.Role.from_role_arn(
                self,
                "ScalingServiceLinkedRole",
                stack.format_arn(
                    service="iam",
                    region="",
                    resource="role",
                    resource_name=SCALING_SERVICE_LINKED_ROLE,
                ),
                mutable=False,
            ),
        )
        scalable_target.node.add_dependency(self.endpoint)
        return scalable_target

    def _scaling_policy(self, model: SageMakerDeployment) -> appscaling.TargetTrackingScalingPolicy:
        return self.scalable_target.scale_to_track_metric(
            "InvocationsPerInstance",
            target_value=model.target_invocations_per_instance,
            predefined_metric=appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
            # Out fast (a GPU instance takes minutes to come up), in slowly (and not on a dip).
            scale_out_cooldown=Duration.seconds(60),
            scale_in_cooldown=Duration.seconds(600),
        )

    # -- the API's proxy function ---------------------------------------------------------

    def _proxy_log_group(self, log_retention_days: int) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            "ProxyLogs",
            retention=logs.RetentionDays[LOG_RETENTION_DAYS[log_retention_days]],
            removal_policy=RemovalPolicy.DESTROY,
        )

    def _proxy_role(self, model: SageMakerDeployment) -> iam.Role:
        """Writes its own log group and invokes this endpoint (`endpoint_arn`), nothing else."""
        name = model.endpoint_name
        proxy_role = iam.Role(
            self,
            "ProxyRole",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"onnxlift proxy to SageMaker endpoint {name}",
        )
        self.log_group.grant_write(proxy_role)
        self.endpoint_arn = Stack.of(self).format_arn(
            service="sagemaker", resource="endpoint", resource_name=name.lower()
        )
        proxy_role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeOwnEndpoint",
                actions=["sagemaker:InvokeEndpoint"],
                resources=[self.endpoint_arn],
            )
        )
        return proxy_role

    def _proxy_function(self, model: SageMakerDeployment, project_root: Path) -> lambda_.Function:
        name = model.endpoint_name
        return lambda_.Function(
            self,
            "Proxy",
            description=f"onnxlift: V2 API for model {model.name} -> SageMaker endpoint {name}",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler="proxy_handler.lambda_handler",
            code=lambda_.Code.from_asset(
                str(project_root / PROXY_CODE), exclude=["__pycache__", "*.pyc"]
            ),
            memory_size=256,
            timeout=Duration.seconds(APIGW_INTEGRATION_TIMEOUT_S),
            tracing=lambda_.Tracing.ACTIVE,
            role=self.proxy_role,
            log_group=self.log_group,
            environment={
                str(contract.Env.ENDPOINT_NAME): name,
                str(contract.Env.MODEL_NAME): model.name,
                "LOG_LEVEL": "INFO",
            },
        )

    def _data_capture(
        self, model: SageMakerDeployment, registry: ModelRegistry
    ) -> sagemaker.CfnEndpointConfig.DataCaptureConfigProperty:
        return sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
            enable_capture=True,
            initial_sampling_percentage=model.data_capture_sampling_percent,
            destination_s3_uri=(
                f"s3://{registry.bucket.bucket_name}/{DATA_CAPTURE_PREFIX}/{model.name}"
            ),
            capture_options=[
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output"),
            ],
            capture_content_type_header=sagemaker.CfnEndpointConfig.CaptureContentTypeHeaderProperty(
                json_content_types=["application/json"]
            ),
        )
