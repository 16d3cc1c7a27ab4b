"""No function or method in infra/ is longer than 80 lines.

Long constructors are built from named steps instead (SageMakerEndpoint._model,
._endpoint_config, ...). Every infra/*.py is parsed with `ast`, nothing is imported; a
function's length runs from its first decorator (or its `def`) to its last line, nested
functions counted on their own and as part of the function around them.
"""

from __future__ import annotations

import ast
from pathlib import Path

INFRA = Path(__file__).resolve().parents[2] / "infra"
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


def test_no_infra_function_is_longer_than_80_lines() -> None:
    files = sorted(INFRA.glob("*.py"))
    assert len(files) > 1, INFRA
    found = [
        hit for path in files for hit in long_functions(path.read_text(encoding="utf-8"), path.name)
    ]
    assert found == [], "split these into named steps:\n" + "\n".join(found)
