"""Every onnxruntime session comes from onnxlift_serving.session, with the exact integer path.

The worst-case test below multiplies u8 255 by s8 127 so that every pair of products is
64,770: past a signed 16-bit sum. On an AVX2 or AVX-512 (no VNNI) CPU onnxruntime's default
kernel saturates it; through the factory it must be exact on every CPU.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxlift_serving.cpu import cpu_facts, u8s8_saturates
from onnxlift_serving.session import INTEGER_KERNEL_CONFIG, create_session

from tests.conftest import ROOT

FACTORY = ROOT / "layers" / "runtime" / "onnxlift_serving" / "session.py"
SCANNED = ["onnxlift", "layers", "functions", "infra", "models", "scripts", "tests", "app.py"]
FORBIDDEN = {"InferenceSession", "SessionOptions"}
# Only the bench's scheme comparison and this file's saturation proof run without the setting.
OVERRIDE_ALLOWED = {ROOT / "onnxlift" / "bench" / "schemes.py", Path(__file__).resolve()}


def session_bypasses(source: str) -> list[str]:
    """Lines that open an onnxruntime session or build its options outside the factory (as
    annotations the names are fine; importing them bare would hide a later call)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            name = called if called in FORBIDDEN else None
        elif isinstance(node, ast.ImportFrom) and any(a.name in FORBIDDEN for a in node.names):
            name = "import"
        if name:
            found.append(f"{getattr(node, 'lineno', '?')}: {name}")
    return found


def integer_overrides(source: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and any(k.arg == "integer_config" for k in node.keywords)
    ]


def python_files() -> list[Path]:
    files: list[Path] = []
    for entry in SCANNED:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def test_the_detectors_catch_a_bypass() -> None:
    sneaky = (
        "import onnxruntime as ort\n"
        "s: ort.InferenceSession = ort.InferenceSession('m.onnx')\n"
        "from onnxruntime import SessionOptions\n"
        "create_session('m.onnx', integer_config={})\n"
    )
    assert sorted(session_bypasses(sneaky)) == ["2: InferenceSession", "3: import"]
    assert integer_overrides(sneaky) == [4]
    assert session_bypasses("from onnxlift_serving.session import create_session\n") == []


def test_no_code_opens_a_session_but_the_factory() -> None:
    files = python_files()
    assert FACTORY in files and len(files) > 50
    bypasses = {
        str(f.relative_to(ROOT)): hits
        for f in files
        if f != FACTORY and (hits := session_bypasses(f.read_text()))
    }
    assert bypasses == {}, f"open sessions through onnxlift_serving.session: {bypasses}"
    overrides = {
        str(f.relative_to(ROOT)): lines
        for f in files
        if f not in OVERRIDE_ALLOWED
        and f != FACTORY
        and (lines := integer_overrides(f.read_text()))
    }
    assert overrides == {}, (
        f"only the bench's scheme comparison may pass integer_config: {overrides}"
    )


def _matmul_integer_model(weight: np.ndarray) -> bytes:
    """Y = MatMulInteger(A, W) with W an initializer, as quantize_dynamic lays it out."""
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "W"], ["Y"], name="mm")],
        "worst_case",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [None, weight.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [None, weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_factory_sessions_carry_the_exact_integer_setting() -> None:
    weight = np.full((64, 16), 127, dtype=np.int8)
    session = create_session(_matmul_integer_model(weight))
    options = session.get_session_options()
    for key, value in INTEGER_KERNEL_CONFIG.items():
        assert options.get_session_config_entry(key) == value
    assert options.intra_op_num_threads == 1


@pytest.mark.parametrize("k", [2, 64, 384])
def test_worst_case_u8_s8_products_are_exact_through_the_factory(k: int) -> None:
    rng = np.random.default_rng(k)
    weight = np.where(rng.random((k, 32)) < 0.5, 127, -128).astype(np.int8)
    weight[:, 0] = 127  # a column of pure worst-case pairs
    a = np.full((4, k), 255, dtype=np.uint8)
    a[1:] = rng.integers(0, 256, (3, k), dtype=np.uint8)
    exact = a.astype(np.int64) @ weight.astype(np.int64)
    model = _matmul_integer_model(weight)
    served = create_session(model).run(None, {"A": a})[0]
    np.testing.assert_array_equal(served, exact)
    if cpu_facts()["u8s8_saturates"]:
        # The same product without the setting really does saturate here: the test above
        # holds because of the setting, not because of this CPU.
        raw = create_session(model, integer_config={}).run(None, {"A": a})[0]
        assert not np.array_equal(raw, exact)


@pytest.mark.parametrize(
    ("machine", "flags", "saturates"),
    [
        ("x86_64", {"avx2"}, True),
        ("x86_64", {"avx2", "avx512f"}, True),
        ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, False),
        ("x86_64", {"avx2", "avx_vnni"}, False),
        ("aarch64", {"asimddp"}, False),
    ],
)
def test_which_cpus_saturate(machine: str, flags: set[str], saturates: bool) -> None:
    assert u8s8_saturates(machine, flags) is saturates


def test_cpu_facts_name_this_machine() -> None:
    facts = cpu_facts()
    assert facts["machine"] and set(facts["flags"]) <= {
        "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"
    }  # fmt: skip
    assert facts["u8s8_saturates"] == u8s8_saturates(facts["machine"], facts["flags"])
