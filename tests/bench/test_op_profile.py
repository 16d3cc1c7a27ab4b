"""The per-op profile: onnxruntime's profiler JSON, summed by op type, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from onnxlift.bench import op_profile, report


def tiny_models(folder: Path) -> tuple[Path, Path]:
    """FP32 x @ W -> Relu -> @ V, and its dynamic INT8 quantization."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(64, 64)).astype(np.float32), name)
        for name in ("W", "V")
    ]
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="first"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "V"], ["y"], name="second"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
        weights,
    )
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8


def test_profile_counts_the_timed_calls_and_every_node(tmp_path: Path) -> None:
    fp32, _ = tiny_models(tmp_path)
    feeds = {"x": np.ones((4, 64), np.float32)}
    profile = op_profile.profile_model(fp32, feeds, runs=7, warmup=3)
    assert profile.calls == 7
    assert set(profile.by_type) == {"MatMul", "Relu"}
    assert {n: t for n, (t, _) in profile.by_node.items()} == {
        "first": "MatMul",
        "relu": "Relu",
        "second": "MatMul",
    }
    assert profile.by_type["MatMul"] == profile.by_node["first"][1] + profile.by_node["second"][1]


def test_warmup_runs_are_dropped() -> None:
    def run(ts: int, dur: int) -> list[dict]:
        return [
            {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur + 2},
            {
                "cat": "Node",
                "name": "mm_kernel_time",
                "ts": ts + 1,
                "dur": dur,
                "args": {"op_name": "MatMul"},
            },
        ]

    events = run(0, 9_000) + run(100, 2_000) + run(200, 4_000)  # the first run is warm-up
    profile = op_profile.parse_profile(events, warmup=1)
    assert profile.calls == 2
    assert profile.by_type == {"MatMul": 3.0}  # (2,000 + 4,000) us / 2 calls, in ms


def test_table_compares_int8_with_fp32_by_op_type(tmp_path: Path) -> None:
    fp32, int8 = tiny_models(tmp_path)
    feeds = {1: {"x": np.ones((1, 64), np.float32)}}
    profile = op_profile.run_op_profile(int8, fp32, feeds, runs=5)
    result = profile["batches"]["1"]
    assert result["op_types"]["MatMul"]["fp32_ms"] > 0
    integer = [k for k in result["op_types"] if k in op_profile.INTEGER_OPS]
    assert integer, result["op_types"]  # the INT8 file runs integer kernels
    assert result["int8_integer_ms"] > 0
    assert abs(result["int8_integer_ms"] + result["int8_other_ms"] - result["int8_ms"]) < 1e-9
    text = "\n".join(op_profile.render(profile))
    assert "| op type | FP32 ms | INT8 ms | INT8 - FP32 ms |" in text
    assert f"| {integer[0]} (integer) |" in text
    assert "2x needs INT8 at" in text
    heading, body = report.SECTIONS["op_profile"]
    assert body(profile) == op_profile.render(profile)
    assert "INT8 vs FP32" in heading.format_map(profile)


def test_explain_says_when_no_integer_kernel_can_reach_2x() -> None:
    c = {
        "fp32_ms": 10.0,
        "int8_ms": 8.0,
        "speedup": 1.25,
        "target_ms": 5.0,
        "int8_integer_ms": 2.0,
        "int8_other_ms": 6.0,
        "ceiling": 10.0 / 6.0,
    }
    text = " ".join(op_profile.explain(c))
    assert "Everything else alone is past FP32 / 2" in text
    assert "1.67x" in text
    c |= {"int8_integer_ms": 5.0, "int8_other_ms": 3.0, "ceiling": 10.0 / 3.0}
    text = " ".join(op_profile.explain(c))
    assert "at most 2.000 ms" in text and "2.50x too slow" in text
    c |= {"int8_ms": 4.0, "int8_integer_ms": 1.0}
    assert "2x is reached" in " ".join(op_profile.explain(c))
