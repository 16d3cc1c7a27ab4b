"""GET /v2 (server metadata) and GET /v2/models/{name}/config (model configuration).

The configuration is Triton's model-config shape, the one tritonclient's get_model_config
returns, derived from the model's V2 metadata: name, platform and backend, max_batch_size
(the manifest's max_batch; 0 = the model does not batch along a first dimension), and the
inputs and outputs with Triton's data types. With max_batch_size > 0 the batch dimension is
left out of `dims`, as Triton does.
"""

from __future__ import annotations

from typing import Any

from onnxlift_serving import __version__
from onnxlift_serving.contract import DYNAMIC_BATCHING, EXTENSIONS

SERVER_NAME = "onnxlift"
# V2 datatype -> Triton model-config data_type.
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16",
    "FP32": "TYPE_FP32",
    "FP64": "TYPE_FP64",
    "BYTES": "TYPE_STRING",
}


def server_metadata() -> dict[str, Any]:
    """What GET /v2 answers: the server's name, the toolkit version, the V2 extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def _max_batch(metadata: dict[str, Any]) -> int:
    raw = (metadata.get("parameters") or {}).get("max_batch")
    batched = all(
        spec["shape"] and spec["shape"][0] == -1
        for spec in (*metadata["inputs"], *metadata["outputs"])
    )
    return int(raw) if isinstance(raw, int) and raw > 0 and batched else 0


def _tensor(spec: dict[str, Any], batched: bool) -> dict[str, Any]:
    dims = list(spec["shape"][1:] if batched else spec["shape"])
    return {"name": spec["name"], "data_type": TRITON_TYPES[spec["datatype"]], "dims": dims}


def model_config(metadata: dict[str, Any]) -> dict[str, Any]:
    """Triton's model configuration for a model, from its V2 metadata (service.metadata)."""
    max_batch = _max_batch(metadata)
    parameters = metadata.get("parameters") or {}
    batching = parameters.get(DYNAMIC_BATCHING)
    config: dict[str, Any] = {
        "name": metadata["name"],
        "versions": metadata.get("versions", []),
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": max_batch,
        "input": [_tensor(spec, max_batch > 0) for spec in metadata["inputs"]],
        "output": [_tensor(spec, max_batch > 0) for spec in metadata["outputs"]],
        "parameters": {
            "task": parameters.get("task"),
            "providers": parameters.get("providers"),
            "intra_op_num_threads": parameters.get("intra_op_num_threads"),
        },
    }
    if batching:  # Triton's block, as its config shows one (SageMaker container only)
        config[DYNAMIC_BATCHING] = {
            "max_queue_delay_microseconds": round(batching["max_queue_delay_ms"] * 1000),
            "default_queue_policy": {"max_queue_size": batching["max_queue_size"]},
            "parameters": {"max_batch_size": batching["max_batch_size"]},  # rows a merged run
        }
    return config
