"""Integer schemes for minilm against fused FP32 at batch 1 / 8 / 32: speed, parity, and
whether the answers can depend on the CPU.

    python -m onnxlift.bench.schemes [--rounds 5] [--schemes 7bit qattn ...]
    python -m onnxlift.bench.schemes --sensitivity [--ffn] [--smooth 0.5] [--target 0.992]
    python -m onnxlift.bench.schemes --tune-alphas
    (after `onnxlift build minilm`; the variants are written next to the build's work files)

The served file (minilm's spec: MultiHeadAttention after one merged Q/K/V MatMul, padded rows
masked, outlier channels split off the FFN and Q/K/V MatMuls, all quantized 7-bit):
  7bit          reduce_range weights: no u8 x s8 pair can reach 16 bits
  7bit+setting  the same file with onnxlift's session setting (what every session gets)
The rest come from the Attention-fused FP32 graph with the FFN outlier split alone (written
under work/ as model.fp32.fused.split.onnx), the graph minilm served before:
  attention-fp32
                7bit with the fused Attention FP32 (minilm's scheme before the multihead one)
  8bit+setting  attention-fp32 with full-range s8 weights on onnxruntime's exact U8U8 path
  qattn         7bit with the fused Attention quantized too (QAttention, its Q/K/V weights 7-bit
                through the same reduce_range)
  qattn-keep3   qattn with Attention_3 left FP32 (the first greedy step below)
  qattn-mixed4 .. qattn-mixed7
                qattn with the first 4 .. 7 nodes of MIXED_KEEP left FP32
  qattn-smooth  qattn after a SmoothQuant-style migration (alpha 0.5, calibration.txt): each
                Attention input divided per channel by s, its Q/K/V weight rows times s
  qattn-smooth-tuned
                qattn-smooth with one alpha per Attention (SMOOTH_ALPHAS, chosen on
                calibration.txt)
  qattn-smooth-parity-fit
                the same with alphas fitted to the parity set itself (PARITY_FIT_ALPHAS):
                an upper bound, not a servable scheme
  qattn-smooth-keep1 .. qattn-smooth-keep3
                qattn-smooth with the first 1 .. 3 nodes of SMOOTH_KEEP left FP32
  static-qdq    static QDQ, activation scales calibrated on calibration.txt (MinMax), FFN and
                projections; onnxruntime 1.32 runs the weights' DequantizeLinear -> MatMul as
                MatMulNBits at load
  nbits8-b32 / nbits8-b128
                MatMulNBits 8-bit symmetric weights, blocks of 32 / 128, accuracy_level 4
                (int8 compute), FFN and projections; Attention FP32
--sensitivity: the gate figure with each Attention quantized alone (the rest as served), then
a greedy walk from full qattn (or qattn-smooth with --smooth ALPHA): each step returns to FP32
the candidate (the Attentions; with --ffn every quantized MatMul too) that lifts the gate figure
most, until it reaches --target. MIXED_KEEP and SMOOTH_KEEP are its answers on the minilm build.
--tune-alphas: SMOOTH_ALPHAS by coordinate ascent on calibration.txt, then the gate figure of
the result (see tune_alphas).
Columns: min cosine against the FP32 export at batch 1 on the parity texts; the build gate's
figure (sentence-transformers on the parity set, batches of 16 through the serving pipeline);
"exact": the served file against the same graph with every integer MatMul/QAttention summed in
float64 (onnxlift.builder.integer_reference), bit-identical texts of 65 and the largest s8
weight (|w| <= 64: no CPU's kernel can saturate). Timings: median of each block, best of the
rounds, one thread, interleaved so that noise hits every scheme alike; each round's ratios are
printed too, for the spread.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxlift_serving.cpu import cpu_facts
from onnxlift_serving.pipelines import load_tokenizer
from onnxlift_serving.session import INTEGER_KERNEL_CONFIG, create_session

from onnxlift import paths
from onnxlift.builder.build import calibration_feeds, latest_build
from onnxlift.builder.integer_audit import audit_integer_kernels
from onnxlift.builder.quantize import quantize_dynamic_int8
from onnxlift.builder.smooth import SMOOTH_SUFFIX, smooth_attention
from onnxlift.spec import ModelSpec, load_spec

BATCHES = ((1, 200), (8, 40), (32, 12))  # batch, runs per block


@dataclass(frozen=True)
class _Build:
    spec: ModelSpec
    folder: Path
    work: Path
    helpers: list[str]  # the outlier split's FP32 nodes

    @property
    def split(self) -> Path:
        """The Attention-fused graph with the FFN outlier split (see _attention_fused_split)."""
        return self.work / "model.fp32.fused.split.onnx"


def _dynamic(b: _Build, target: Path, **changes: Any) -> None:
    quant = dataclasses.replace(b.spec.quantization, **changes.pop("quant", {}))
    quantize_dynamic_int8(b.split, target, quant, extra_fp32_nodes=b.helpers + changes["keep"])


def _nbits(b: _Build, target: Path, block: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        str(b.split),
        bits=8,
        block_size=block,
        is_symmetric=True,
        accuracy_level=4,
        nodes_to_exclude=b.helpers,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), False)


def _static_qdq(b: _Build, target: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from onnxlift.builder.quantize import _FeedsReader

    tokenizer = load_tokenizer(str(b.folder / "assets" / "tokenizer.json"), b.spec.max_length)
    calibration = b.spec.folder / (b.spec.quantization.calibration or "calibration.txt")
    texts = [t for t in calibration.read_text().splitlines() if t.strip()]
    graph = onnx.load(str(b.split), load_external_data=False)
    attention = [n.name for n in graph.graph.node if n.op_type == "Attention"]
    quantize_static(
        str(b.split),
        str(target),
        _FeedsReader([_feeds(tokenizer, [t]) for t in texts]),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=b.helpers + attention,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _smooth_graph(b: _Build, alpha: float | tuple[float, ...]) -> tuple[Path, list[str]]:
    """The split FP32 graph smoothed in front of each Attention (onnxlift.builder.smooth, the
    build's own step, statistics from the calibration texts). `alpha`: one for every Attention
    or one per Attention. Returns the FP32 file (written once per alpha under work/) and the
    Muls' names."""
    tag = "-".join(f"{a:g}" for a in alpha) if isinstance(alpha, tuple) else f"{alpha:g}"
    smooth = b.work / f"model.fp32.split.smooth{tag}.onnx"
    if smooth.is_file():
        graph = onnx.load(str(smooth), load_external_data=False)
        return smooth, [n.name for n in graph.graph.node if n.name.endswith(SMOOTH_SUFFIX)]
    layers = sum(n.op_type == "Attention" for n in onnx.load(str(b.split)).graph.node)
    per_layer = alpha if isinstance(alpha, tuple) else (alpha,) * layers
    feeds = calibration_feeds(b.spec, b.folder / "assets" / "tokenizer.json")  # as the build
    muls = _written_whole(smooth, lambda to: smooth_attention(b.split, to, feeds, per_layer))
    return smooth, muls


def _written_whole(target: Path, write: Callable[[Path], Any]) -> Any:
    """write(a file beside `target`), then renamed to it: an interrupted run leaves no half file
    that the caches here (which trust any file at `target`) would read. Returns write's result."""
    partial = target.with_name(f".{target.name}.partial")
    result = write(partial)
    partial.replace(target)
    return result


def _smoothed(
    b: _Build, target: Path, alpha: float | tuple[float, ...] = 0.5, keep: tuple[str, ...] = ()
) -> None:
    """qattn on the smoothed graph (see _smooth_graph), `keep` left FP32 too."""
    smooth, muls = _smooth_graph(b, alpha)
    quant = dataclasses.replace(b.spec.quantization, exclude_op_types=(), exclude_nodes=())
    quantize_dynamic_int8(smooth, target, quant, extra_fp32_nodes=[*b.helpers, *muls, *keep])


def _qattn_keeping(b: _Build, target: Path, keep: list[str]) -> None:
    """QAttention wherever the build's own exclusions allow none: every Attention and MatMul
    quantized (7-bit), except the outlier helpers and `keep`."""
    _dynamic(b, target, quant={"exclude_op_types": (), "exclude_nodes": ()}, keep=keep)


# `python -m onnxlift.bench.schemes --sensitivity --ffn` (greedy, from full qattn): the nodes
# kept FP32 in the order chosen, with the gate figure after each step on the minilm build.
MIXED_KEEP = (
    "Attention_3",  # 0.9863
    "Attention_5",  # 0.9879
    "/encoder/encoder/layer.4/output/dense/MatMul",  # 0.9897
    "/encoder/encoder/layer.0/attention/output/dense/MatMul",  # 0.9904
    "/encoder/encoder/layer.4/intermediate/dense/MatMul",  # 0.9912
    "/encoder/encoder/layer.3/output/dense/MatMul",  # 0.9919
    "Attention_4",  # 0.9932
)


# `... --sensitivity --ffn --smooth 0.5`: the same greedy from qattn-smooth (gate 0.9890).
SMOOTH_KEEP = (
    "/encoder/encoder/layer.0/intermediate/dense/MatMul",  # 0.9902
    "/encoder/encoder/layer.4/intermediate/dense/MatMul",  # 0.9922
    "/encoder/encoder/layer.5/intermediate/dense/MatMul",  # 0.9925
)


# One alpha per Attention, `--tune-alphas`: coordinate ascent from 0.5 everywhere (each layer
# tried at 0.3 / 0.4 / 0.6 / 0.7, two sweeps) on min cosine over calibration.txt only, never
# the parity set: calibration 0.9812 -> 0.9853, then the gate figure 0.9891 (< 0.99).
SMOOTH_ALPHAS = (0.4, 0.5, 0.5, 0.5, 0.5, 0.7)
# The same search scored on the gate figure itself (the parity set): 0.9890 -> 0.9905. It
# passes only because it was chosen on the texts that judge it (0.9838 on calibration.txt,
# below SMOOTH_ALPHAS): an upper bound of what smoothing can do here, not a scheme to serve.
PARITY_FIT_ALPHAS = (0.7, 0.5, 0.5, 0.4, 0.3, 0.5)


Maker = Callable[[_Build, Path], None]


def _mixed(n: int) -> Maker:
    return lambda b, t: _qattn_keeping(b, t, list(MIXED_KEEP[:n]))


def _smooth_keeping(n: int) -> Maker:
    return lambda b, t: _smoothed(b, t, 0.5, SMOOTH_KEEP[:n])


# label -> (file name under work/ or None for the served file, how to make it, session config)
SCHEMES: dict[str, tuple[str | None, Maker | None, dict[str, str]]] = {
    "7bit": (None, None, {}),
    "7bit+setting": (None, None, INTEGER_KERNEL_CONFIG),
    "attention-fp32": (
        "model.int8.attention-fp32.onnx",
        lambda b, t: _dynamic(b, t, quant={"exclude_op_types": ("Attention",)}, keep=[]),
        INTEGER_KERNEL_CONFIG,
    ),
    "8bit+setting": (
        "model.int8.8bit.onnx",
        lambda b, t: _dynamic(
            b, t, quant={"reduce_range": False, "exclude_op_types": ("Attention",)}, keep=[]
        ),
        INTEGER_KERNEL_CONFIG,
    ),
    "qattn": (
        "model.int8.qattn.onnx",
        lambda b, t: _dynamic(b, t, quant={"exclude_op_types": ()}, keep=[]),
        INTEGER_KERNEL_CONFIG,
    ),
    "qattn-keep3": (
        "model.int8.qattn-keep3.onnx",
        lambda b, t: _dynamic(b, t, quant={"exclude_op_types": ()}, keep=["Attention_3"]),
        INTEGER_KERNEL_CONFIG,
    ),
    **{
        f"qattn-mixed{n}": (
            f"model.int8.qattn-mixed{n}.onnx",
            _mixed(n),
            INTEGER_KERNEL_CONFIG,
        )
        for n in range(4, len(MIXED_KEEP) + 1)
    },
    "qattn-smooth": ("model.int8.qattn-smooth.onnx", _smoothed, INTEGER_KERNEL_CONFIG),
    **{
        f"qattn-smooth-keep{n}": (
            f"model.int8.qattn-smooth-keep{n}.onnx",
            _smooth_keeping(n),
            INTEGER_KERNEL_CONFIG,
        )
        for n in range(1, len(SMOOTH_KEEP) + 1)
    },
    "qattn-smooth-tuned": (
        "model.int8.qattn-smooth-tuned.onnx",
        lambda b, t: _smoothed(b, t, SMOOTH_ALPHAS),
        INTEGER_KERNEL_CONFIG,
    ),
    "qattn-smooth-parity-fit": (
        "model.int8.qattn-smooth-parity-fit.onnx",
        lambda b, t: _smoothed(b, t, PARITY_FIT_ALPHAS),
        INTEGER_KERNEL_CONFIG,
    ),
    "static-qdq": ("model.int8.static-qdq.onnx", _static_qdq, INTEGER_KERNEL_CONFIG),
    "nbits8-b32": (
        "model.nbits8.b32.onnx",
        lambda b, t: _nbits(b, t, 32),
        INTEGER_KERNEL_CONFIG,
    ),
    "nbits8-b128": (
        "model.nbits8.b128.onnx",
        lambda b, t: _nbits(b, t, 128),
        INTEGER_KERNEL_CONFIG,
    ),
}


def _feeds(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }


def _files(b: _Build, labels: list[str]) -> dict[str, tuple[Path, dict[str, str]]]:
    files = {"fp32 fused": (b.work / "model.fp32.fused.onnx", INTEGER_KERNEL_CONFIG)}
    for label in labels:
        name, make, config = SCHEMES[label]
        # the served graph as quantized: the artifact's copy is the same graph after
        # onnxruntime's optimizer (same kernels), which the exact reference cannot read
        path = b.work / (name or "model.int8.onnx")
        if make is not None and not path.is_file():
            make(b, path)
        files[label] = (path, config)
    return files


def _gate(
    b: _Build, path: Path, source: Any, texts: tuple[dict[str, Any], dict[str, Any]] | None = None
) -> float:
    """The build gate's min cosine: sentence-transformers against the serving pipeline in
    batches of 16, on the whole parity set (or on `texts`: inputs and their reference)."""
    from onnxlift.bench.serving import stage_artifact
    from onnxlift.builder import parity
    from onnxlift.builder.build import serve_batched

    with tempfile.TemporaryDirectory() as tmp:
        folder = stage_artifact(b.folder, path, Path(tmp) / "artifact")
        inputs, reference = texts or (source.parity_inputs, source.reference)
        served = serve_batched(folder, inputs, threads=1, batch=16)
    return float(parity.measure("min_cosine", served, reference, None)["value"])


def _exactness(path: Path, feeds: list[dict[str, np.ndarray]]) -> str:
    """Texts on which the served file equals its float64-integer graph bit for bit."""
    from onnxlift.builder.integer_reference import exact_integer_model

    audit = audit_integer_kernels(path)
    model = onnx.load(str(path))
    summed = {"MatMulInteger", "QAttention"} & {n.op_type for n in model.graph.node}
    if not summed:  # QDQ and MatMulNBits: nothing the reference recomputes
        return f"not checked (no MatMulInteger/QAttention; s8 |w| <= {audit['s8_weight_max_abs']})"
    served, reference = (
        create_session(path),
        create_session(exact_integer_model(model).SerializeToString()),
    )
    same = sum(
        bool(np.array_equal(served.run(None, f)[0], reference.run(None, f)[0])) for f in feeds
    )
    return f"{same}/{len(feeds)}, |w| <= {audit['s8_weight_max_abs']}"


def _parity(b: _Build, rows: list[dict[str, Any]], files: dict[str, Any]) -> list[str]:
    """Fill each row's parity columns; return the parity texts."""
    from onnxlift.builder.build import load_source_module

    tokenizer = load_tokenizer(str(b.folder / "assets" / "tokenizer.json"), b.spec.max_length)
    parity_file = b.spec.folder / b.spec.parity.inputs
    texts = [t for t in parity_file.read_text().splitlines() if t.strip()]
    feeds = [_feeds(tokenizer, [t]) for t in texts]
    reference = create_session(b.work / "model.fp32.onnx")
    wanted = [reference.run(None, f)[0][0] for f in feeds]
    source = load_source_module(b.spec).load(b.spec)
    for row, (path, config) in zip(rows, files.values(), strict=True):
        session = create_session(path, integer_config=config)
        cosines = []
        for feed, want in zip(feeds, wanted, strict=True):
            got = session.run(None, feed)[0][0]
            cosines.append(float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
        row["min_cosine"] = min(cosines)
        row["gate"] = _gate(b, path, source)
        row["exact"] = _exactness(path, feeds) if config else "-"
    return texts


def _time(rows: list[dict[str, Any]], sessions: list[Any], short: list[str], tok: Any) -> None:
    """One round: every scheme in turn on each batch size; best-of-rounds into the rows."""
    for batch, runs in BATCHES:
        feed = _feeds(tok, (short * batch)[:batch])
        for row, session in zip(rows, sessions, strict=True):
            session.run(None, feed)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                session.run(None, feed)
                times.append(time.perf_counter() - started)
            median = float(np.median(times)) * 1e3
            row["rounds"].setdefault(batch, []).append(median)
            row["ms"][batch] = min(row["ms"].get(batch, float("inf")), median)


def _load_build() -> _Build:
    spec = load_spec(paths.models_dir(paths.project_root()) / "minilm")
    folder = latest_build(spec)
    if folder is None:
        raise SystemExit("build minilm first: onnxlift build minilm")
    work = folder / "work"
    split = onnx.load(str(_attention_fused_split(spec, folder)), load_external_data=False)
    helpers = [
        n.name for n in split.graph.node if n.name.endswith(("_outlier_gather", "_outlier_matmul"))
    ]
    return _Build(spec, folder, work, helpers)


def _attention_fused_split(spec: ModelSpec, folder: Path) -> Path:
    """The build's Attention-fused FP32 graph with the FFN outlier split (the spec's ratio):
    what the QAttention, static and MatMulNBits schemes start from. Written once per build."""
    from onnxlift.builder.outliers import split_outlier_channels

    target = folder / "work" / "model.fp32.fused.split.onnx"
    if not target.is_file():
        feeds = calibration_feeds(spec, folder / "assets" / "tokenizer.json")
        quant = spec.quantization
        _written_whole(
            target,
            lambda to: split_outlier_channels(
                folder / "work" / "model.fp32.fused.onnx",
                to,
                feeds,
                ratio=quant.outlier_ratio,
                max_channels=quant.outlier_max_channels,
            ),
        )
    return target


def run(rounds: int = 5, labels: list[str] | None = None) -> list[dict[str, Any]]:
    b = _load_build()
    spec, folder = b.spec, b.folder
    files = _files(b, labels or list(SCHEMES))
    rows: list[dict[str, Any]] = [{"scheme": k, "ms": {}, "rounds": {}} for k in files]
    texts = _parity(b, rows, files)
    sessions = [create_session(p, integer_config=c) for p, c in files.values()]
    tokenizer = load_tokenizer(str(folder / "assets" / "tokenizer.json"), spec.max_length)
    short = [t for t in texts if 8 <= len(tokenizer.encode(t).ids) <= 24]
    for _ in range(rounds):
        _time(rows, sessions, short, tokenizer)
    return rows


def _sensitivity_candidates(b: _Build, ffn: bool) -> list[str]:
    split = onnx.load(str(b.split), load_external_data=False)
    kinds = ("Attention", "MatMul") if ffn else ("Attention",)
    return [n.name for n in split.graph.node if n.op_type in kinds and n.name not in b.helpers]


def sensitivity(target: float = 0.992, ffn: bool = False, smooth: float = 0.0) -> list[str]:
    """Which nodes to keep FP32 so that qattn passes the build gate with margin: each
    Attention quantized alone (the rest as served), then greedy from full qattn, each step
    keeping FP32 the candidate whose return lifts the gate figure most, until >= target.
    Returns the nodes kept FP32, in the order chosen."""
    from onnxlift.builder.build import load_source_module

    b = _load_build()
    source = load_source_module(b.spec).load(b.spec)
    candidates = _sensitivity_candidates(b, ffn)
    attention = [c for c in candidates if c.startswith("Attention")]
    with tempfile.TemporaryDirectory() as tmp:

        def gate(keep: list[str]) -> float:
            path = Path(tmp) / "variant.onnx"
            if smooth:
                _smoothed(b, path, smooth, tuple(keep))
            else:
                _qattn_keeping(b, path, keep)
            return _gate(b, path, source)

        print(f"served file: gate {_gate(b, b.folder / 'model.onnx', source):.4f}")
        for node in attention:
            alone = gate([a for a in attention if a != node])
            print(f"only {node} quantized (others FP32): gate {alone:.4f}")
        keep: list[str] = []
        figure = gate(keep)
        print(f"{f'qattn-smooth {smooth:g}' if smooth else 'qattn'}, none kept: gate {figure:.4f}")
        while figure < target and len(keep) < len(candidates):
            trials = {c: gate([*keep, c]) for c in candidates if c not in keep}
            best = max(trials, key=lambda c: trials[c])
            ranked = sorted(trials.items(), key=lambda kv: -kv[1])[:4]
            print("  tried: " + ", ".join(f"{c} {g:.4f}" for c, g in ranked))
            keep.append(best)
            figure = trials[best]
            print(f"keep FP32 {keep}: gate {figure:.4f}")
    return keep


def tune_alphas(sweeps: int = 2, steps: tuple[float, ...] = (0.3, 0.4, 0.6, 0.7)) -> list[float]:
    """One smoothing alpha per Attention for qattn-smooth (every Attention quantized): from 0.5
    everywhere, each layer in turn tried at each of `steps`, a change kept when it lifts min
    cosine against sentence-transformers on calibration.txt (the texts the smoothing's
    statistics come from; the parity set stays unseen); `sweeps` passes. Prints the gate
    figure of the result and returns the alphas (SMOOTH_ALPHAS)."""
    from onnxlift.builder.build import load_source_module

    b = _load_build()
    module = load_source_module(b.spec)
    source = module.load(b.spec)
    calibration = b.spec.folder / (b.spec.quantization.calibration or "calibration.txt")
    texts = [t for t in calibration.read_text().splitlines() if t.strip()]
    held = {"text": np.array(texts, dtype=object)}, {"embedding": module.reference(texts)}
    layers = len(_sensitivity_candidates(b, ffn=False))
    with tempfile.TemporaryDirectory() as tmp:

        def variant(alphas: list[float]) -> Path:
            path = Path(tmp) / "variant.onnx"
            _smoothed(b, path, tuple(alphas))
            _smooth_graph(b, tuple(alphas))[0].unlink()  # 90 MB per trial under work/
            return path

        alphas = [0.5] * layers
        best = _gate(b, variant(alphas), source, held)
        print(f"alphas {alphas}: calibration {best:.4f}")
        for _ in range(sweeps):
            for layer in range(layers):
                for step in steps:
                    trial = [*alphas[:layer], step, *alphas[layer + 1 :]]
                    figure = _gate(b, variant(trial), source, held)
                    if figure > best:
                        alphas, best = trial, figure
                        print(f"alphas {alphas}: calibration {best:.4f}")
        print(f"alphas {alphas}: gate figure (parity set) {_gate(b, variant(alphas), source):.4f}")
    return alphas


def _spread(row: dict[str, Any], fp32: dict[str, Any], batch: int) -> str:
    ratios = [f / s for f, s in zip(fp32["rounds"][batch], row["rounds"][batch], strict=True)]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--schemes", nargs="+", choices=list(SCHEMES), default=list(SCHEMES))
    parser.add_argument(
        "--sensitivity", action="store_true", help="gate figures per node and the greedy choice"
    )
    parser.add_argument("--ffn", action="store_true", help="with --sensitivity: MatMuls too")
    parser.add_argument("--smooth", type=float, default=0.0, help="with --sensitivity: alpha")
    parser.add_argument("--target", type=float, default=0.992, help="with --sensitivity")
    parser.add_argument(
        "--tune-alphas", action="store_true", help="one smoothing alpha per Attention"
    )
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # the quantizers' advice on pre-processing
    if args.tune_alphas:
        print(f"alphas: {tune_alphas()}")
        return
    if args.sensitivity:
        print(f"kept FP32: {sensitivity(args.target, args.ffn, args.smooth)}")
        return
    rows = run(args.rounds, args.schemes)
    facts = cpu_facts()
    print(f"CPU: {facts['model']} ({' '.join(facts['flags'])}); one thread")
    fp32 = rows[0]
    head = f"{'scheme':<13} {'min cos':>7} {'gate':>6} "
    head += " ".join(f"{'b' + str(b) + ' ms, x fp32 (rounds)':>30}" for b, _ in BATCHES)
    print(head + "  exact (float64 integer graph)")
    for row in rows:
        cells = " ".join(
            f"{row['ms'][b]:8.2f} {fp32['ms'][b] / row['ms'][b]:5.2f}x ({_spread(row, fp32, b)})"
            for b, _ in BATCHES
        )
        print(f"{row['scheme']:<13} {row['min_cosine']:7.4f} {row['gate']:6.4f} {cells}  ", end="")
        print(row["exact"])


if __name__ == "__main__":
    main()
