"""powertools' CloudWatch EMF metrics, with what stock powertools repeats per request done once.

The inference handler adds one metric per request and flushes one EMF line. Stock powertools
validates the metric's name, unit and resolution on every add, formats debug messages even
with debug logging off, rebuilds the same document skeleton, re-adds and re-validates the same
dimensions and builds a fresh json.JSONEncoder on every flush: together over 100 us of a
request once onnxruntime's run has evicted the interpreter's caches
(`scripts/handler_overhead.py --parts`). `RequestMetricsProvider`:
- checks a (name, unit, resolution) once, through powertools' own `add_metric`, then only
  appends values;
- serializes a flush through powertools' own `serialize_metric_set` and `clear_metrics`, and
  remembers the outcome; the next flush of the same shape (metrics, units, dimensions,
  namespace, service, defaults; no metadata, extra dimension sets or fixed timestamp) writes
  that document with its own timestamp and values, with orjson (a flush powertools
  serializes is written with json, as powertools writes it);
- reads POWERTOOLS_METRICS_DISABLED / POWERTOOLS_DEV once, at init (Lambda's environment is
  fixed for a sandbox's life; stock powertools reads them at every flush).
Its lines parse to what stock powertools writes, flush after flush and across changes of
shape: tests/serving/test_request_metrics.py.

Only the Lambda handler imports this module (the SageMaker image has no powertools).
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
from aws_lambda_powertools.metrics import Metrics, MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import (
    AmazonCloudWatchEMFProvider,
)
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.constants import MAX_METRICS

__all__ = ["RequestMetricsProvider", "request_metrics"]

CHECKED_MAX = 256  # (name, unit, resolution)s remembered as checked; more go through powertools


class RequestMetricsProvider(AmazonCloudWatchEMFProvider):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # (name, unit, resolution) as added -> (unit, resolution) as powertools stored them
        self._checked: dict[tuple[str, Any, Any], tuple[str, int]] = {}
        self._disabled = is_metrics_disabled()
        self._steady: _Steady | None = None  # the last flush's shape (see flush_metrics)

    def add_metric(
        self, name: str, unit: MetricUnit | str, value: float, resolution: Any = 60
    ) -> None:
        key: tuple[str, Any, Any] | None = (name, unit, resolution)
        try:
            checked = self._checked.get(key)
        except TypeError:  # an unhashable unit or resolution: powertools' path, uncached
            key, checked = None, None
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
            if stored is not None and key is not None and len(self._checked) < CHECKED_MAX:
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
        key = self._shape()
        steady = self._steady
        if steady is None or steady.key != key or self.default_dimensions != steady.defaults:
            self._flush_learning(key)
            return
        # The same shape as the flush powertools serialized: its document with this flush's
        # timestamp and values, then its clear_metrics' outcome.
        document: dict[str, Any] = {
            "_aws": {"Timestamp": int(time.time() * 1000), "CloudWatchMetrics": steady.declared},
            **steady.dimensions,
        }
        for name, metric in self.metric_set.items():
            document[name] = metric["Value"]
        # orjson here: the document holds only what powertools wrote last time (str names,
        # units and dimension values) and this flush's float values
        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        self.metric_set.clear()
        self.dimension_set.clear()
        self.dimension_set.update(steady.cleared)

    def _shape(self) -> tuple[Any, ...] | None:
        """What a flush's document depends on besides values and time; None where it depends
        on more than this fast path keeps (metadata, extra dimension sets, a fixed timestamp)."""
        if self.metadata_set or self.dimension_sets or self.timestamp is not None:
            return None
        metrics = [(n, m["Unit"], m["StorageResolution"]) for n, m in self.metric_set.items()]
        dimensions = tuple(self.dimension_set.items())
        return (self.namespace, self.service, tuple(metrics), dimensions)

    def _flush_learning(self, key: tuple[Any, ...] | None) -> None:
        """powertools' own serialization and clear; remembered for the next flush of this shape."""
        document = self.serialize_metric_set()
        # json, as powertools writes: this document may carry metadata orjson would refuse
        # (non-str keys, numpy scalars) or write otherwise (NaN)
        sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
        self.clear_metrics()
        if key is None:
            self._steady = None
            return
        (declared,) = document["_aws"]["CloudWatchMetrics"]  # one dimension set: no extras
        (names,) = declared["Dimensions"]
        self._steady = _Steady(
            key=key,
            declared=document["_aws"]["CloudWatchMetrics"],
            dimensions={name: document[name] for name in names},
            cleared=dict(self.dimension_set),
            defaults=dict(self.default_dimensions),
        )


@dataclass(frozen=True)
class _Steady:
    """A flush powertools serialized, for the next ones of the same shape."""

    key: tuple[Any, ...]  # RequestMetricsProvider._shape() before that flush
    declared: list[dict[str, Any]]  # _aws.CloudWatchMetrics: namespace, dimensions, units
    dimensions: dict[str, str]  # the dimension values the document carried
    cleared: dict[str, str]  # the dimension set clear_metrics left (the defaults)
    defaults: dict[str, Any]  # default_dimensions then


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
