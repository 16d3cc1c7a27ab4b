"""The cold start bench runs the serving code as the Lambda image holds it: compiled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from onnxlift.bench.coldstart import stage_task_root
from tests.conftest import ROOT

HANDLER, RUNTIME = ROOT / "functions/inference/handler.py", ROOT / "layers/runtime"


def test_staged_task_root_is_compiled_and_imported_from_its_bytecode(tmp_path: Path) -> None:
    runtime, handler = stage_task_root(HANDLER, RUNTIME, tmp_path / "task")
    assert handler == runtime / "handler.py"
    sources = sorted(p.name for p in (RUNTIME / "onnxlift_serving").glob("*.py"))
    staged = sorted(p.name for p in (runtime / "onnxlift_serving").glob("*.py"))
    assert staged == sources
    tag = sys.implementation.cache_tag
    for source in [handler, *(runtime / "onnxlift_serving").glob("*.py")]:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        # PEP 552 flags: 0b11 = hash-based, source checked (as the Dockerfile compiles)
        assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11, pyc
    verbose = subprocess.run(
        [sys.executable, "-v", "-c", "import onnxlift_serving.protocol"],
        env={"PYTHONPATH": str(runtime), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert f"{runtime}/onnxlift_serving/__pycache__/protocol.{tag}.pyc matches" in verbose


@pytest.mark.parametrize(
    ("dockerfile", "code_root"),
    [
        ("functions/inference/Dockerfile", "${LAMBDA_TASK_ROOT}"),
        ("functions/sagemaker/Dockerfile", "/opt/program"),
    ],
    ids=["lambda", "sagemaker"],
)
def test_images_compile_the_python_they_copy(dockerfile: str, code_root: str) -> None:
    """A read-only code folder keeps no bytecode Python writes at run time: the image must."""
    lines = (ROOT / dockerfile).read_text().replace("\\\n", " ").splitlines()
    served: list[str] = []  # where each Python file or package the code root gets lands
    for line in lines:
        words = line.split()
        if words[:1] != ["COPY"] or not words[-1].startswith(code_root):
            continue
        destination = words[-1].rstrip("/")
        for source in words[1:-1]:
            if source.endswith(".py"):
                served.append(f"{destination}/{Path(source).name}")
            elif source.rstrip("/").endswith("onnxlift_serving"):
                served.append(destination)
    compiled = [
        word.strip('"').rstrip("/")
        for line in lines
        if line.startswith("RUN ") and "compileall" in line
        for word in line.split()
        if word.strip('"').startswith(code_root)
    ]
    assert served and compiled, (served, compiled)
    for target in served:
        assert any(target == c or target.startswith(f"{c}/") for c in compiled), (target, compiled)
