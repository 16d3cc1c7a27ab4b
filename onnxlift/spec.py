"""Model specs: the declarative `models/<name>/model.toml` that drives build, publish and deploy.

The same structure can be built in code (`parse_spec`) for the Python API, which is how a
PyTorch module with no model folder goes through the same pipeline.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from onnxlift_serving import contract

from onnxlift.errors import SpecError

# text-embedding: strings -> tokenizer -> pooled embedding; classification: tensors or strings
# in, label + probabilities out; tensor: the graph's own inputs and outputs, as they are.
TASKS = ("text-embedding", "classification", "tensor")
TARGETS = ("lambda", "sagemaker", "auto")  # auto: see onnxlift/targeting.py
QUANT_MODES = ("dynamic", "static", "none")
# metric -> True when higher is better
PARITY_METRICS = {"min_cosine": True, "top1_agreement": True, "max_abs_error": False}
DEFAULT_METRIC = {"text-embedding": "min_cosine", "classification": "top1_agreement",
                  "tensor": "max_abs_error"}  # fmt: skip
# Dynamic INT8 suits transformers (activation ranges vary per input); static QDQ with
# calibration suits MLPs and CNNs; scikit-learn graphs hold no MatMul worth quantizing.
DEFAULT_QUANT = {"pytorch": "dynamic", "keras": "static", "sklearn": "none", "onnx": "none"}

# Lambda's own limits (AWS documentation); a spec outside them cannot deploy.
LAMBDA_MEMORY_MB = contract.LAMBDA_MEMORY_MB
LAMBDA_TIMEOUT_S = contract.LAMBDA_TIMEOUT_S


@dataclass(frozen=True, kw_only=True)
class QuantizationSpec:
    mode: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()  # e.g. ("Attention",): fused nodes kept in FP32
    # Outlier-channel split of feed-forward MatMuls (see onnxlift/builder/outliers.py); 0 = off.
    outlier_ratio: float = 0.0
    outlier_max_channels: int = 4
    # The same split for the merged Q/K/V projections ([export.optimizer] attention =
    # "multihead"; onnxlift/builder/projections.py); 0 = off.
    projection_outlier_ratio: float = 0.0
    # Zero padded rows before each layer-norm-fed MatMul (onnxlift/builder/padding.py): pads
    # then set no dynamic activation scale there. Needs an `attention_mask` graph input.
    mask_padding: bool = False
    calibration: str | None = None  # texts for the split's statistics, disjoint from parity
    # One SmoothQuant alpha per fused Attention (onnxlift/builder/smooth.py), in graph order;
    # empty = no smoothing. Lets the Attention be quantized (QAttention) within the gate.
    attention_smoothing: tuple[float, ...] = ()


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """onnxruntime transformer optimizer settings; model_type None = no fusion pass."""

    model_type: str | None = None
    num_heads: int = 0
    hidden_size: int = 0
    # "fused": one Attention op that holds the Q/K/V weights (kept FP32 or a QAttention);
    # "multihead": MultiHeadAttention after plain Q/K/V MatMuls, merged into one and quantized
    # like the feed-forward MatMuls (onnxlift/builder/projections.py).
    attention: str = "fused"


ATTENTION_FUSIONS = ("fused", "multihead")


@dataclass(frozen=True, kw_only=True)
class ParitySpec:
    metric: str = "min_cosine"
    threshold: float = 0.99
    inputs: str | None = None  # a text file of parity inputs (text-embedding)

    @property
    def higher_is_better(self) -> bool:
        return PARITY_METRICS[self.metric]

    def passes(self, value: float) -> bool:
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


# [serving.batching]: the SageMaker container's dynamic batching (onnxlift_serving/batching.py).
# Off unless the table is present, as Triton's dynamic_batching must be declared: it only pays
# under concurrent load, it costs up to max_queue_delay_ms of latency, it gives each worker
# more request threads (and so less memory to onnxruntime's arena), and a padded text batch
# answers within float rounding of, not bit for bit, what the request alone would get.
DEFAULT_BATCH_SIZE = 32  # rows per merged run (at most serving.max_batch)
MAX_QUEUE_DELAY_MS = contract.MAX_QUEUE_DELAY_MS  # the container refuses more too


@dataclass(frozen=True, kw_only=True)
class BatchingSpec:
    # 0: the smaller of DEFAULT_BATCH_SIZE and serving.max_batch
    max_batch_size: int = 0
    # Triton's default: no waiting; batches still form from what queues while a run is busy
    max_queue_delay_ms: float = 0.0
    max_queue_size: int = 0  # requests waiting per worker at most; 0: 2 x max_batch_size


@dataclass(frozen=True, kw_only=True)
class ServingSpec:
    target: str = "lambda"
    memory_mb: int = 2048
    timeout_s: int = contract.API_GATEWAY_TIMEOUT_S
    reserved_concurrency: int = 10
    max_batch: int = 64
    # Lambda deploys (infra/config.py checks both): how CodeDeploy shifts traffic to a new
    # version (canary10-5m | linear10-1m | all-at-once), and the p99 Duration (ms) above which
    # it rolls back (unset: 80% of timeout_s).
    rollout: str = "canary10-5m"
    p99_budget_ms: int | None = None
    # x86_64 | arm64 (Graviton, 20% lower price per GB-second); the image is built to match
    # and the PreTraffic hook proves its answers before any traffic (infra/config.py checks it).
    architecture: str = "x86_64"
    # SageMaker (target sagemaker, or auto deciding so)
    instance_type: str = "ml.g5.xlarge"
    initial_instances: int = 1
    min_instances: int = 1
    max_instances: int = 4
    target_invocations_per_instance: int = 600
    data_capture: bool = False
    gpu: bool = False  # needs a GPU: auto sends it to SageMaker
    batching: BatchingSpec | None = None  # [serving.batching]; None: off


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    description: str
    task: str
    folder: Path
    framework: str
    source_module: str
    opset: int
    optimizer: OptimizerSpec
    quantization: QuantizationSpec
    parity: ParitySpec
    tokenizer: str
    max_length: int
    serving: ServingSpec
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def source_path(self) -> Path:
        return self.folder / self.source_module

    def fingerprint(self, toolchain: dict[str, str]) -> str:
        """A digest of everything a build depends on: spec, files in the model folder, toolchain.

        Two builds with the same fingerprint produce equivalent artifacts, so `onnxlift up`
        can skip the build and the publish when nothing changed.
        """
        digest = hashlib.sha256()
        files = {p for p in self.folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        # Files the spec names outside its folder (a shared source.py or parity set) count too.
        for relative in (self.source_module, self.parity.inputs, self.quantization.calibration):
            if relative and (self.folder / relative).is_file():
                files.add((self.folder / relative).resolve())
        for path in sorted(files):
            digest.update(path.as_posix().removeprefix(self.folder.as_posix()).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        for key in sorted(toolchain):
            digest.update(f"{key}={toolchain[key]}".encode())
        return digest.hexdigest()[:16]


def _require(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise SpecError(f"{where}: missing required key '{key}'")
    return table[key]


def _build(cls: type, table: dict[str, Any], where: str) -> Any:
    try:
        return cls(**table)
    except TypeError as exc:
        raise SpecError(f"{where}: {exc}") from None


def _batching(table: Any, serving: ServingSpec, where: str) -> BatchingSpec:
    where = f"{where} [serving.batching]"
    if not isinstance(table, dict):
        raise SpecError(f"{where}: must be a table")
    spec = _build(BatchingSpec, table, where)
    for key in ("max_batch_size", "max_queue_delay_ms", "max_queue_size"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(f"{where}: {key} must be a number")
        if key != "max_queue_delay_ms" and not isinstance(value, int):
            raise SpecError(f"{where}: {key} must be an integer")
    size = spec.max_batch_size or min(DEFAULT_BATCH_SIZE, serving.max_batch)
    if not 1 <= size <= serving.max_batch:
        raise SpecError(
            f"{where}: max_batch_size must be within 1..serving.max_batch ({serving.max_batch}): "
            "a merged run is never larger than the largest request the model takes"
        )
    if not 0 <= spec.max_queue_delay_ms <= MAX_QUEUE_DELAY_MS:
        raise SpecError(f"{where}: max_queue_delay_ms must be within 0..{MAX_QUEUE_DELAY_MS}")
    if spec.max_queue_size < 0:
        raise SpecError(f"{where}: max_queue_size must be >= 0 (0: twice max_batch_size)")
    if serving.target == "lambda":
        raise SpecError(
            f"{where}: batching is the SageMaker container's; a Lambda sandbox serves one "
            "request at a time (set serving.target to sagemaker or auto)"
        )
    return BatchingSpec(
        max_batch_size=size,
        max_queue_delay_ms=float(spec.max_queue_delay_ms),
        max_queue_size=spec.max_queue_size or 2 * size,
    )


def _serving(table: dict[str, Any], where: str) -> ServingSpec:
    batching = table.pop("batching", None)
    serving = _build(ServingSpec, table, f"{where} [serving]")
    if batching is None:
        return serving
    return replace(serving, batching=_batching(batching, serving, where))


def _quantization(
    raw: dict[str, Any], framework: str, folder: Path, where: str
) -> QuantizationSpec:
    quant = dict(raw.get("quantization", {}))
    quant.setdefault("mode", DEFAULT_QUANT[framework])
    for key in ("exclude_nodes", "exclude_op_types", "attention_smoothing"):
        value = quant.get(key, ())
        if not isinstance(value, list | tuple):
            raise SpecError(f"{where}: quantization.{key} must be a list")
        quant[key] = tuple(value)
    quantization = _build(QuantizationSpec, quant, f"{where} [quantization]")
    if quantization.mode not in QUANT_MODES:
        raise SpecError(f"{where}: quantization.mode '{quantization.mode}' not in {QUANT_MODES}")
    _check_smoothing(quantization, folder, where)
    return quantization


def _check_smoothing(quantization: QuantizationSpec, folder: Path, where: str) -> None:
    alphas = quantization.attention_smoothing
    if not alphas:
        return
    where = f"{where}: quantization.attention_smoothing"
    if not all(
        isinstance(a, int | float) and not isinstance(a, bool) and 0 <= a <= 1 for a in alphas
    ):
        raise SpecError(f"{where} must be a list of numbers within 0..1 (one per Attention)")
    if quantization.mode != "dynamic":
        raise SpecError(f"{where} is for dynamic quantization (it smooths QAttention inputs)")
    if "Attention" in quantization.exclude_op_types:
        raise SpecError(f"{where} smooths Attention inputs, but exclude_op_types keeps them FP32")
    if not (quantization.calibration and (folder / quantization.calibration).is_file()):
        raise SpecError(f"{where} needs a calibration file (its channel peaks)")


def _check_attention(optimizer: OptimizerSpec, quantization: QuantizationSpec, where: str) -> None:
    if optimizer.attention not in ATTENTION_FUSIONS:
        raise SpecError(
            f"{where}: export.optimizer.attention '{optimizer.attention}' "
            f"not in {ATTENTION_FUSIONS}"
        )
    multihead = optimizer.attention == "multihead"
    if multihead and not optimizer.model_type:
        raise SpecError(f"{where}: export.optimizer.attention = 'multihead' needs a model_type")
    if multihead and quantization.attention_smoothing:
        raise SpecError(
            f"{where}: quantization.attention_smoothing smooths fused Attention inputs; with "
            "attention = 'multihead' the Q/K/V MatMuls take projection_outlier_ratio instead"
        )
    if quantization.projection_outlier_ratio and not multihead:
        raise SpecError(
            f"{where}: quantization.projection_outlier_ratio needs export.optimizer.attention = "
            "'multihead' (a fused Attention keeps its projections inside)"
        )
    if quantization.mask_padding and quantization.mode != "dynamic":
        raise SpecError(f"{where}: quantization.mask_padding is for dynamic quantization")
    if multihead and quantization.mode != "dynamic":
        raise SpecError(f"{where}: export.optimizer.attention = 'multihead' is for dynamic INT8")
    ratio = quantization.projection_outlier_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or (ratio < 1 and ratio != 0):
        raise SpecError(f"{where}: quantization.projection_outlier_ratio must be 0 (off) or >= 1")
    if not isinstance(quantization.mask_padding, bool):
        raise SpecError(f"{where}: quantization.mask_padding must be true or false")


def parse_spec(raw: dict[str, Any], folder: Path, *, where: str | None = None) -> ModelSpec:
    """Validate a spec given as a dict (the parsed model.toml, or built in code)."""
    where = where or str(folder)
    name = str(_require(raw, "name", where))
    if not name.replace("-", "").replace("_", "").isalnum() or not name[0].isalpha():
        raise SpecError(f"{where}: name '{name}' must be letters, digits, '-' or '_'")
    task = str(_require(raw, "task", where))
    if task not in TASKS:
        raise SpecError(f"{where}: task '{task}' is not one of {TASKS}")

    source = raw.get("source", {})
    framework = str(source.get("framework", "pytorch"))
    if framework not in DEFAULT_QUANT:
        raise SpecError(f"{where}: source.framework '{framework}' not in {tuple(DEFAULT_QUANT)}")
    quantization = _quantization(raw, framework, folder, where)

    export = raw.get("export", {})
    optimizer = _build(OptimizerSpec, export.get("optimizer", {}), f"{where} [export.optimizer]")
    _check_attention(optimizer, quantization, where)
    serving = _serving(dict(raw.get("serving", {})), where)
    if serving.target not in TARGETS:
        raise SpecError(f"{where}: serving.target '{serving.target}' not in {TARGETS}")
    if not 1 <= serving.min_instances <= serving.initial_instances <= serving.max_instances:
        raise SpecError(f"{where}: need 1 <= min_instances <= initial_instances <= max_instances")
    if serving.target != "sagemaker":
        lo, hi = LAMBDA_MEMORY_MB
        if not lo <= serving.memory_mb <= hi:
            raise SpecError(f"{where}: serving.memory_mb must be within {lo}..{hi} for Lambda")
        lo, hi = LAMBDA_TIMEOUT_S
        if not lo <= serving.timeout_s <= hi:
            raise SpecError(f"{where}: serving.timeout_s must be within {lo}..{hi} for Lambda")

    if serving.batching is not None and quantization.mode == "dynamic":
        raise SpecError(
            f"{where}: [serving.batching] needs quantization.mode static or none: dynamic INT8 "
            "takes one activation scale over the whole merged batch, so each caller's answer "
            "would depend on the other callers' inputs"
        )

    parity_raw = dict(raw.get("parity", {}))
    parity_raw.setdefault("metric", DEFAULT_METRIC[task])
    parity = _build(ParitySpec, parity_raw, f"{where} [parity]")
    if parity.metric not in PARITY_METRICS:
        raise SpecError(f"{where}: parity.metric '{parity.metric}' not in {tuple(PARITY_METRICS)}")
    if parity.higher_is_better and not 0.0 < parity.threshold <= 1.0:
        raise SpecError(f"{where}: parity.threshold must be in (0, 1] for {parity.metric}")
    if not parity.higher_is_better and parity.threshold < 0:
        raise SpecError(f"{where}: parity.threshold must be >= 0 for {parity.metric}")

    preprocess = raw.get("preprocess", {})
    spec = ModelSpec(
        name=name,
        description=str(raw.get("description", "")),
        task=task,
        folder=folder.resolve(),
        framework=framework,
        source_module=str(source.get("module", "source.py")),
        opset=int(export.get("opset", 17)),
        optimizer=optimizer,
        quantization=quantization,
        parity=parity,
        tokenizer=str(preprocess.get("tokenizer", "tokenizer.json")),
        max_length=int(preprocess.get("max_length", 256)),
        serving=serving,
        raw=raw,
    )
    split = quantization.outlier_ratio or quantization.projection_outlier_ratio
    if split and not (
        quantization.calibration and (spec.folder / quantization.calibration).is_file()
    ):
        raise SpecError(f"{where}: the outlier split (outlier ratios) needs a calibration file")
    rewrites = optimizer.attention == "multihead" or quantization.mask_padding
    if rewrites and spec.opset < 13:  # their Split and Unsqueeze take sizes and axes as inputs
        raise SpecError(f"{where}: multihead attention and mask_padding need export.opset >= 13")
    if parity.inputs is not None and not (spec.folder / parity.inputs).is_file():
        raise SpecError(f"{where}: parity inputs {parity.inputs} not found")
    if task == "text-embedding" and parity.inputs is None:
        raise SpecError(f"{where}: a text-embedding model needs parity.inputs (a text file)")
    return spec


def load_spec(folder: Path) -> ModelSpec:
    """Read and validate `folder/model.toml`."""
    path = folder / "model.toml"
    if not path.is_file():
        raise SpecError(f"{folder}: no model.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from exc
    spec = parse_spec(raw, folder, where=str(path))
    if spec.name != folder.name:
        raise SpecError(f"{path}: name '{spec.name}' must match its folder '{folder.name}'")
    if spec.framework != "onnx" and not spec.source_path.is_file():
        raise SpecError(f"{path}: source module {spec.source_path} not found")
    return spec


def discover_specs(models_dir: Path) -> list[ModelSpec]:
    """Every model folder under `models_dir`, sorted by name."""
    return [load_spec(p.parent) for p in sorted(models_dir.glob("*/model.toml"))]
