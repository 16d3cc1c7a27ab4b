"""No function or method outside tests is longer than 80 lines.

Long ones are built from named steps instead (SageMakerEndpoint._model, build_model's
_export_and_check, LocalStack.start's steps, ...). Every module is parsed with `ast`, nothing
is imported; a
function's length runs from its first decorator (or its `def`) to its last line, nested
functions counted on their own and as part of the function around them.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ["onnxlift", "layers", "functions", "infra", "scripts", "app.py"]
MAX_LINES = 80


def long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list[str]:
    """`file:line name (n lines)` for every function in `source` longer than `limit`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            length = node.end_lineno - first + 1
            if length > limit:
                found.append(f"{filename}:{node.lineno} {node.name} ({length} lines)")
    return found


def _synthetic(body_lines: int) -> str:
    """A decorated method of `body_lines` body lines: 2 + body_lines lines in all."""
    body = "".join(f"        x{i} = {i}\n" for i in range(body_lines))
    return f"class C:\n    @staticmethod\n    def long():\n{body}"


def test_the_check_catches_a_long_function() -> None:
    assert long_functions(_synthetic(MAX_LINES - 2), "ok.py") == []
    assert long_functions(_synthetic(MAX_LINES - 1), "long.py") == ["long.py:3 long (81 lines)"]


def test_no_function_outside_tests_is_longer_than_80_lines() -> None:
    files: list[Path] = []
    for entry in CODE:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    assert len(files) > 50
    found = [
        hit
        for path in files
        for hit in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert found == [], "split these into named steps:\n" + "\n".join(found)
