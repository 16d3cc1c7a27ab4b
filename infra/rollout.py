"""Safe rollout of a model function: CodeDeploy shifts its alias, alarms roll it back.

`InferenceFunction` publishes each deploy as a new version behind the `LAMBDA_ALIAS` alias
that API Gateway invokes. `ModelRollout` gives that alias a CodeDeploy deployment group
(the model's `rollout`: canary, linear or all at once), four CloudWatch alarms that stop
and roll back a deployment in alarm (and notify the stack's `AlarmTopic`), and an optional
PreTraffic hook: a function CodeDeploy runs against the new version before any traffic
shifts (`PreTrafficHook`: functions/pretraffic, the model's parity check).
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    ArnFormat,
    AssetHashType,
    BundlingOptions,
    DockerImage,
    Duration,
    ILocalBundling,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_codedeploy as codedeploy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from constructs import Construct
from onnxlift_serving import contract
from onnxlift_serving.contract import MODELS_PREFIX
from onnxlift_serving.verify import MAX_PARITY_INPUTS

from infra import nag
from infra.config import LOG_RETENTION_DAYS
from infra.inference_function import REASON_XRAY, InferenceFunction
from infra.registry_bucket import REASON_MODEL_PREFIX, ModelRegistry

__all__ = [
    "ALARM_PERIOD",
    "DEPLOYMENT_CONFIGS",
    "ERRORS_THRESHOLD",
    "FIVE_XX_RATE_PERCENT",
    "HOOK_CODE",
    "HOOK_SERVING_MODULES",
    "THROTTLES_THRESHOLD",
    "AlarmTopic",
    "HookBundle",
    "ModelRollout",
    "PreTrafficHook",
]

DEPLOYMENT_CONFIGS = {
    "canary10-5m": codedeploy.LambdaDeploymentConfig.CANARY_10_PERCENT_5_MINUTES,
    "linear10-1m": codedeploy.LambdaDeploymentConfig.LINEAR_10_PERCENT_EVERY_1_MINUTE,
    "all-at-once": codedeploy.LambdaDeploymentConfig.ALL_AT_ONCE,
}
HOOK_CODE = "functions/pretraffic"
# The serving runtime's plain-Python modules the hook imports (parity math, signatures, the
# contract), bundled beside its handler: one copy of each check, no numpy or onnxruntime.
SERVING_PACKAGE = "layers/runtime/onnxlift_serving"
HOOK_SERVING_MODULES = (
    "__init__.py", "contract.py", "errors.py", "layout.py", "signing.py", "verify.py",
)  # fmt: skip
# One-minute alarms: a canary's 5 minutes see five datapoints, so one bad minute is enough.
ALARM_PERIOD = Duration.minutes(1)
FIVE_XX_RATE_PERCENT = 5  # of the model's infer requests in a minute
ERRORS_THRESHOLD = 1  # unhandled function errors (the handler answers its own 4xx/5xx)
THROTTLES_THRESHOLD = 1

REASON_CODEDEPLOY_MANAGED_POLICY = (
    "CodeDeploy's service role for Lambda deployments uses the AWS managed policy "
    "AWSCodeDeployRoleForLambdaLimited (the CDK attaches it): it may read the alias, update it, "
    "read alarms and publish to SNS topics named CodeDeployTopic*, which is what a traffic shift "
    "needs; there is no narrower managed policy."
)
REASON_HOOK_INVOKE = (
    "The CDK grants CodeDeploy's role lambda:InvokeFunction on the PreTraffic hook function and "
    "its qualified ARNs (<arn>:*), the form CodeDeploy invokes; it covers that one function only."
)
REASON_HOOK_DLQ = (
    "CodeDeploy waits for the hook's PutLifecycleEventHookExecutionStatus: a run that fails "
    "or never reports fails the deployment, which rolls the alias back. The failure is acted "
    "on already; a dead-letter queue would hold an event nobody replays (the deployment is over)."
)
REASON_HOOK_RUNTIME = (
    "The PreTraffic hook runs on python3.12 like the inference image (functions/inference uses "
    "the public.ecr.aws/lambda/python:3.12 base), so the parity check it shares is tested on the "
    "same interpreter; bump both together."
)
REASON_TOPIC_KEY = (
    "CloudWatch alarms publish to the encrypted topic as the cloudwatch.amazonaws.com service, "
    "which needs kms:Decrypt/GenerateDataKey* on the topic's key; a key policy's Resource is "
    "always '*' (the key itself)."
)


class AlarmTopic(Construct):
    """One SNS topic for every alarm, encrypted with its own rotating KMS key (an AWS managed
    aws/sns key would not let CloudWatch publish) and reachable over TLS only."""

    def __init__(self, scope: Construct, id: str, *, name: str) -> None:
        """`name`: the topic's, from the environment's naming (DeploymentConfig.name)."""
        super().__init__(scope, id)
        self.key = kms.Key(
            self,
            "Key",
            description="onnxlift: encrypts the alarm topic",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
        )
        # CloudWatch alarms of this account only: without the conditions, an alarm in any
        # account could publish to this topic (and page the on-call) through the key.
        stack = Stack.of(self)
        cloudwatch_service = iam.PrincipalWithConditions(
            iam.ServicePrincipal("cloudwatch.amazonaws.com"),
            {
                "StringEquals": {"aws:SourceAccount": stack.account},
                "ArnLike": {
                    "aws:SourceArn": stack.format_arn(
                        service="cloudwatch",
                        resource="alarm",
                        resource_name="*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                },
            },
        )
        self.key.grant(cloudwatch_service, "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = sns.Topic(
            self,
            "Topic",
            topic_name=name,
            display_name=name,
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.grant_publish(cloudwatch_service)
        self.action = cw_actions.SnsAction(self.topic)


@jsii.implements(ILocalBundling)
class HookBundle:
    """Local bundling of the hook's zip: a copy, so no Docker. The handler, and the serving
    modules it imports under onnxlift_serving/ (HOOK_SERVING_MODULES)."""

    def __init__(self, project_root: Path) -> None:
        self.project_root = project_root

    def try_bundle(self, output_dir: str, _options: Any = None) -> bool:  # jsii: positional
        out = Path(output_dir)
        shutil.copy2(self.project_root / HOOK_CODE / "handler.py", out / "handler.py")
        package = out / "onnxlift_serving"
        package.mkdir(exist_ok=True)
        for module in HOOK_SERVING_MODULES:
            shutil.copy2(self.project_root / SERVING_PACKAGE / module, package / module)
        return True


def hook_code(project_root: Path) -> lambda_.Code:
    """The hook's asset. Hashed on the bundle's output, so a change to a bundled serving
    module is a new asset (a source hash would see functions/pretraffic only)."""
    return lambda_.Code.from_asset(
        str(project_root / HOOK_CODE),
        asset_hash_type=AssetHashType.OUTPUT,
        bundling=BundlingOptions(
            # Never pulled: the local bundler always succeeds. The CDK requires an image.
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.12"),
            local=HookBundle(project_root),
        ),
    )


class PreTrafficHook(Construct):
    """The function CodeDeploy runs before shifting traffic: it invokes the new version
    (only that version) with the model's parity inputs (read from its registry prefix) and
    reports the result with codedeploy:PutLifecycleEventHookExecutionStatus (granted by the
    deployment group on itself)."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        target: InferenceFunction,
        registry: ModelRegistry,
        project_root: Path,
        log_retention_days: int,
        signature_key: str | None = None,
        signature_required: bool | None = None,
    ) -> None:
        """`signature_key`/`signature_required`: the model functions' own (contract's
        MODEL_SIGNATURE_*); the stack grants the key's kms:Verify to `self.role`."""
        super().__init__(scope, id)
        model = target.model
        self.version = target.version
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays[LOG_RETENTION_DAYS[log_retention_days]],
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"onnxlift PreTraffic parity check for model {model.name}",
        )
        self.log_group.grant_write(self.role)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="InvokeNewVersion",
                actions=["lambda:InvokeFunction"],
                resources=[self.version.function_arn],
            )
        )
        self.model_objects_arn = registry.model_objects_arn(model.name)
        self.role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadParityInputs",
                actions=["s3:GetObject"],
                resources=[self.model_objects_arn],
            )
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=f"onnxlift: PreTraffic parity check of model {model.name}",
            runtime=lambda_.Runtime.PYTHON_3_12,
            handler="handler.handler",
            code=hook_code(project_root),
            # Room for every parity input to take the target's whole timeout, and a minute for
            # S3 and the report; the handler also stops itself before this runs out, so it
            # always reports (a killed hook would leave CodeDeploy waiting for an hour).
            timeout=Duration.seconds(min(900, MAX_PARITY_INPUTS * model.timeout_s + 60)),
            memory_size=512,
            # CodeDeploy runs one deployment per group at a time and invokes the hook once per
            # deployment: one execution is all it ever needs, and a runaway stays at one.
            reserved_concurrent_executions=1,
            # Traced like the function it checks: the parity calls show up in X-Ray.
            tracing=lambda_.Tracing.ACTIVE,
            role=self.role,
            log_group=self.log_group,
            # The model's and the signature check's settings as the serving function reads
            # them (a manifest signed by another key fails the deployment), and the target.
            environment=contract.serving_environment(
                name=model.name,
                version=model.version,
                signature_key=signature_key,
                signature_required=signature_required,
            )
            | {
                str(contract.Env.TARGET_FUNCTION_ARN): self.version.function_arn,
                str(contract.Env.REGISTRY_BUCKET): registry.bucket.bucket_name,
            },
        )

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        nag.ack(self.function, f"{nag.PACK}-L1", REASON_HOOK_RUNTIME, skip=skip)
        nag.ack(
            self.function, f"{nag.SERVERLESS}-LambdaLatestVersion", REASON_HOOK_RUNTIME, skip=skip
        )
        nag.ack(self.function, f"{nag.SERVERLESS}-LambdaDLQ", REASON_HOOK_DLQ, skip=skip)
        nag.cfn_lint_ignore_function(self.function)
        nag.checkov_skip_function(self.function, self.log_group, dlq=REASON_HOOK_DLQ)
        policy = self.role.node.find_child("DefaultPolicy")
        nag.ack(policy, f"{nag.PACK}-IAM5[Resource::*]", REASON_XRAY, skip=skip)
        objects = nag.resource_finding(self, self.model_objects_arn)
        nag.ack(policy, f"{nag.PACK}-IAM5[{objects}]", REASON_MODEL_PREFIX, skip=skip)


class ModelRollout(Construct):
    """CodeDeploy deployment group on one model's alias, with its rollback alarms."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        target: InferenceFunction,
        application: codedeploy.LambdaApplication,
        topic: AlarmTopic,
        api_name: str,
        stage_name: str,
        pre_hook: lambda_.IFunction | None = None,
    ) -> None:
        super().__init__(scope, id)
        self.model = target.model
        self.pre_hook = pre_hook
        self.alarms = self._alarms(target, api_name, stage_name)
        for alarm in self.alarms.values():
            alarm.add_alarm_action(topic.action)
        self.group = codedeploy.LambdaDeploymentGroup(
            self,
            "DeploymentGroup",
            application=application,
            alias=target.alias,
            deployment_config=DEPLOYMENT_CONFIGS[self.model.rollout],
            alarms=list(self.alarms.values()),
            pre_hook=pre_hook,
            auto_rollback=codedeploy.AutoRollbackConfig(
                failed_deployment=True, stopped_deployment=True, deployment_in_alarm=True
            ),
        )

    def acknowledge_findings(self, *, skip: Collection[str] = ()) -> None:
        role = self.group.role
        managed = "Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
        nag.ack(
            role,
            f"{nag.PACK}-IAM4[{managed}AWSCodeDeployRoleForLambdaLimited]",
            REASON_CODEDEPLOY_MANAGED_POLICY,
            skip=skip,
        )
        if self.pre_hook is not None:
            hook_arn = Stack.of(self).resolve(self.pre_hook.function_arn)
            finding = f"Resource::{nag.flatten_cfn_reference(hook_arn)}:*"
            nag.ack(role, f"{nag.PACK}-IAM5[{finding}]", REASON_HOOK_INVOKE, skip=skip)

    def _alarms(
        self, target: InferenceFunction, api_name: str, stage_name: str
    ) -> dict[str, cloudwatch.Alarm]:
        name = self.model.name
        alias = target.alias
        budget = self.model.latency_budget_ms
        return {
            "FiveXxRate": self._alarm(
                "FiveXxRate",
                self._five_xx_rate(api_name, stage_name),
                FIVE_XX_RATE_PERCENT,
                f"{name}: more than {FIVE_XX_RATE_PERCENT}% of infer requests answered 5xx",
            ),
            "P99Duration": self._alarm(
                "P99Duration",
                alias.metric_duration(statistic="p99", period=ALARM_PERIOD),
                budget,
                f"{name}: p99 Duration of the alias over its budget {budget} ms",
                inclusive=False,
            ),
            "Errors": self._alarm(
                "Errors",
                alias.metric_errors(statistic="Sum", period=ALARM_PERIOD),
                ERRORS_THRESHOLD,
                f"{name}: unhandled function errors on the alias",
            ),
            "Throttles": self._alarm(
                "Throttles",
                target.function.metric_throttles(statistic="Sum", period=ALARM_PERIOD),
                THROTTLES_THRESHOLD,
                f"{name}: invocations throttled (reserved concurrency used up)",
            ),
        }

    def _alarm(
        self,
        id: str,
        metric: cloudwatch.IMetric,
        threshold: float,
        description: str,
        *,
        inclusive: bool = True,
    ) -> cloudwatch.Alarm:
        return cloudwatch.Alarm(
            self,
            id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            comparison_operator=(
                cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
                if inclusive
                else cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
            ),
            # No traffic is no evidence against the new version.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )

    def _five_xx_rate(self, api_name: str, stage_name: str) -> cloudwatch.MathExpression:
        """5xx share (%) of the model's two infer methods (the stage's per-method metrics)."""
        base = f"/{MODELS_PREFIX.strip('/')}/{self.model.name}"
        resources = (f"{base}/infer", f"{base}/versions/{{version}}/infer")
        metrics: dict[str, cloudwatch.IMetric] = {}
        for i, resource in enumerate(resources):
            dims = {
                "ApiName": api_name,
                "Stage": stage_name,
                "Method": "POST",
                "Resource": resource,
            }
            for key, metric_name in (("e", "5XXError"), ("c", "Count")):
                metrics[f"{key}{i}"] = cloudwatch.Metric(
                    namespace="AWS/ApiGateway",
                    metric_name=metric_name,
                    dimensions_map=dims,
                    statistic="Sum",
                    period=ALARM_PERIOD,
                )
        return cloudwatch.MathExpression(
            expression="100 * (FILL(e0, 0) + FILL(e1, 0)) / (FILL(c0, 0) + FILL(c1, 0))",
            using_metrics=metrics,
            period=ALARM_PERIOD,
            label=f"{self.model.name} infer 5xx %",
        )
