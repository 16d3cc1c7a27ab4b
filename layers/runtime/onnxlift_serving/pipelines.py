"""Task pipelines: V2 tensors in, pre-processing, one session run, V2 tensors out."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException
from tokenizers import Tokenizer

from onnxlift_serving.artifact import Artifact
from onnxlift_serving.errors import ArtifactError, PayloadTooLarge, Unprocessable
from onnxlift_serving.protocol import DATATYPES, TensorSpec
from onnxlift_serving.session import MIB, arena_limit, is_allocation_failure, run_options

log = logging.getLogger(__name__)


class Pipeline(Protocol):
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def load_tokenizer(path: str, max_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(path)
    tokenizer.enable_truncation(max_length=max_length)
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
    return tokenizer


# A text longer than this many characters per token of the truncation length is cut before
# tokenizing (see tokenizable_prefix); English runs about 4-5 characters a token.
PREFIX_CHARS_PER_TOKEN = 16


def tokenizable_prefix(tokenizer: Tokenizer, text: str, max_length: int) -> str:
    """`text`, or a prefix of it that the tokenizer turns into the same truncated encoding.

    Tokenizing a 6 MB text only to keep its first `max_length` tokens takes seconds per MB, a
    request near the gateway's 29 s. The prefix is cut at whitespace (no word is split) and
    kept only when it alone fills `max_length` tokens: then its tokens are the first ones of
    the whole text and truncation drops the rest of both. Otherwise the whole text is used."""
    budget = max_length * PREFIX_CHARS_PER_TOKEN
    if len(text) <= budget:
        return text
    cut = next((i for i in range(budget, 0, -1) if text[i].isspace()), 0)
    if cut and len(tokenizer.encode(text[:cut]).ids) >= max_length:
        return text[:cut]
    return text


def run_session(
    session: ort.InferenceSession, outputs: list[str], feeds: dict[str, np.ndarray]
) -> list[np.ndarray]:
    """One session run; onnxruntime's refusals of the feeds are a 422, not a 500.

    The request was checked against the manifest before and the graph passed its parity run
    at build time; what still fails here is what only the graph knows of the input (a value a
    kernel refuses, two free dimensions that must agree): InvalidArgument, or Fail /
    RuntimeException raised by a node. The whole message goes to the log, its first line to
    the client (node names, no paths). The arena refusing an allocation (over its cap, or
    more than the machine has) is the request's size: a 413."""
    try:
        return session.run(outputs, feeds, run_options())  # the arena shrinks back after
    except MemoryError:
        log.warning("the run needed more memory than the process has")
        raise PayloadTooLarge(too_much_memory()) from None
    except (InvalidArgument, Fail, RuntimeException) as exc:
        if is_allocation_failure(str(exc)):
            log.warning("the request needs more memory than allowed: %s", exc)
            raise PayloadTooLarge(too_much_memory()) from None
        log.warning("the model refused the input: %s", exc)
        first = str(exc).splitlines()[0][:300]
        raise Unprocessable(f"the model refused the input: {first}") from None


def too_much_memory() -> str:
    """The 413 message of a request whose run (or answer) does not fit the process's memory."""
    limit = arena_limit()
    allowed = f"the {limit // MIB} MiB a request may use" if limit else "the memory available"
    return f"this request needs more memory than {allowed}; send fewer or shorter rows"


def empty_outputs(outputs: dict[str, TensorSpec]) -> dict[str, np.ndarray]:
    """The answer to a batch of 0: each output with 0 rows, or 422 where a shape is unknown."""
    result = {}
    for name, spec in outputs.items():
        rest = spec.shape[1:]
        if any(d < 0 for d in rest):
            raise Unprocessable("an empty batch cannot be answered by this model; send a row")
        result[name] = np.zeros((0, *rest), dtype=DATATYPES[spec.datatype])
    return result


class TextEmbeddingPipeline:
    """Raw strings -> tokenizer.json -> ONNX graph that mean-pools and L2-normalises."""

    def __init__(self, artifact: Artifact, session: ort.InferenceSession) -> None:
        preprocess = artifact.manifest["preprocess"]
        self.session = session
        self.max_length = int(preprocess["max_length"])
        self.tokenizer = load_tokenizer(
            str(artifact.asset(preprocess["tokenizer"])), self.max_length
        )
        self.max_batch = int(artifact.manifest.get("max_batch", 64))
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        (self.text_input,) = self.inputs
        (self.embedding_output,) = self.outputs
        self.graph_inputs = [i.name for i in session.get_inputs()]
        self.graph_output = session.get_outputs()[0].name
        if not {"input_ids", "attention_mask"} <= set(self.graph_inputs):
            raise ArtifactError(f"graph inputs {self.graph_inputs} lack input_ids/attention_mask")

    def prepare(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenize a batch into the graph's int64 feeds (padded to the longest text)."""
        encodings = self.tokenizer.encode_batch(
            [tokenizable_prefix(self.tokenizer, text, self.max_length) for text in texts]
        )
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        return {name: np.asarray(columns[name], dtype=np.int64) for name in self.graph_inputs}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in inputs[self.text_input].ravel()]
        if len(texts) > self.max_batch:
            raise PayloadTooLarge(
                f"batch of {len(texts)} texts is over this model's maximum of {self.max_batch}"
            )
        if not texts:
            return empty_outputs(self.outputs)
        (embedding,) = run_session(self.session, [self.graph_output], self.prepare(texts))
        return {self.embedding_output: embedding}


class TensorPipeline:
    """V2 tensors straight onto the graph's inputs of the same names, outputs back by name.

    Serves classifiers too: when the manifest lists class `labels` and the graph gives only
    `probabilities`, the `label` output is the arg-max class name. A BYTES input of shape
    [n] feeds a string graph input of shape [n, 1] (how skl2onnx declares text inputs).
    """

    def __init__(self, artifact: Artifact, session: ort.InferenceSession) -> None:
        self.session = session
        self.inputs = artifact.inputs
        self.outputs = artifact.outputs
        self.max_batch = int(artifact.manifest.get("max_batch", 64))
        self.labels = artifact.manifest.get("labels")
        self.graph_inputs = {i.name: i for i in session.get_inputs()}
        self.graph_outputs = [o.name for o in session.get_outputs()]
        missing = set(self.inputs) - set(self.graph_inputs)
        if missing:
            raise ArtifactError(f"graph lacks inputs {sorted(missing)}")
        derived = {"label"} if self.labels and "label" not in self.graph_outputs else set()
        if set(self.outputs) - set(self.graph_outputs) - derived:
            raise ArtifactError(f"graph lacks outputs {sorted(set(self.outputs) - derived)}")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, array in inputs.items():
            if array.ndim and array.shape[0] > self.max_batch:
                raise PayloadTooLarge(
                    f"batch of {array.shape[0]} is over this model's maximum of {self.max_batch}"
                )
            rank = len(self.graph_inputs[name].shape)
            feeds[name] = array.reshape(*array.shape, 1) if array.ndim == rank - 1 else array
        if any(array.ndim and array.shape[0] == 0 for array in inputs.values()):
            return empty_outputs(self.outputs)
        ran = run_session(self.session, self.graph_outputs, feeds)
        results = dict(zip(self.graph_outputs, ran, strict=True))
        if "label" in self.outputs and "label" not in results:
            results["label"] = np.asarray(self.labels, dtype=object)[
                np.argmax(results["probabilities"], axis=-1)
            ]
        return {name: results[name] for name in self.outputs}


PIPELINES = {
    "text-embedding": TextEmbeddingPipeline,
    "classification": TensorPipeline,
    "tensor": TensorPipeline,
}


def build_pipeline(artifact: Artifact, session: ort.InferenceSession) -> Pipeline:
    task = artifact.manifest.get("task")
    if task not in PIPELINES:
        raise ArtifactError(f"no serving pipeline for task '{task}'")
    return PIPELINES[task](artifact, session)
