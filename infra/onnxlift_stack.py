"""The onnxlift stack: registry bucket + one inference function per model + the REST API."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from infra.config import DeploymentConfig
from infra.inference_function import InferenceFunction
from infra.registry_bucket import ModelRegistry
from infra.rest_api import InferenceApi
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

        self.registry = ModelRegistry(self, "Registry", bucket_name=config.registry_bucket_name)
        self.signing_key = (
            None if config.signing == "none" else ManifestSigningKey(self, "ManifestSigning")
        )
        self.functions = self._functions(config, project_root)
        self.endpoints = self._endpoints(config, project_root)
        # An endpoint offers what the API needs of a function: `.model.name` and `.function`
        # (its thin proxy), so the routes are the same for both paths.
        self.api = InferenceApi(
            self, "Api", config=config, functions=[*self.functions, *self.endpoints]
        )
        self._outputs()

        if acknowledge_nag_findings:
            self.acknowledge_findings()

    @property
    def _signature_key(self) -> str | None:
        return None if self.signing_key is None else self.signing_key.spec

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
                signature_required=None if config.signing == "none" else config.signing == "kms",
            )
            for model in config.models
        ]
        if self.signing_key is not None:
            for fn in functions:
                self.signing_key.grant_verify(fn.role)
        return functions

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

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        """Have each construct acknowledge the cdk-nag findings its design accepts.

        `skip` leaves out acknowledgements by rule id (with or without the [finding] part);
        tests use it to prove that each acknowledgement is what silences its finding.
        """
        self.api.acknowledge_findings(skip=skip)
        for endpoint in self.endpoints:
            endpoint.acknowledge_findings(skip=skip)
        for fn in self.functions:
            fn.acknowledge_findings(skip=skip)
