"""The SageMaker endpoint construct: resources, settings, least privilege, autoscaling, cdk-nag."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk.assertions import Capture, Match, Template

from infra import nag
from infra.config import ConfigError, SageMakerDeployment
from infra.registry_bucket import ModelRegistry
from infra.sagemaker_endpoint import (
    GPU_AMI,
    SageMakerEndpoint,
    SageMakerImage,
    has_local_nvme,
)
from tests.infra.conftest import CDK_CONTEXT, ROOT


@dataclass
class Built:
    app: App
    stack: Stack
    endpoint: SageMakerEndpoint
    template: Template

    def only(self, cfn_type: str) -> dict[str, Any]:
        found = self.template.find_resources(cfn_type)
        assert len(found) == 1, found
        return next(iter(found.values()))["Properties"]


def build(model: SageMakerDeployment, *, acknowledge: bool = True) -> Built:
    app = App(context=CDK_CONTEXT)
    stack = Stack(app, "Bare")
    registry = ModelRegistry(stack, "Registry")
    image = SageMakerImage.from_ecr(stack, "Repo", repository_name="onnxlift", tag="sagemaker")
    endpoint = SageMakerEndpoint(
        stack, "Large", model=model, registry=registry, image=image, project_root=ROOT
    )
    if acknowledge:
        endpoint.acknowledge_findings()
    return Built(app, stack, endpoint, Template.from_stack(stack))


@pytest.fixture(scope="module")
def default() -> Built:
    return build(SageMakerDeployment(name="minilm", version="1"))


@pytest.fixture(scope="module")
def cpu_capture() -> Built:
    model = SageMakerDeployment(
        name="bge",
        version="3",
        instance_type="ml.c7i.2xlarge",
        initial_instances=2,
        min_instances=2,
        max_instances=6,
        target_invocations_per_instance=900,
        data_capture=True,
        data_capture_sampling_percent=25,
    )
    return build(model)


def test_model_endpoint_config_and_endpoint(default: Built) -> None:
    default.template.resource_count_is("AWS::SageMaker::Model", 1)
    default.template.resource_count_is("AWS::SageMaker::EndpointConfig", 1)
    default.template.resource_count_is("AWS::SageMaker::Endpoint", 1)
    model = default.only("AWS::SageMaker::Model")
    assert model["EnableNetworkIsolation"] is True
    container = model["PrimaryContainer"]
    assert container["Environment"] == {
        "MODEL_NAME": "minilm",
        "MODEL_VERSION": "1",
        "ORT_PROVIDERS": "CUDAExecutionProvider",
    }
    assert json.dumps(container["ModelDataUrl"]).endswith('"/models/minilm/1/model.tar.gz"]]}')
    assert json.dumps(container["Image"]).endswith('"/onnxlift:sagemaker"]]}')
    default.template.has_resource_properties(
        "AWS::SageMaker::Endpoint", {"EndpointName": "onnxlift-minilm"}
    )


def test_default_instance_is_g5_xlarge_on_the_cuda13_ami_without_kms(default: Built) -> None:
    config = default.only("AWS::SageMaker::EndpointConfig")
    (variant,) = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.g5.xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["VariantName"] == "AllTraffic"
    assert variant["InferenceAmiVersion"] == GPU_AMI
    # g5 keeps its storage on local NVMe: SageMaker refuses a KMS volume key there.
    assert "KmsKeyId" not in config
    default.template.resource_count_is("AWS::KMS::Key", 0)


def test_non_nvme_instance_gets_a_rotated_kms_volume_key(cpu_capture: Built) -> None:
    key = Capture()
    cpu_capture.template.has_resource_properties(
        "AWS::SageMaker::EndpointConfig",
        {"KmsKeyId": {"Fn::GetAtt": [key, "Arn"]}, "ProductionVariants": [Match.object_like({
            "InstanceType": "ml.c7i.2xlarge", "InitialInstanceCount": 2})]},
    )  # fmt: skip
    assert cpu_capture.template.to_json()["Resources"][key.as_string()]["Properties"][
        "EnableKeyRotation"
    ]
    (variant,) = cpu_capture.only("AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    assert "InferenceAmiVersion" not in variant  # a CPU instance: no GPU AMI


def test_data_capture_absent_by_default_and_present_when_switched_on(
    default: Built, cpu_capture: Built
) -> None:
    assert "DataCaptureConfig" not in default.only("AWS::SageMaker::EndpointConfig")
    capture = cpu_capture.only("AWS::SageMaker::EndpointConfig")["DataCaptureConfig"]
    assert capture["EnableCapture"] is True
    assert capture["InitialSamplingPercentage"] == 25
    assert {o["CaptureMode"] for o in capture["CaptureOptions"]} == {"Input", "Output"}
    assert json.dumps(capture["DestinationS3Uri"]).endswith('"/datacapture/bge"]]}')


def _statements(built: Built, role_logical_prefix: str) -> list[dict[str, Any]]:
    policies = built.template.find_resources("AWS::IAM::Policy")
    (policy,) = [p for k, p in policies.items() if k.startswith(role_logical_prefix)]
    return policy["Properties"]["PolicyDocument"]["Statement"]


def test_execution_role_reads_only_its_own_model_prefix(default: Built) -> None:
    statements = _statements(default, "LargeExecutionRole")
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _actions(s))]
    assert {a for s in s3 for a in _actions(s)} == {
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",
    }
    for statement in s3:
        text = json.dumps(statement)
        assert "models/minilm/*" in text
        assert "s3:PutObject" not in text
    for statement in statements:
        assert all("*" not in action for action in _actions(statement)), statement
    star = [s for s in statements if s["Resource"] == "*"]
    assert {a for s in star for a in _actions(s)} == {
        "ecr:GetAuthorizationToken",
        "cloudwatch:PutMetricData",
    }
    default.template.has_resource_properties(
        "AWS::IAM::Role",
        {
            "AssumeRolePolicyDocument": Match.object_like(
                {
                    "Statement": [
                        Match.object_like({"Principal": {"Service": "sagemaker.amazonaws.com"}})
                    ]
                }
            ),
            "ManagedPolicyArns": Match.absent(),
        },
    )


def test_data_capture_adds_only_put_on_its_own_capture_prefix(cpu_capture: Built) -> None:
    statements = _statements(cpu_capture, "LargeExecutionRole")
    (put,) = [s for s in statements if "s3:PutObject" in _actions(s)]
    assert _actions(put) == ["s3:PutObject"]
    assert json.dumps(put["Resource"]).endswith('"/datacapture/bge/*"]]}')


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def test_autoscaling_on_invocations_per_instance(default: Built, cpu_capture: Built) -> None:
    default.template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {
            "ServiceNamespace": "sagemaker",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "ResourceId": "endpoint/onnxlift-minilm/variant/AllTraffic",
            "MinCapacity": 1,
            "MaxCapacity": 4,
            "RoleARN": Match.any_value(),
        },
    )
    assert "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint" in json.dumps(
        default.only("AWS::ApplicationAutoScaling::ScalableTarget")["RoleARN"]
    )
    default.template.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        {
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "TargetValue": 600,
                "ScaleOutCooldown": 60,
                "ScaleInCooldown": 600,
            },
        },
    )
    target = cpu_capture.only("AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
    # The scalable target can only be registered once the endpoint exists.
    targets = default.template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget")
    endpoint_id = next(iter(default.template.find_resources("AWS::SageMaker::Endpoint")))
    assert endpoint_id in next(iter(targets.values()))["DependsOn"]


def test_proxy_function_invokes_only_its_endpoint(default: Built) -> None:
    default.template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "proxy_handler.lambda_handler",
            "Timeout": 29,
            "TracingConfig": {"Mode": "Active"},
            "Environment": {
                "Variables": Match.object_like(
                    {"ENDPOINT_NAME": "onnxlift-minilm", "MODEL_NAME": "minilm"}
                )
            },
        },
    )
    statements = _statements(default, "LargeProxyRole")
    (invoke,) = [s for s in statements if "sagemaker:InvokeEndpoint" in _actions(s)]
    assert _actions(invoke) == ["sagemaker:InvokeEndpoint"]
    assert json.dumps(invoke["Resource"]).endswith(':endpoint/onnxlift-minilm"]]}')
    # Active tracing adds the two X-Ray actions, which have no resource-level permissions.
    on_star = {a for s in statements if s["Resource"] == "*" for a in _actions(s)}
    assert on_star == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
    assert default.endpoint.model.name == "minilm"  # what InferenceApi routes by
    assert default.endpoint.function is not None


@pytest.mark.parametrize("which", ["default", "cpu_capture"])
def test_cdk_nag_has_no_unacknowledged_findings(which: str, request) -> None:
    built = request.getfixturevalue(which)
    assert nag.findings(built.app) == []


def test_each_acknowledgement_is_load_bearing() -> None:
    bare = build(
        SageMakerDeployment(name="minilm", version="1", data_capture=True), acknowledge=False
    )
    assert {f.rule_id for f in nag.findings(bare.app)} == {
        "AwsSolutions-IAM5[Resource::<RegistryBucket9C3667AF.Arn>/models/minilm/*]",
        "AwsSolutions-IAM5[Resource::*]",
        "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:"
        "log-group:/aws/sagemaker/Endpoints/onnxlift-minilm:*]",
        "AwsSolutions-IAM5[Resource::<RegistryBucket9C3667AF.Arn>/datacapture/minilm/*]",
        "Serverless-LambdaDLQ",  # the proxy: API Gateway invokes it synchronously
    }


@pytest.mark.parametrize(
    ("instance_type", "nvme"),
    [
        ("ml.g5.xlarge", True),
        ("ml.g4dn.2xlarge", True),
        ("ml.p4d.24xlarge", True),
        ("ml.m5d.large", True),
        ("ml.c6id.xlarge", True),
        ("ml.c7i.2xlarge", False),
        ("ml.m5.xlarge", False),
        ("ml.inf2.xlarge", False),
    ],
)
def test_nvme_instance_types(instance_type: str, nvme: bool) -> None:
    assert has_local_nvme(instance_type) is nvme


@pytest.mark.parametrize(
    "kwargs",
    [
        {"instance_type": "g5.xlarge"},
        {"min_instances": 0},
        {"min_instances": 3, "max_instances": 2, "initial_instances": 3},
        {"target_invocations_per_instance": 0},
        {"data_capture_sampling_percent": 0},
    ],
)
def test_invalid_deployments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SageMakerDeployment(name="minilm", version="1", **kwargs)


def test_image_asset_builds_from_the_container_inputs_only(tmp_path) -> None:
    for rel in ("functions/sagemaker/Dockerfile", "layers/runtime/onnxlift_serving/__init__.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("FROM scratch\n" if rel.endswith("Dockerfile") else "")
    app = App(context=CDK_CONTEXT)
    stack = Stack(app, "Asset")
    image = SageMakerImage.from_asset(stack, "Image", project_root=tmp_path)
    assert "dkr.ecr" in json.dumps(stack.resolve(image.uri))


def test_a_specs_batching_reaches_the_container_environment() -> None:
    """[serving.batching] travels from the spec (sagemaker_from_specs) to the endpoint's
    container environment, which the container's batcher reads."""
    from types import SimpleNamespace

    from onnxlift_serving.contract import Env

    from infra.config import sagemaker_from_specs
    from onnxlift.spec import BatchingSpec

    batching = BatchingSpec(max_batch_size=16, max_queue_delay_ms=5, max_queue_size=40)
    serving = SimpleNamespace(
        target="sagemaker", instance_type="ml.g5.xlarge", initial_instances=1, min_instances=1,
        max_instances=2, target_invocations_per_instance=600, data_capture=False,
        batching=batching,
    )  # fmt: skip
    (model,) = sagemaker_from_specs([SimpleNamespace(name="big", serving=serving)], {})
    assert model.batching is batching
    container = build(model).only("AWS::SageMaker::Model")["PrimaryContainer"]
    variables = container["Environment"]
    assert variables[Env.BATCH_MAX_SIZE] == "16"
    assert variables[Env.BATCH_MAX_QUEUE_DELAY_MS] == "5"
    assert variables[Env.BATCH_MAX_QUEUE_SIZE] == "40"
