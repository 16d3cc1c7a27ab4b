"""Parity between the served ONNX model and the source framework on fixed inputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class CosineParity:
    metric: str
    min: float
    mean: float
    count: int
    worst_index: int

    def to_json(self) -> dict[str, float | int | str]:
        return asdict(self)


def cosine_parity(served: np.ndarray, reference: np.ndarray) -> CosineParity:
    """Row-wise cosine similarity between two [n, d] embedding matrices."""
    if served.shape != reference.shape:
        raise ValueError(f"shape mismatch: served {served.shape}, reference {reference.shape}")
    a = served / np.linalg.norm(served, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cosines = (a * b).sum(axis=1)
    return CosineParity(
        metric="cosine",
        min=float(cosines.min()),
        mean=float(cosines.mean()),
        count=int(cosines.size),
        worst_index=int(cosines.argmin()),
    )
