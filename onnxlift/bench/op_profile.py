"""Where the time goes: onnxruntime's per-node profile, by op type, INT8 against fused FP32.

    python -m onnxlift.bench.op_profile [--model minilm] [--batch 1 8] [--runs 50]

Each model runs in a session from onnxlift_serving.session.create_session (the served
settings, one thread) with onnxruntime's profiler on, INT8 and FP32 calls alternating; the
warm-up calls are dropped and each node's kernel time is averaged over the timed calls.
The table shows, per op type, the ms one call spends in it; below it, what a 2x INT8 would
need: FP32's node time / 2 against INT8's, split into the integer kernels (the part
quantization speeds up) and everything else (FP32 kernels left in the INT8 graph and the
quantization overhead around the integer MatMuls).
If "everything else" alone is past FP32 / 2, no integer kernel can reach 2x.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The op types whose kernels do integer arithmetic (or exist only to feed it): what a faster
# integer scheme can shrink. Every other op type in an INT8 graph runs the same FP32 kernel
# as in the FP32 graph, or is glue around the integer MatMuls (Cast, Mul, Add, Gather...).
INTEGER_OPS = frozenset(
    {
        "DynamicQuantizeMatMul",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QAttention",
        "QEmbedLayerNormalization",
        "QLinearMatMul",
        "QGemm",
        "QuantizeLinear",
        "DequantizeLinear",
        "MatMulNBits",
        "DynamicQuantizeLSTM",
        "ConvInteger",
        "QLinearConv",
    }
)
TOP_NODES = 8


@dataclass(frozen=True)
class OpProfile:
    """Mean ms per call spent in each op type and each node (kernel time only)."""

    calls: int
    by_type: dict[str, float]
    by_node: dict[str, tuple[str, float]]  # node name -> (op type, ms)

    @property
    def total_ms(self) -> float:
        return sum(self.by_type.values())


def parse_profile(events: list[dict[str, Any]], warmup: int) -> OpProfile:
    """An OpProfile from onnxruntime's profile JSON, without the first `warmup` runs."""
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    if len(runs) <= warmup:
        raise ValueError(f"the profile has {len(runs)} runs, {warmup} of them warm-up")
    start = runs[warmup]
    nodes: dict[str, float] = defaultdict(float)
    types: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            name = e["name"].removesuffix("_kernel_time")
            nodes[name] += e["dur"]
            types[name] = e["args"]["op_name"]
    calls = len(runs) - warmup
    by_node = {n: (types[n], us / calls / 1e3) for n, us in nodes.items()}
    by_type: Counter[str] = Counter()
    for op_type, ms in by_node.values():
        by_type[op_type] += ms
    return OpProfile(calls, dict(by_type.most_common()), by_node)


def profile_models(
    models: list[Path], feeds: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 5
) -> list[OpProfile]:
    """Profile `runs` calls of each model on `feeds` in served-settings sessions, one thread,
    the models' calls interleaved so that noise on the machine hits each alike."""
    from onnxlift_serving.session import create_session, run_options

    with tempfile.TemporaryDirectory(prefix="onnxlift-profile-") as tmp:
        sessions = [
            create_session(model, threads=1, profile_prefix=str(Path(tmp) / f"profile{i}"))
            for i, model in enumerate(models)
        ]
        for _ in range(warmup + runs):
            for session in sessions:
                session.run(None, feeds, run_options())
        files = [Path(session.end_profiling()) for session in sessions]
        return [parse_profile(json.loads(f.read_text()), warmup) for f in files]


def profile_model(
    model: Path, feeds: dict[str, np.ndarray], *, runs: int = 50, warmup: int = 5
) -> OpProfile:
    """Profile `runs` calls of one model (see profile_models)."""
    return profile_models([model], feeds, runs=runs, warmup=warmup)[0]


def compare(fp32: OpProfile, int8: OpProfile) -> dict[str, Any]:
    """The comparison results.json keeps: per op type, the top INT8 nodes, the 2x budget."""
    kinds = sorted(
        set(fp32.by_type) | set(int8.by_type),
        key=lambda k: -max(fp32.by_type.get(k, 0.0), int8.by_type.get(k, 0.0)),
    )
    integer = sum(ms for k, ms in int8.by_type.items() if k in INTEGER_OPS)
    other = int8.total_ms - integer
    top = sorted(int8.by_node.items(), key=lambda item: -item[1][1])[:TOP_NODES]
    return {
        "calls": {"fp32": fp32.calls, "int8": int8.calls},
        "op_types": {
            k: {"fp32_ms": fp32.by_type.get(k, 0.0), "int8_ms": int8.by_type.get(k, 0.0)}
            for k in kinds
        },
        "top_int8_nodes": [{"node": n, "op_type": t, "ms": ms} for n, (t, ms) in top],
        "fp32_ms": fp32.total_ms,
        "int8_ms": int8.total_ms,
        "speedup": fp32.total_ms / int8.total_ms if int8.total_ms else None,
        "target_ms": fp32.total_ms / 2,
        "int8_integer_ms": integer,
        "int8_other_ms": other,
        # what INT8 would reach if its integer kernels took no time at all
        "ceiling": fp32.total_ms / other if other else None,
    }


def explain(c: dict[str, Any]) -> list[str]:
    """The distance to 2x in words, from a `compare` result."""
    lines = [
        f"Node time per call: FP32 {c['fp32_ms']:.3f} ms, INT8 {c['int8_ms']:.3f} ms "
        f"({c['speedup']:.2f}x). 2x needs INT8 at {c['target_ms']:.3f} ms: "
        f"{c['int8_ms'] - c['target_ms']:+.3f} ms to go.",
        f"INT8 splits into integer kernels {c['int8_integer_ms']:.3f} ms and everything else "
        f"(FP32 kernels left in the graph, glue around the integer MatMuls) "
        f"{c['int8_other_ms']:.3f} ms.",
    ]
    if c["int8_ms"] <= c["target_ms"]:
        lines.append(
            f"2x is reached: the integer kernels could take "
            f"{c['target_ms'] - c['int8_other_ms']:.3f} ms and still hold it."
        )
    elif c["int8_other_ms"] >= c["target_ms"]:
        lines.append(
            f"Everything else alone is past FP32 / 2: with integer kernels taking no time at "
            f"all INT8 would reach {c['ceiling']:.2f}x, so 2x needs the rest of the graph "
            f"faster (or quantized), not faster integer kernels."
        )
    else:
        budget = c["target_ms"] - c["int8_other_ms"]
        lines.append(
            f"With the rest as it is, the integer kernels must take at most {budget:.3f} ms "
            f"(now {c['int8_integer_ms']:.3f} ms, {c['int8_integer_ms'] / budget:.2f}x too "
            f"slow); if they took no time INT8 would reach {c['ceiling']:.2f}x."
        )
    return lines


def table(c: dict[str, Any], rows: int = 14) -> list[str]:
    """Markdown: time by op type, INT8 vs FP32, then the largest INT8 nodes."""
    out = ["| op type | FP32 ms | INT8 ms | INT8 - FP32 ms |", "|---|---|---|---|"]
    for kind, t in list(c["op_types"].items())[:rows]:
        mark = " (integer)" if kind in INTEGER_OPS else ""
        delta = t["int8_ms"] - t["fp32_ms"]
        out.append(f"| {kind}{mark} | {t['fp32_ms']:.3f} | {t['int8_ms']:.3f} | {delta:+.3f} |")
    out.append(
        f"| **all nodes** | {c['fp32_ms']:.3f} | {c['int8_ms']:.3f} | "
        f"{c['int8_ms'] - c['fp32_ms']:+.3f} |"
    )
    nodes = ", ".join(f"{n['node']} ({n['op_type']}) {n['ms']:.3f}" for n in c["top_int8_nodes"])
    return [*out, "", f"Largest INT8 nodes, ms per call: {nodes}."]


def run_op_profile(
    int8: Path, fp32: Path, feeds_by_batch: dict[int, dict[str, np.ndarray]], runs: int
) -> dict[str, Any]:
    """results.json's `op_profile`: one comparison per batch size, the two files' calls
    interleaved."""
    batches = {}
    for batch, feeds in feeds_by_batch.items():
        # fewer calls at larger batches: the profile is per call, not a latency figure
        n = max(5, runs // max(1, batch // 4))
        fp32_profile, int8_profile = profile_models([fp32, int8], feeds, runs=n)
        batches[str(batch)] = compare(fp32_profile, int8_profile)
        batches[str(batch)]["sequence_length"] = int(next(iter(feeds.values())).shape[-1])
    return {"threads": 1, "batches": batches}


def render(profile: dict[str, Any]) -> list[str]:
    """The bench report's section body."""
    out = []
    for batch, c in profile["batches"].items():
        head = f"Batch {batch} ({c['sequence_length']} tokens), mean of "
        head += f"{c['calls']['int8']} profiled calls, kernel time per call:"
        out += [head, "", *table(c), "", *(f"- {line}" for line in explain(c)), ""]
    return out[:-1]


PROFILED_BATCHES = (1, 8)


def feeds_for(artifact: Path, sentences: list[str], batches: list[int]) -> dict[int, Any]:
    """The served pipeline's tensors for the first b sentences, per batch size b."""
    from onnxlift.bench.corpus import batch
    from onnxlift.bench.serving import load_pipeline

    pipeline = load_pipeline(artifact, threads=1)
    return {b: pipeline.prepare(batch(sentences, b)) for b in batches}


def bench_op_profile(
    build: Path, artifact: Path, sentences: list[str], batches: list[int], runs: int
) -> dict[str, Any]:
    """The bench's section: the served INT8 (`artifact`, staged from `build`) against the
    build's fused FP32 on the bench sentences."""
    feeds = feeds_for(artifact, sentences, batches)
    fp32 = build / "work" / "model.fp32.fused.onnx"
    return run_op_profile(artifact / "model.onnx", fp32, feeds, runs)


def _profile_build(name: str, batches: list[int], runs: int, int8: Path | None) -> Any:
    from onnxlift import paths
    from onnxlift.bench.corpus import bench_sentences
    from onnxlift.bench.serving import stage_artifact
    from onnxlift.builder.build import latest_build
    from onnxlift.spec import load_spec

    spec = load_spec(paths.models_dir(paths.project_root()) / name)
    build = latest_build(spec)
    if build is None:
        raise SystemExit(f"build {name} first: onnxlift build {name}")
    sentences = bench_sentences(spec.folder / spec.parity.inputs)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = stage_artifact(build, int8 or build / "model.onnx", Path(tmp) / name)
        return bench_op_profile(build, artifact, sentences, batches, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--int8", type=Path, help="another INT8 file than the build's")
    args = parser.parse_args()
    profile = _profile_build(args.model, args.batch, args.runs, args.int8)
    print("\n".join(render(profile)))


if __name__ == "__main__":
    main()
