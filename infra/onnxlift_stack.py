"""The onnxlift stack: registry bucket + one inference function per model + the REST API,
with a CodeDeploy rollout per model function, the alarm topic and the operations dashboard."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from aws_cdk import aws_codedeploy as codedeploy
from constructs import Construct

from infra.config import DeploymentConfig, output_key
from infra.dashboard import OperationsDashboard
from infra.inference_function import InferenceFunction
from infra.registry_bucket import ModelRegistry
from infra.rest_api import InferenceApi
from infra.rollout import AlarmTopic, ModelRollout, PreTrafficHook
from infra.sagemaker_endpoint import SageMakerEndpoint, SageMakerImage
from infra.signing_key import ManifestSigningKey

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class OnnxliftStack(Stack):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        config: DeploymentConfig,
        project_root: Path = PROJECT_ROOT,
        acknowledge_nag_findings: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault(
            "description",
            "onnxlift: quantized ONNX models on Lambda (and SageMaker) behind API Gateway, "
            "with an S3 registry",
        )
        super().__init__(scope, id, **kwargs)
        self.config = config
        Tags.of(self).add("project", "onnxlift")
        Tags.of(self).add("environment", config.env)

        self.registry = ModelRegistry(self, "Registry", bucket_name=config.registry_bucket_name)
        self.signing_key = (
            None if config.signing == "none" else ManifestSigningKey(self, "ManifestSigning")
        )
        self.functions = self._functions(config, project_root)
        self.endpoints = self._endpoints(config, project_root)
        # An endpoint offers what the API needs of a function: `.model.name` and `.api_target`
        # (its thin proxy; a model function's is its alias), so the routes are the same for both.
        self.api = InferenceApi(
            self, "Api", config=config, functions=[*self.functions, *self.endpoints]
        )
        self.alarm_topic = AlarmTopic(self, "Alarms", name=config.name("alarms"))
        self.hooks: list[PreTrafficHook] = []
        self.rollouts = self._rollouts(config, project_root)
        self.dashboard = OperationsDashboard(
            self,
            "Operations",
            name=config.name(),
            functions=self.functions,
            endpoints=self.endpoints,
        )
        self._outputs()
        self._model_outputs()

        if acknowledge_nag_findings:
            self.acknowledge_findings()

    @property
    def _signature_key(self) -> str | None:
        return None if self.signing_key is None else self.signing_key.spec

    @staticmethod
    def _signature_required(config: DeploymentConfig) -> bool | None:
        """kms: every version must be signed; kms-optional: unsigned ones load too."""
        return None if config.signing == "none" else config.signing == "kms"

    def _functions(self, config: DeploymentConfig, project_root: Path) -> list[InferenceFunction]:
        functions = [
            InferenceFunction(
                self,
                f"Model-{model.name}",
                model=model,
                config=config,
                registry=self.registry,
                project_root=project_root,
                signature_key=self._signature_key,
                signature_required=self._signature_required(config),
            )
            for model in config.models
        ]
        if self.signing_key is not None:
            for fn in functions:
                self.signing_key.grant_verify(fn.role)
        return functions

    def _rollouts(self, config: DeploymentConfig, project_root: Path) -> list[ModelRollout]:
        """Per model function: a PreTraffic hook and a deployment group on its alias."""
        if not self.functions:
            return []
        self.codedeploy_app = codedeploy.LambdaApplication(
            self, "Deployments", application_name=config.name()
        )
        rollouts = []
        for fn in self.functions:
            hook = PreTrafficHook(
                self,
                f"PreTraffic-{fn.model.name}",
                target=fn,
                registry=self.registry,
                project_root=project_root,
                log_retention_days=config.log_retention_days,
                signature_key=self._signature_key,
                signature_required=self._signature_required(config),
            )
            if self.signing_key is not None:
                self.signing_key.grant_verify(hook.role)
            self.hooks.append(hook)
            rollouts.append(
                ModelRollout(
                    self,
                    f"Rollout-{fn.model.name}",
                    target=fn,
                    application=self.codedeploy_app,
                    topic=self.alarm_topic,
                    api_name=self.api.api.rest_api_name,
                    stage_name=config.stage_name,
                    pre_hook=hook.function,
                )
            )
        return rollouts

    def _endpoints(self, config: DeploymentConfig, project_root: Path) -> list[SageMakerEndpoint]:
        """One endpoint per SageMaker model, all from one image (none without such models)."""
        if not config.sagemaker_models:
            return []
        image = self._sagemaker_image(config, project_root)
        endpoints = [
            SageMakerEndpoint(
                self,
                f"Endpoint-{model.name}",
                model=model,
                registry=self.registry,
                image=image,
                project_root=project_root,
                log_retention_days=config.log_retention_days,
            )
            for model in config.sagemaker_models
        ]
        # No signature check there: the model runs with network isolation, so its container
        # cannot reach kms:Verify (and its image has no ECDSA verifier of its own).
        return endpoints

    def _sagemaker_image(self, config: DeploymentConfig, project_root: Path) -> SageMakerImage:
        if config.image_source == "ecr":
            return SageMakerImage.from_ecr(
                self,
                "SageMakerRepository",
                repository_name=config.ecr_repository_name or "",
                tag=config.sagemaker_models[0].image_tag,  # one image serves them all
            )
        return SageMakerImage.from_asset(self, "SageMakerImage", project_root=project_root)

    def _outputs(self) -> None:
        CfnOutput(self, "ApiUrl", value=self.api.api.url, description="Base URL of the V2 API")
        CfnOutput(
            self,
            "ApiKeyId",
            value=self.api.api_key.key_id,
            description="API key ID; value: aws apigateway get-api-key --include-value --api-key",
        )
        CfnOutput(
            self,
            "RegistryBucketName",
            value=self.registry.bucket.bucket_name,
            description="S3 model registry (models/<name>/<version>/...)",
        )
        if self.signing_key is not None:
            CfnOutput(
                self,
                "ManifestSigningKeyArn",
                value=self.signing_key.key.key_arn,
                description="Signs manifests: onnxlift publish --signing-key kms:<this arn>",
            )

    def _model_outputs(self) -> None:
        """Name every function, alias, deployment group and endpoint, the dashboard, topic."""
        for fn, rollout in zip(self.functions, self.rollouts, strict=True):
            key = output_key(fn.model.name)
            CfnOutput(self, f"{key}FunctionName", value=fn.function.function_name)
            CfnOutput(self, f"{key}AliasArn", value=fn.alias.function_arn)
            CfnOutput(self, f"{key}DeploymentGroup", value=rollout.group.deployment_group_name)
        for endpoint in self.endpoints:
            key = output_key(endpoint.model.name)
            CfnOutput(self, f"{key}EndpointName", value=endpoint.endpoint.attr_endpoint_name)
            CfnOutput(self, f"{key}ProxyFunctionName", value=endpoint.function.function_name)
        if self.rollouts:
            CfnOutput(self, "DeploymentApplication", value=self.codedeploy_app.application_name)
        CfnOutput(
            self,
            "DashboardName",
            value=self.dashboard.dashboard.dashboard_name,
            description="CloudWatch dashboard of every model and endpoint",
        )
        CfnOutput(
            self,
            "AlarmTopicArn",
            value=self.alarm_topic.topic.topic_arn,
            description="SNS topic every alarm notifies: subscribe the on-call here",
        )

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        """Have each construct acknowledge the cdk-nag findings its design accepts.

        `skip` leaves out acknowledgements by rule id (with or without the [finding] part);
        tests use it to prove that each acknowledgement is what silences its finding.
        """
        self.registry.acknowledge_findings()
        self.api.acknowledge_findings(skip=skip)
        for endpoint in self.endpoints:
            endpoint.acknowledge_findings(skip=skip)
        for fn in self.functions:
            fn.acknowledge_findings(skip=skip)
        for hook in self.hooks:
            hook.acknowledge_findings(skip=skip)
        for rollout in self.rollouts:
            rollout.acknowledge_findings(skip=skip)
