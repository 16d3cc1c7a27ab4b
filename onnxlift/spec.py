"""Model specs: the declarative `models/<name>/model.toml` that drives build, publish and deploy."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from onnxlift.errors import SpecError

TASKS = ("text-embedding",)
TARGETS = ("lambda", "sagemaker")
QUANT_MODES = ("dynamic", "none")

# Lambda's own limits (AWS documentation); a spec outside them cannot deploy.
LAMBDA_MEMORY_MB = (128, 10_240)
LAMBDA_TIMEOUT_S = (1, 900)


@dataclass(frozen=True, kw_only=True)
class QuantizationSpec:
    mode: str = "dynamic"
    per_channel: bool = True
    reduce_range: bool = False
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()  # e.g. ("Attention",): fused nodes kept in FP32
    # Outlier-channel split of feed-forward MatMuls (see onnxlift/build/outliers.py); 0 = off.
    outlier_ratio: float = 0.0
    outlier_max_channels: int = 4
    calibration: str | None = None  # texts for the split's statistics, disjoint from parity


@dataclass(frozen=True, kw_only=True)
class OptimizerSpec:
    """onnxruntime transformer optimizer settings; model_type None = no fusion pass."""

    model_type: str | None = None
    num_heads: int = 0
    hidden_size: int = 0


@dataclass(frozen=True, kw_only=True)
class ParitySpec:
    metric: str = "min_cosine"
    threshold: float = 0.99
    inputs: str = "parity_sentences.txt"


@dataclass(frozen=True, kw_only=True)
class ServingSpec:
    target: str = "lambda"
    memory_mb: int = 2048
    timeout_s: int = 30
    reserved_concurrency: int = 10
    max_batch: int = 64


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
    raw: dict = field(repr=False, compare=False, default_factory=dict)

    @property
    def source_path(self) -> Path:
        return self.folder / self.source_module

    def fingerprint(self, toolchain: dict[str, str]) -> str:
        """A digest of everything a build depends on: spec, files in the model folder, toolchain.

        Two builds with the same fingerprint produce equivalent artifacts, so `onnxlift up`
        can skip the build and the publish when nothing changed.
        """
        digest = hashlib.sha256()
        for path in sorted(p for p in self.folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(self.folder).as_posix().encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        for key in sorted(toolchain):
            digest.update(f"{key}={toolchain[key]}".encode())
        return digest.hexdigest()[:16]


def _require(table: dict, key: str, where: str) -> object:
    if key not in table:
        raise SpecError(f"{where}: missing required key '{key}'")
    return table[key]


def load_spec(folder: Path) -> ModelSpec:
    """Read and validate `folder/model.toml`."""
    path = folder / "model.toml"
    if not path.is_file():
        raise SpecError(f"{folder}: no model.toml")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: {exc}") from exc

    name = str(_require(raw, "name", str(path)))
    if name != folder.name:
        raise SpecError(f"{path}: name '{name}' must match its folder '{folder.name}'")
    if not name.replace("-", "").replace("_", "").isalnum() or not name[0].isalpha():
        raise SpecError(f"{path}: name '{name}' must be letters, digits, '-' or '_'")
    task = str(_require(raw, "task", str(path)))
    if task not in TASKS:
        raise SpecError(f"{path}: task '{task}' is not one of {TASKS}")

    source = raw.get("source", {})
    quant = raw.get("quantization", {})
    parity = raw.get("parity", {})
    serving = raw.get("serving", {})
    preprocess = raw.get("preprocess", {})

    quantization = QuantizationSpec(
        mode=str(quant.get("mode", "dynamic")),
        per_channel=bool(quant.get("per_channel", True)),
        reduce_range=bool(quant.get("reduce_range", False)),
        exclude_nodes=tuple(quant.get("exclude_nodes", ())),
        exclude_op_types=tuple(quant.get("exclude_op_types", ())),
        outlier_ratio=float(quant.get("outlier_ratio", 0.0)),
        outlier_max_channels=int(quant.get("outlier_max_channels", 4)),
        calibration=quant.get("calibration"),
    )
    export = raw.get("export", {})
    optimizer = OptimizerSpec(**export.get("optimizer", {}))
    if quantization.mode not in QUANT_MODES:
        raise SpecError(f"{path}: quantization.mode '{quantization.mode}' not in {QUANT_MODES}")
    serving_spec = ServingSpec(**{k: serving[k] for k in serving})
    if serving_spec.target not in TARGETS:
        raise SpecError(f"{path}: serving.target '{serving_spec.target}' not in {TARGETS}")
    if serving_spec.target == "lambda":
        lo, hi = LAMBDA_MEMORY_MB
        if not lo <= serving_spec.memory_mb <= hi:
            raise SpecError(f"{path}: serving.memory_mb must be within {lo}..{hi} for Lambda")
        lo, hi = LAMBDA_TIMEOUT_S
        if not lo <= serving_spec.timeout_s <= hi:
            raise SpecError(f"{path}: serving.timeout_s must be within {lo}..{hi} for Lambda")
    parity_spec = ParitySpec(**{k: parity[k] for k in parity})
    if not 0.0 < parity_spec.threshold <= 1.0:
        raise SpecError(f"{path}: parity.threshold must be in (0, 1]")

    spec = ModelSpec(
        name=name,
        description=str(raw.get("description", "")),
        task=task,
        folder=folder.resolve(),
        framework=str(source.get("framework", "pytorch")),
        source_module=str(source.get("module", "source.py")),
        opset=int(export.get("opset", 17)),
        optimizer=optimizer,
        quantization=quantization,
        parity=parity_spec,
        tokenizer=str(preprocess.get("tokenizer", "tokenizer.json")),
        max_length=int(preprocess.get("max_length", 256)),
        serving=serving_spec,
        raw=raw,
    )
    if not spec.source_path.is_file():
        raise SpecError(f"{path}: source module {spec.source_path} not found")
    if quantization.outlier_ratio and not (
        quantization.calibration and (spec.folder / quantization.calibration).is_file()
    ):
        raise SpecError(f"{path}: quantization.outlier_ratio needs a calibration file")
    if not (spec.folder / spec.parity.inputs).is_file():
        raise SpecError(f"{path}: parity inputs {spec.parity.inputs} not found")
    return spec


def discover_specs(models_dir: Path) -> list[ModelSpec]:
    """Every model folder under `models_dir`, sorted by name."""
    return [load_spec(p.parent) for p in sorted(models_dir.glob("*/model.toml"))]
