"""The served graph saved as onnxruntime's CPU optimizer leaves it, so that a Lambda sandbox's
session creation runs no optimizer (minilm: about a third of its session creation).

Only where no optimizer pass can depend on the CPU that runs it:
- "extended" level, never "all": that level's layout transforms (NCHWc, NHWC for Conv graphs)
  pick kernels for the CPU they run on (onnxruntime warns so itself); graphs with a Conv are
  not saved at all, so a serving CPU still gets those transforms;
- no QuantizeLinear / DequantizeLinear: whether a QDQ group fuses into an int8 kernel is
  decided per CPU at session creation (onnxruntime's QDQIsInt8Allowed);
- integer weights that cannot saturate (onnxlift/builder/integer_audit.py): the extended level's
  Avx2WeightS8ToU8Transformer moves s8 weights outside [-64, 64] to u8 only on x86 CPUs without
  VNNI (what `session.x64quantprecision` asks for), so a graph saved on a VNNI machine would
  keep weights an AVX2 Lambda must convert; within [-64, 64] the pass changes nothing anywhere;
- no external data (the optimizer's saved copy would need its own data file);
- the CPU architecture is recorded: constant folding ran on the build's, so a session on
  another architecture optimizes the graph itself.
The build then serves the parity set through both (the graph as quantized, optimized at
session creation; the saved graph, not optimized again), keeps the saved one only when every
output is bit-identical and its weights still fit the function's memory, and falls back to
the graph as quantized on any failure. The integer audit and the exact integer reference read
the graph as quantized (work/model.int8.onnx), of which the saved one is that proven equal
copy.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnxlift_serving.session import create_session

__all__ = ["CPU_DEPENDENT_OPS", "preoptimize"]

# QDQ (fused per CPU) and convolutions (laid out per CPU at the "all" level)
CPU_DEPENDENT_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "Conv", "ConvInteger", "QLinearConv", "ConvTranspose"}
)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def preoptimize(
    source: Path, target: Path, *, weights_cannot_saturate: bool
) -> dict[str, Any] | None:
    """Write `target`, the optimized `source`, and return the manifest entry
    (onnxlift_serving.session.PREOPTIMIZED_KEY); None where it is not done, and why not is
    the module's docstring. `weights_cannot_saturate`: the integer audit's answer for
    `source` (True for a graph without integer weights)."""
    model = onnx.load(str(source), load_external_data=False)
    if not weights_cannot_saturate or _has_external_data(model):
        return None
    if any(n.op_type in CPU_DEPENDENT_OPS for n in model.graph.node):
        return None
    create_session(
        source,
        threads=1,
        providers=["CPUExecutionProvider"],
        optimization=ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        save_optimized=target,
    )
    return {"level": "extended", "onnxruntime": ort.__version__, "machine": platform.machine()}
