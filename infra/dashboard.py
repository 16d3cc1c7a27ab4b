"""One CloudWatch dashboard per deployment: a row per model function, a row per endpoint."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct
from onnxlift_serving import contract

from infra.inference_function import InferenceFunction
from infra.sagemaker_endpoint import SageMakerEndpoint

__all__ = ["ENDPOINT_WIDGETS", "MODEL_WIDGETS", "OperationsDashboard"]

PERIOD = Duration.minutes(1)
# Widget titles per model / endpoint (the tests look for each).
MODEL_WIDGETS = (
    "invocations",
    "duration",
    "InferLatency",
    "errors and throttles",
    "concurrent executions",
)
ENDPOINT_WIDGETS = ("invocations", "model latency", "4xx/5xx", "CPU/GPU utilization")
SAGEMAKER = "AWS/SageMaker"
SAGEMAKER_INSTANCE = "/aws/sagemaker/Endpoints"  # the per-instance CPU/GPU metrics


def _title(name: str, widget: str) -> str:
    return f"{name}: {widget}"


class OperationsDashboard(Construct):
    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        name: str,
        functions: Sequence[InferenceFunction],
        endpoints: Sequence[SageMakerEndpoint],
    ) -> None:
        super().__init__(scope, id)
        # Dashboard names are global to the account, not per region: the region keeps a
        # second region's stack of the same environment from colliding with this one.
        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{name}-{Stack.of(self).region}",
            default_interval=Duration.hours(3),
        )
        for fn in functions:
            self.dashboard.add_widgets(*self._model_widgets(fn))
        for endpoint in endpoints:
            self.dashboard.add_widgets(*self._endpoint_widgets(endpoint))

    @staticmethod
    def _model_widgets(fn: InferenceFunction) -> list[cloudwatch.IWidget]:
        """Alias metrics (what the API invokes, both versions during a rollout); throttles
        and concurrency are the function's (its reserved concurrency is shared)."""
        name, alias = fn.model.name, fn.alias
        infer_latency = cloudwatch.Metric(
            namespace=contract.POWERTOOLS_NAMESPACE,
            metric_name="InferLatency",
            # Exactly the handler's dimension set (contract): CloudWatch matches it whole.
            dimensions_map={
                contract.METRIC_SERVICE_DIMENSION: fn.model.function_name,
                contract.METRIC_MODEL_DIMENSION: name,
            },
            period=PERIOD,
        )
        graph = cloudwatch.GraphWidget
        return [
            graph(
                title=_title(name, "invocations"),
                left=[alias.metric_invocations(statistic="Sum", period=PERIOD)],
            ),
            graph(
                title=_title(name, "duration"),
                left=[
                    alias.metric_duration(statistic=s, period=PERIOD, label=s)
                    for s in ("p50", "p99", "Maximum")
                ],
            ),
            graph(
                title=_title(name, "InferLatency"),
                left=[infer_latency.with_(statistic=s, label=s) for s in ("p50", "p99")],
            ),
            graph(
                title=_title(name, "errors and throttles"),
                left=[
                    alias.metric_errors(statistic="Sum", period=PERIOD),
                    fn.function.metric_throttles(statistic="Sum", period=PERIOD),
                ],
            ),
            graph(
                title=_title(name, "concurrent executions"),
                left=[
                    fn.function.metric("ConcurrentExecutions", statistic="Maximum", period=PERIOD)
                ],
            ),
        ]

    @staticmethod
    def _endpoint_widgets(endpoint: SageMakerEndpoint) -> list[cloudwatch.IWidget]:
        name = endpoint.model.name
        dims = {
            "EndpointName": endpoint.model.endpoint_name,
            "VariantName": contract.SAGEMAKER_VARIANT,
        }

        def metric(
            metric_name: str, statistic: str, namespace: str = SAGEMAKER
        ) -> cloudwatch.Metric:
            return cloudwatch.Metric(
                namespace=namespace,
                metric_name=metric_name,
                dimensions_map=dims,
                statistic=statistic,
                period=PERIOD,
            )

        graph = cloudwatch.GraphWidget
        return [
            graph(title=_title(name, "invocations"), left=[metric("Invocations", "Sum")]),
            graph(
                title=_title(name, "model latency"),
                left=[metric("ModelLatency", s).with_(label=s) for s in ("p50", "p99")],
            ),
            graph(
                title=_title(name, "4xx/5xx"),
                left=[
                    metric("Invocation4XXErrors", "Sum"),
                    metric("Invocation5XXErrors", "Sum"),
                ],
            ),
            graph(
                title=_title(name, "CPU/GPU utilization"),
                left=[
                    metric("CPUUtilization", "Average", SAGEMAKER_INSTANCE),
                    metric("GPUUtilization", "Average", SAGEMAKER_INSTANCE),
                ],
            ),
        ]
