"""The onnxlift stack: registry bucket + one inference function per model + the REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Stack, Tags
from constructs import Construct

from infra import nag
from infra.api import InferenceApi
from infra.config import DeploymentConfig
from infra.inference_function import InferenceFunction
from infra.registry import ModelRegistry

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
            "onnxlift: quantized ONNX models on Lambda behind API Gateway, with an S3 registry",
        )
        super().__init__(scope, id, **kwargs)
        self.config = config
        Tags.of(self).add("project", "onnxlift")

        self.registry = ModelRegistry(self, "Registry", bucket_name=config.registry_bucket_name)
        self.functions = [
            InferenceFunction(
                self,
                f"Model-{model.name}",
                model=model,
                config=config,
                registry=self.registry,
                project_root=project_root,
            )
            for model in config.models
        ]
        self.api = InferenceApi(self, "Api", config=config, functions=self.functions)

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

        if acknowledge_nag_findings:
            nag.acknowledge_findings(self)
