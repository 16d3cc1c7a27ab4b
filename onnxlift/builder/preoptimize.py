"""The served graph saved as onnxruntime's CPU optimizer leaves it, so that a Lambda sandbox's
session creation runs no optimizer (minilm: about a third of its session creation).

Only where the saved graph answers as the optimizer would on any CPU:
- "extended" level, never "all": that level's layout transforms may pick kernels for the
  build machine's CPU (onnxruntime warns so itself);
- no QuantizeLinear / DequantizeLinear: whether a QDQ group fuses into an int8 kernel is
  decided per CPU at session creation (onnxruntime's QDQIsInt8Allowed), and a saved graph
  would keep the build machine's decision;
- no external data (the optimizer's saved copy would need its own data file).
The build then serves the parity set through both (the graph as quantized, optimized at
session creation; the saved graph, not optimized again) and keeps the saved one only when
every output is bit-identical. The integer audit and the exact integer reference read the
graph as quantized (work/model.int8.onnx), of which the saved one is that proven equal copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnxlift_serving.session import create_session

__all__ = ["QDQ_OPS", "preoptimize"]

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def preoptimize(source: Path, target: Path) -> dict[str, Any] | None:
    """Write `target`, the optimized `source`, and return the manifest entry
    (onnxlift_serving.session.PREOPTIMIZED_KEY); None where it is not done, and why not is
    the module's docstring."""
    model = onnx.load(str(source), load_external_data=False)
    if _has_external_data(model) or any(n.op_type in QDQ_OPS for n in model.graph.node):
        return None
    create_session(
        source,
        threads=1,
        providers=["CPUExecutionProvider"],
        optimization=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        save_optimized=target,
    )
    return {"level": "extended", "onnxruntime": ort.__version__}
