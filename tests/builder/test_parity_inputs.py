"""An added model's parity inputs are bounded and checked before they are read or made."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxlift_serving.protocol import TensorSpec

from onnxlift.errors import BuildError
from onnxlift.sources import onnx_file

INPUTS = [TensorSpec("x", "FP32", (-1, 16))]


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    return path


def test_good_samples_are_read(tmp_path: Path) -> None:
    arrays = onnx_file.read_samples(npz(tmp_path / "s.npz", x=np.ones((3, 16), np.float32)), INPUTS)
    assert arrays["x"].shape == (3, 16)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"y": np.ones((3, 16), np.float32)}, "the model's inputs are ['x']"),
        ({"x": np.ones((3, 15), np.float32)}, "has shape [3, 15]"),
        ({"x": np.ones((16,), np.float32)}, "has shape [16]"),
        ({"x": np.array([{"a": 1}], dtype=object)}, "without pickle"),
    ],
)
def test_samples_that_do_not_fit_are_one_clear_refusal(
    tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    path = tmp_path / "s.npz"
    np.savez(path, allow_pickle=True, **arrays)  # type: ignore[arg-type]
    with pytest.raises(BuildError) as refused:
        onnx_file.read_samples(path, INPUTS)
    assert fragment in str(refused.value)


def test_a_zip_bomb_is_refused_from_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_file, "SAMPLES_MAX_BYTES", 1024 * 1024)
    path = npz(tmp_path / "bomb.npz", x=np.zeros((2 * 1024 * 1024 // 64, 16), np.float32))
    assert path.stat().st_size < 64 * 1024  # small on disk, 2 MB unpacked
    with pytest.raises(BuildError, match="unpacks to"):
        onnx_file.read_samples(path, INPUTS)


def test_not_an_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    np.save(path, np.ones((3, 16), np.float32))
    with pytest.raises(BuildError, match=r"must be an \.npz"):
        onnx_file.read_samples(path, INPUTS)


def test_generated_inputs_refuse_a_huge_declared_shape() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100_000_000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 100_000_000])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    with pytest.raises(BuildError, match="give --samples"):
        onnx_file.sample_inputs([TensorSpec("x", "FP32", (-1, 100_000_000))], model)
