"""The inputs every measurement shares: the parity set's sentences of 20 to 120 characters
(what an embedding API mostly sees) in file order; a batch of b is the first b of them."""

from __future__ import annotations

import json
import math
from pathlib import Path

MIN_CHARS, MAX_CHARS = 20, 120
BATCH_SIZES = (1, 8, 32)


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def bench_sentences(parity_file: Path, count: int = max(BATCH_SIZES)) -> list[str]:
    chosen = [t for t in read_lines(parity_file) if MIN_CHARS <= len(t) <= MAX_CHARS]
    if not chosen:
        raise ValueError(f"{parity_file} has no sentences of {MIN_CHARS}-{MAX_CHARS} characters")
    return (chosen * math.ceil(count / len(chosen)))[:count]  # a short parity file: cycle it


def batch(sentences: list[str], size: int) -> list[str]:
    if size > len(sentences):
        raise ValueError(f"batch of {size} but only {len(sentences)} sentences")
    return sentences[:size]


def v2_body(texts: list[str], input_name: str = "text") -> str:
    """The V2 infer request a client sends for these texts."""
    tensor = {"name": input_name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}
    return json.dumps({"inputs": [tensor]})
