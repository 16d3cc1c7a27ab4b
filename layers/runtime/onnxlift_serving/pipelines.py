"""Task pipelines: V2 tensors in, pre-processing, one session run, V2 tensors out."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from onnxlift_serving.artifact import Artifact
from onnxlift_serving.errors import ArtifactError, PayloadTooLarge
from onnxlift_serving.protocol import TensorSpec


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


class TextEmbeddingPipeline:
    """Raw strings -> tokenizer.json -> ONNX graph that mean-pools and L2-normalises."""

    def __init__(self, artifact: Artifact, session: ort.InferenceSession) -> None:
        preprocess = artifact.manifest["preprocess"]
        self.session = session
        self.tokenizer = load_tokenizer(
            str(artifact.asset(preprocess["tokenizer"])), int(preprocess["max_length"])
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
        encodings = self.tokenizer.encode_batch(texts)
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
            dim = self.outputs[self.embedding_output].shape[-1]
            return {self.embedding_output: np.zeros((0, dim), dtype=np.float32)}
        (embedding,) = self.session.run([self.graph_output], self.prepare(texts))
        return {self.embedding_output: embedding}


PIPELINES = {"text-embedding": TextEmbeddingPipeline}


def build_pipeline(artifact: Artifact, session: ort.InferenceSession) -> Pipeline:
    task = artifact.manifest.get("task")
    if task not in PIPELINES:
        raise ArtifactError(f"no serving pipeline for task '{task}'")
    return PIPELINES[task](artifact, session)
