"""The handler's EMF provider writes what stock powertools writes, with its checks kept."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aws_lambda_powertools.metrics import (
    MetricResolution,
    MetricResolutionError,
    Metrics,
    MetricUnit,
    MetricUnitError,
    MetricValueError,
)
from onnxlift_serving.request_metrics import RequestMetricsProvider, request_metrics


@pytest.fixture(autouse=True)
def _metrics_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "onnxlift-test")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "svc")
    for name in ("POWERTOOLS_METRICS_DISABLED", "POWERTOOLS_DEV"):
        monkeypatch.delenv(name, raising=False)
    yield
    Metrics().clear_metrics()  # powertools keeps metric sets at class level
    Metrics().clear_default_dimensions()


def _lines(out: str) -> list[dict[str, Any]]:
    docs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for doc in docs:
        doc["_aws"].pop("Timestamp")  # taken at serialization, a millisecond apart
    return docs


def _emitted(make: Callable[[], Metrics], adds: list[tuple], capsys: Any) -> list[dict]:
    metrics = make()
    metrics.clear_default_dimensions()  # shared with the previous Metrics (class level)
    metrics.clear_metrics()
    metrics.set_default_dimensions(model="minilm")
    capsys.readouterr()
    for name, unit, value, resolution in adds:
        metrics.add_metric(name=name, unit=unit, value=value, resolution=resolution)
    metrics.flush_metrics()
    return _lines(capsys.readouterr().out)


ADDS = [
    ("InferLatency", MetricUnit.Milliseconds, 3.25, 60),
    ("InferLatency", MetricUnit.Milliseconds, 4.5, 60),
    ("Rows", "Count", 2, 60),  # an int, and a unit as a string
    ("Rows", "Count", 3.0, 60),
    ("Fast", MetricUnit.Seconds, 0.001, MetricResolution.High),
]


def test_lines_parse_to_what_stock_powertools_writes(capsys: Any) -> None:
    ours = _emitted(request_metrics, ADDS, capsys)
    stock = _emitted(Metrics, ADDS, capsys)
    assert ours == stock and len(ours) == 1
    (doc,) = ours
    assert doc["InferLatency"] == [3.25, 4.5] and doc["Rows"] == [2.0, 3.0]
    assert doc["model"] == "minilm" and doc["service"] == "svc"


def test_the_100_value_limit_flushes_where_powertools_does(capsys: Any) -> None:
    adds = [("InferLatency", "Milliseconds", float(i), 60) for i in range(150)]
    ours = _emitted(request_metrics, adds, capsys)
    stock = _emitted(Metrics, adds, capsys)
    assert ours == stock
    assert [len(doc["InferLatency"]) for doc in ours] == [100, 50]


def _rounds(make: Callable[[], Metrics], capsys: Any) -> list[dict]:
    """Flush after flush, the shape changing between some: each change must be written as
    powertools writes it, and the steady rounds around them too."""
    metrics = make()
    metrics.clear_default_dimensions()
    metrics.clear_metrics()
    metrics.set_default_dimensions(model="minilm")
    capsys.readouterr()
    changes: list[Callable[[], None]] = [
        lambda: None,
        lambda: None,
        lambda: metrics.add_metadata(key="request", value="r-1"),  # metadata: one round
        lambda: None,
        lambda: metrics.add_dimension(name="route", value="infer"),  # one round
        lambda: metrics.add_metric(name="Rows", unit="Count", value=2.0),  # another metric
        lambda: None,
        lambda: metrics.set_default_dimensions(model="minilm", stage="prod"),  # new defaults
        lambda: None,
        lambda: setattr(metrics, "namespace", "elsewhere"),
        lambda: None,
        lambda: metrics.add_dimensions(region="eu", zone="a"),  # a second dimension set
        lambda: None,
    ]
    for index, change in enumerate(changes):
        change()
        metrics.add_metric(name="InferLatency", unit=MetricUnit.Milliseconds, value=index + 0.5)
        metrics.flush_metrics()
    return _lines(capsys.readouterr().out)


def test_flush_after_flush_matches_powertools_across_changes(capsys: Any) -> None:
    ours = _rounds(request_metrics, capsys)
    stock = _rounds(Metrics, capsys)
    assert len(ours) == 13 and ours == stock
    assert ours[2]["request"] == "r-1" and "request" not in ours[3]
    assert ours[4]["route"] == "infer" and "route" not in ours[5]
    assert ours[8]["stage"] == "prod" and ours[10]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == (
        "elsewhere"
    )


def test_checks_still_refuse_bad_metrics_after_a_good_one() -> None:
    metrics = request_metrics()
    metrics.add_metric(name="InferLatency", unit="Milliseconds", value=1.0)
    with pytest.raises(MetricUnitError):
        metrics.add_metric(name="InferLatency", unit="Fortnights", value=1.0)
    with pytest.raises(MetricValueError):
        metrics.add_metric(name="InferLatency", unit="Milliseconds", value="1")  # type: ignore[arg-type]
    with pytest.raises(MetricResolutionError):
        metrics.add_metric(name="InferLatency", unit="Milliseconds", value=1.0, resolution=5)
    assert metrics.metric_set["InferLatency"]["Value"] == [1.0]


def test_disabled_metrics_write_nothing(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metrics = request_metrics()
    assert isinstance(metrics.provider, RequestMetricsProvider)
    metrics.add_metric(name="InferLatency", unit="Milliseconds", value=1.0)
    metrics.flush_metrics()
    assert "_aws" not in capsys.readouterr().out


def test_an_empty_flush_warns_as_powertools_does(capsys: Any) -> None:
    with pytest.warns(UserWarning, match="No application metrics"):
        request_metrics().flush_metrics()
    assert capsys.readouterr().out == ""


def test_steady_flushes_skip_powertools_serialization(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    metrics = request_metrics()
    calls: list[int] = []
    real = RequestMetricsProvider.serialize_metric_set
    monkeypatch.setattr(
        RequestMetricsProvider,
        "serialize_metric_set",
        lambda self, *a, **k: calls.append(1) or real(self, *a, **k),
    )
    for value in (1.0, 2.0, 3.0, 4.0):
        metrics.add_metric(name="InferLatency", unit="Milliseconds", value=value)
        metrics.flush_metrics()
    assert len(calls) == 1  # the first flush learns the shape; the other three reuse it
    values = [doc["InferLatency"] for doc in _lines(capsys.readouterr().out)]
    assert values == [[1.0], [2.0], [3.0], [4.0]]


def _metadata_and_many_metrics(make: Callable[[], Metrics], capsys: Any) -> list[dict]:
    metrics = make()
    capsys.readouterr()
    metrics.add_metadata(key="extra", value={"nested": [1, 2], "ratio": 0.25})
    for index in range(120):  # the 100th distinct metric makes powertools flush on its own
        metrics.add_metric(name=f"M{index}", unit="Count", value=1.0)
    metrics.flush_metrics()
    return _lines(capsys.readouterr().out)


def test_metadata_and_the_100_metric_limit_are_written_as_powertools_writes(capsys: Any) -> None:
    ours = _metadata_and_many_metrics(request_metrics, capsys)
    stock = _metadata_and_many_metrics(Metrics, capsys)
    assert ours == stock
    assert [len(doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]) for doc in ours] == [100, 20]
    assert ours[0]["extra"] == {"nested": [1, 2], "ratio": 0.25}


def test_an_unhashable_unit_goes_through_powertools_as_in_stock() -> None:
    stored = []
    for make in (request_metrics, Metrics):
        metrics = make()
        metrics.clear_metrics()
        metrics.add_metric(name="X", unit=["Count"], value=1.0)  # type: ignore[arg-type]
        stored.append(dict(metrics.metric_set["X"]))
    assert stored[0] == stored[1]
