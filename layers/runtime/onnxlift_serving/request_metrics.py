"""powertools' CloudWatch EMF metrics, with what stock powertools repeats per request done once.

The inference handler adds one metric per request and flushes one EMF line. Stock powertools
validates the metric's name, unit and resolution on every add, formats a debug message even
with debug logging off, reads the environment and builds a fresh json.JSONEncoder on every
flush: about 70 us of a request once onnxruntime's run has evicted the interpreter's caches
(`scripts/handler_overhead.py --parts`). `RequestMetricsProvider` checks a (name, unit,
resolution) once, through powertools' own `add_metric`, then only appends values; it reads
POWERTOOLS_METRICS_DISABLED / POWERTOOLS_DEV once, at init (Lambda's environment is fixed for a
sandbox's life), and writes powertools' own EMF document (`serialize_metric_set`) with orjson.
The lines parse to what stock powertools writes: tests/serving/test_request_metrics.py.

Only the Lambda handler imports this module (the SageMaker image has no powertools).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

import orjson
from aws_lambda_powertools.metrics import Metrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.constants import MAX_METRICS

__all__ = ["RequestMetricsProvider", "request_metrics"]


class RequestMetricsProvider(AmazonCloudWatchEMFProvider):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # (name, unit, resolution) as added -> (unit, resolution) as powertools stored them
        self._checked: dict[tuple[str, Any, Any], tuple[str, int]] = {}
        self._disabled = is_metrics_disabled()

    def add_metric(
        self, name: str, unit: MetricUnit | str, value: float, resolution: Any = 60
    ) -> None:
        key = (name, unit, resolution)
        checked = self._checked.get(key)
        metric = self.metric_set.get(name)
        # powertools' own path the first time, for a non-float, and for the add that fills
        # a metric to its EMF limit (powertools flushes there)
        if (
            checked is None
            or type(value) is not float
            or (metric is not None and len(metric["Value"]) >= MAX_METRICS - 1)
            or (metric is None and len(self.metric_set) >= MAX_METRICS - 1)
        ):
            super().add_metric(name=name, unit=unit, value=value, resolution=resolution)
            stored = self.metric_set.get(name)
            if stored is not None:
                self._checked[key] = (stored["Unit"], stored["StorageResolution"])
            return
        if metric is None:
            metric = self.metric_set[name] = defaultdict(list)
        metric["Unit"], metric["StorageResolution"] = checked
        metric["Value"].append(value)

    def flush_metrics(self, raise_on_empty_metrics: bool = False) -> None:
        if self._disabled or not self.metric_set:  # powertools' warning or error
            super().flush_metrics(raise_on_empty_metrics)
            return
        document = orjson.dumps(self.serialize_metric_set())
        sys.stdout.write(document.decode() + "\n")  # one write, as print() would send it
        self.clear_metrics()


def request_metrics(**kwargs: Any) -> Metrics:
    """A powertools `Metrics` (the decorator, cold-start metric and dimensions users know)
    writing through `RequestMetricsProvider`; kwargs as `Metrics` takes them."""
    metrics = Metrics(**kwargs)
    metrics.provider = RequestMetricsProvider(
        namespace=kwargs.get("namespace"),
        service=kwargs.get("service"),
        metric_set=metrics.metric_set,
        dimension_set=metrics.dimension_set,
        metadata_set=metrics.metadata_set,
        default_dimensions=metrics.default_dimensions,
        function_name=kwargs.get("function_name"),
    )
    return metrics
