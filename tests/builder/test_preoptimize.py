"""The served graph saved after onnxruntime's CPU optimizer (onnxlift/builder/preoptimize.py):
what the build keeps, where it declines, and how serving opens it."""

from __future__ import annotations

import collections
import platform
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving import session as serving_session
from onnxlift_serving.artifact import load_artifact
from onnxlift_serving.pipelines import build_pipeline
from onnxlift_serving.session import PREOPTIMIZED_KEY, create_session, optimization_for

from onnxlift.builder.preoptimize import preoptimize

DISABLED, ENABLED = (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
)


def _ops(path: Path) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_minilm_is_served_optimized_and_answers_as_the_quantized_graph(minilm_build: Any) -> None:
    entry = minilm_build.manifest[PREOPTIMIZED_KEY]
    assert entry == {
        "level": "extended",
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
    }
    served, quantized = (
        minilm_build.folder / "model.onnx",
        minilm_build.folder / "work/model.int8.onnx",
    )
    # the optimizer's fusions are in the file: no DynamicQuantizeLinear + MatMulInteger left
    assert _ops(quantized)["MatMulInteger"] >= 18 and _ops(served)["MatMulInteger"] == 0
    assert _ops(served)["DynamicQuantizeMatMul"] == _ops(quantized)["MatMulInteger"]
    artifact = load_artifact(minilm_build.folder)
    pipeline = build_pipeline(
        artifact, create_session(served, optimization=optimization_for(artifact.manifest, []))
    )
    online = build_pipeline(artifact, create_session(quantized))  # optimized at creation
    spec = minilm_build.spec
    texts = [t for t in (spec.folder / spec.parity.inputs).read_text().splitlines() if t.strip()]
    for start in range(0, len(texts), 16):
        batch = {"text": np.array(texts[start : start + 16], dtype=object)}
        got, want = pipeline.run(batch), online.run(batch)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_serving_optimizes_only_what_this_onnxruntime_did_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    here = {"level": "extended", "onnxruntime": ort.__version__, "machine": platform.machine()}
    done = {PREOPTIMIZED_KEY: here}
    assert optimization_for(done, []) == DISABLED
    assert optimization_for({}, []) == ENABLED
    other = {PREOPTIMIZED_KEY: here | {"onnxruntime": "1.0.0"}}
    assert optimization_for(other, []) == ENABLED
    # constant folding ran on the build's architecture
    elsewhere = {PREOPTIMIZED_KEY: here | {"machine": "riscv64"}}
    assert optimization_for(elsewhere, []) == ENABLED
    assert optimization_for({PREOPTIMIZED_KEY: "extended"}, []) == ENABLED
    # a GPU provider that is there gets its own fusions
    monkeypatch.setattr(
        serving_session.ort,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    assert optimization_for(done, ["CUDAExecutionProvider"]) == ENABLED
    assert optimization_for(done, []) == DISABLED


def _matmul_model(qdq: bool) -> onnx.ModelProto:
    # raw bytes, so that onnx can move it to an external data file
    eye = np.eye(4, dtype=np.float32).tobytes()
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], eye, raw=True)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    initializers = [weight]
    if qdq:
        scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
        zero = helper.make_tensor("z", TensorProto.UINT8, [], [128])
        initializers += [scale, zero]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
            helper.make_node("MatMul", ["xd", "w"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_declines_what_another_cpu_would_optimize_differently(tmp_path: Path) -> None:
    plain, qdq = tmp_path / "plain.onnx", tmp_path / "qdq.onnx"
    onnx.save(_matmul_model(qdq=False), str(plain))
    onnx.save(_matmul_model(qdq=True), str(qdq))
    assert preoptimize(plain, tmp_path / "plain.opt.onnx", weights_cannot_saturate=True)
    assert (tmp_path / "plain.opt.onnx").is_file()
    # whether QDQ fuses into an int8 kernel is decided per CPU: never saved
    assert preoptimize(qdq, tmp_path / "qdq.opt.onnx", weights_cannot_saturate=True) is None
    assert not (tmp_path / "qdq.opt.onnx").exists()
    # s8 weights past [-64, 64] are moved to u8 at session creation on AVX2 alone
    assert preoptimize(plain, tmp_path / "s8.opt.onnx", weights_cannot_saturate=False) is None
    assert not (tmp_path / "s8.opt.onnx").exists()
    conv = tmp_path / "conv.onnx"
    onnx.save(_conv_model(), str(conv))
    assert preoptimize(conv, tmp_path / "conv.opt.onnx", weights_cannot_saturate=True) is None
    external = tmp_path / "external.onnx"
    onnx.save(_matmul_model(qdq=False), str(external), save_as_external_data=True, size_threshold=0)
    (saved,) = onnx.load(str(external), load_external_data=False).graph.initializer
    assert saved.data_location == TensorProto.EXTERNAL
    assert preoptimize(external, tmp_path / "ext.opt.onnx", weights_cannot_saturate=True) is None


def _conv_model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_saved_graph_that_answers_differently_is_not_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxlift.builder import build

    source_graph = tmp_path / "model.int8.onnx"
    onnx.save(_matmul_model(qdq=False), str(source_graph))
    calls: list[str] = []

    def served(folder: Path, inputs: Any, *, threads: int, batch: int) -> dict[str, np.ndarray]:
        calls.append(folder.name)
        return {"y": np.full(2, 1.0 if folder.name == "draft-online" else 1.5, np.float32)}

    monkeypatch.setattr(build, "serve_batched", served)
    spec = SimpleNamespace(name="m", serving=SimpleNamespace(max_batch=16, memory_mb=2048))
    source = SimpleNamespace(assets={}, parity_inputs={"x": np.zeros((2, 1, 4), np.float32)})
    manifest: dict[str, Any] = {
        "name": "m",
        "quantization": {"integer_kernels": {"weights_cannot_saturate": True}},
    }
    lines: list[str] = []
    chosen = build._preoptimized(
        spec, source, source_graph, manifest, tmp_path, threads=1, report=lines.append
    )
    assert calls == ["draft-online", "draft-saved"]
    assert chosen == source_graph and PREOPTIMIZED_KEY not in manifest
    assert "answers differently" in lines[-1]
    # the same two answers alike: the saved graph is served
    monkeypatch.setattr(build, "serve_batched", lambda *a, **k: {"y": np.ones(2, np.float32)})
    chosen = build._preoptimized(
        spec, source, source_graph, manifest, tmp_path, threads=1, report=lines.append
    )
    assert chosen == tmp_path / "model.optimized.onnx" and PREOPTIMIZED_KEY in manifest
