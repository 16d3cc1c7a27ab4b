"""The inputs every measurement shares: ordinary sentences from the model's parity set.

The parity set spans one word to past the 256-token limit; speed is measured on its
sentences of 20 to 120 characters (what an embedding API mostly sees), in file order, so a
batch of 8 is the first 8 of them and every tier and every alternative gets the same texts.
"""

from __future__ import annotations

from pathlib import Path

MIN_CHARS, MAX_CHARS = 20, 120
BATCH_SIZES = (1, 8, 32)


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


def bench_sentences(parity_file: Path, count: int = max(BATCH_SIZES)) -> list[str]:
    chosen = [t for t in read_lines(parity_file) if MIN_CHARS <= len(t) <= MAX_CHARS]
    if not chosen:
        raise ValueError(f"{parity_file} has no sentences of {MIN_CHARS}-{MAX_CHARS} characters")
    while len(chosen) < count:  # a short parity file: cycle it
        chosen = chosen + chosen
    return chosen[:count]


def batch(sentences: list[str], size: int) -> list[str]:
    if size > len(sentences):
        raise ValueError(f"batch of {size} but only {len(sentences)} sentences")
    return sentences[:size]


def v2_body(texts: list[str], input_name: str = "text") -> str:
    """The V2 infer request a client sends for these texts."""
    import json

    return json.dumps(
        {
            "inputs": [
                {"name": input_name, "shape": [len(texts)], "datatype": "BYTES", "data": texts}
            ]
        }
    )
