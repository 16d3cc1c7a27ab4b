"""Hostile and careless inputs to `onnxlift add`, through the real CLI (issue 11, deliverable 7).

Every case must end the same way: its exit code (2 refused, 3 stopped by a limit), exactly one
`error:` line that says what was wrong, no traceback, and nothing left behind (no model
folder, no staging folder, no build, no file outside the project). The registry's side (hostile
manifests, tampered versions, names and versions in paths) is in
tests/registry/test_hostile_manifests.py; the time/memory limits' own details and Ctrl-C in
tests/builder/test_bounded_add.py.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxlift.cli import cli
from tests.builder.hostile_models import (
    X,
    Y,
    constant_of_huge_shape,
    external_data_model,
    point_external_data,
    runaway_loop,
    save,
    unknown_domain,
)
from tests.conftest import error_lines, nothing_left

pytestmark = pytest.mark.slow  # a child process per case: out of `make test-fast`


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Path]  # writes the hostile file(s) under the folder, returns the model
    fragment: str  # what the one error line must say
    code: int = 2
    args: tuple[str, ...] = ()
    samples: Callable[[Path], Path] | None = None
    name: str = "victim"
    env: dict[str, str] = field(default_factory=dict)


def identity(folder: Path, opset: int = 17, ir_version: int = 8) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [X], [Y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return save(model, folder / "model.onnx", ir_version=ir_version)


def write(folder: Path, name: str, data: bytes) -> Path:
    (folder / name).write_bytes(data)
    return folder / name


def torch_save(folder: Path) -> Path:
    torch.save({"weight": torch.ones(2)}, folder / "model.onnx")
    return folder / "model.onnx"


def truncated(folder: Path) -> Path:
    data = save(runaway_loop(), folder / "whole.onnx").read_bytes()
    return write(folder, "model.onnx", data[:50])


def external(folder: Path, **entries: str) -> Path:
    path, _ = external_data_model(folder / "pkg")
    return point_external_data(path, **entries) if entries else path


def external_symlink(folder: Path) -> Path:
    path = external(folder)
    secret = write(folder, "secret.bin", b"\0" * 128)
    (path.parent / "weights.bin").unlink()
    (path.parent / "weights.bin").symlink_to(secret)
    return path


def external_pickle(folder: Path) -> Path:
    path = external(folder)
    (path.parent / "weights.bin").write_bytes(pickle.dumps(list(range(40)))[:128].ljust(128))
    return path


def external_missing(folder: Path) -> Path:
    path = external(folder)
    (path.parent / "weights.bin").unlink()
    return path


def recursive_function(folder: Path) -> Path:
    """A local function that calls itself: expanding it would never end."""
    node = helper.make_node("Again", ["a"], ["b"], domain="local")
    function = helper.make_function(
        "local", "Again", ["a"], ["b"], [node], [helper.make_opsetid("", 17)]
    )
    graph = helper.make_graph(
        [helper.make_node("Again", ["x"], ["y"], domain="local")], "g", [X], [Y]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    return save(model, folder / "model.onnx")


def undefined_input(folder: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Add", ["x", "nowhere"], ["y"])], "g", [X], [Y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, folder / "model.onnx")


def lying_initializer(folder: Path) -> Path:
    """An initializer that declares 10^12 floats and carries 4 bytes."""
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, raw_data=b"\0" * 4)
    tensor.dims.extend([1_000_000, 1_000_000])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", [X], [Y], initializer=[tensor]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, folder / "model.onnx")


def wide_input(folder: Path) -> Path:
    wide = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 100_000_000])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 100_000_000])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [wide], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return save(model, folder / "model.onnx")


def npz(folder: Path, allow_pickle: bool = False, **arrays: np.ndarray) -> Path:
    np.savez(folder / "samples.npz", allow_pickle=allow_pickle, **arrays)  # type: ignore[arg-type]
    return folder / "samples.npz"


def zip_bomb(folder: Path) -> Path:
    """A samples.npz of about 300 kB whose x.npy unpacks to 300 MB of zeros."""
    path = folder / "samples.npz"
    shape = (18_750_000, 4)  # float32: 300,000,000 bytes
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(member, header)  # type: ignore[no-untyped-call]
        chunk = bytes(1 << 24)
        left = 4 * shape[0] * shape[1]
        while left:
            member.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return path


CASES: dict[str, Case] = {
    # the file itself
    "a pickle named model.onnx": Case(
        lambda f: write(f, "model.onnx", pickle.dumps({"w": [1, 2]})), "is a pickle"
    ),
    "a torch.save zip": Case(torch_save, "is a pickle"),
    "random bytes": Case(
        lambda f: write(f, "model.onnx", bytes(range(256)) * 4), "not a valid ONNX model"
    ),
    "a truncated protobuf": Case(truncated, "not a valid ONNX model"),
    "an empty file": Case(lambda f: write(f, "model.onnx", b""), "it has no graph"),
    "an opset from the future": Case(lambda f: identity(f, opset=99), "opset 99 is outside"),
    "an opset too old": Case(lambda f: identity(f, opset=5), "opset 5 is outside"),
    "an IR version from the future": Case(
        lambda f: identity(f, ir_version=99), "ir_version 99 is higher"
    ),
    "an op from an unknown domain": Case(
        lambda f: save(unknown_domain(), f / "model.onnx"), "model.onnx refused"
    ),
    "a function that calls itself": Case(recursive_function, "must not be recursive"),
    "a node reading an undefined value": Case(undefined_input, "input 'nowhere' of node"),
    "an initializer declaring 4 TB in 4 bytes": Case(lying_initializer, "is too small for the"),
    # external data
    "external data climbing out": Case(
        lambda f: external(f, location="../secret.bin"), "lies outside the model's folder"
    ),
    "external data at an absolute path": Case(
        lambda f: external(f, location="/etc/passwd"), "lies outside the model's folder"
    ),
    "external data through a symlink": Case(external_symlink, "lies outside the model's folder"),
    "external data that is a pickle": Case(external_pickle, "is a pickle"),
    "external data missing": Case(external_missing, "is missing"),
    "external data past its file's end": Case(
        lambda f: external(f, offset="96", length="128"), "from offset 96 of a 128-byte file"
    ),
    # work without end
    "a Loop of 10^12 iterations": Case(
        lambda f: save(runaway_loop(), f / "model.onnx"),
        "ran past its 3 s time limit",
        code=3,
        args=("--time-limit-s", "3"),
    ),
    "a ConstantOfShape of 40 GB": Case(
        lambda f: save(constant_of_huge_shape(), f / "model.onnx"),
        "more than its 1,024 MiB memory limit",
        code=3,
        args=("--memory-limit-mb", "1024"),
    ),
    "an input of 10^8 floats per row": Case(wide_input, "give --samples"),
    "a function too small for its model": Case(
        identity, "raise serving.memory_mb to at least", args=("--memory-mb", "256")
    ),
    # samples
    "samples holding pickled objects": Case(
        identity,
        "without pickle",
        samples=lambda f: npz(f, True, x=np.array([{"a": 1}] * 4, dtype=object)),
    ),
    "samples of the wrong shape": Case(
        identity, "has shape [3, 5]", samples=lambda f: npz(f, x=np.ones((3, 5), np.float32))
    ),
    "samples for another model": Case(
        identity,
        "the model's inputs are ['x']",
        samples=lambda f: npz(f, z=np.ones((3, 4), np.float32)),
    ),
    "samples that are not an npz": Case(
        identity, "must be an .npz", samples=lambda f: write(f, "samples.npz", b"x,y\n1,2\n")
    ),
    "samples that unpack to 300 MB": Case(identity, "unpacks to", samples=zip_bomb),
    # names
    "a name climbing out": Case(identity, "is not a model name", name="../../../escaped"),
    "an absolute name": Case(identity, "is not a model name", name="/tmp/escaped"),
    "a name with a newline": Case(identity, "is not a model name", name="x\ny"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_add_is_one_line_and_leaves_nothing(
    project: Path, tmp_path: Path, case: str
) -> None:
    spec = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = spec.make(inputs)
    argv = ["add", str(path), "--name", spec.name, "--no-publish", *spec.args]
    if spec.samples is not None:
        argv += ["--samples", str(spec.samples(inputs))]
    before = set(os.listdir(tmp_path))
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == spec.code, result.output
    (line,) = error_lines(result.output)
    assert spec.fragment in line, line
    nothing_left(project, spec.name)
    assert os.listdir(project / "models") == []
    assert set(os.listdir(tmp_path)) == before  # nothing written beside the project either
    assert not Path("/tmp/escaped").exists()
