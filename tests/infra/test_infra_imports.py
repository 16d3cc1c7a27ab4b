"""infra/ imports one way: config <- nag <- constructs <- stack, no circle, nothing hidden.

Every infra/*.py is parsed with `ast`, nothing is imported: a circle shows up here even
when a function-level or TYPE_CHECKING import keeps it from failing at import time, which
is how the last one (stack -> api -> inference_function -> config -> sagemaker_endpoint ->
nag -> stack) went unnoticed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from itertools import pairwise
from pathlib import Path

import pytest

INFRA = Path(__file__).resolve().parents[2] / "infra"
PACKAGE = "infra"
INIT = "__init__"

# A module may import modules of its own layer or lower ones, never higher. Within a
# layer (the constructs build on each other) only the cycle check applies. A new module
# must be given a layer here.
LAYERS = {
    INIT: 0,
    "config": 0,
    "images": 0,
    "nag": 1,
    "registry_bucket": 2,
    "inference_function": 2,
    "sagemaker_endpoint": 2,
    "rest_api": 2,
    "signing_key": 2,
    "rollout": 2,
    "dashboard": 2,
    "onnxlift_stack": 3,
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. "stack"
    target: str  # imported infra module, e.g. "api" (INIT for names from the package itself)
    line: int
    hidden_in: str | None  # "a function" or "a TYPE_CHECKING block"; None at module level


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, modules: Set[str]) -> list[str]:
    """The infra modules one import statement loads (none for other packages)."""
    if isinstance(node, ast.Import):
        names = [alias.name.split(".") for alias in node.names]
        return [parts[1] if len(parts) > 1 else INIT for parts in names if parts[0] == PACKAGE]
    if node.level > 1:  # above the infra package
        return []
    if node.level == 1:  # infra modules are all top-level: `.` is the infra package
        base = [PACKAGE, *(node.module.split(".") if node.module else [])]
    elif node.module is not None:
        base = node.module.split(".")
    else:
        return []
    if base[0] != PACKAGE:
        return []
    if len(base) > 1:
        return [base[1]]
    # `from infra import x`: a submodule if there is one, else a name of the package.
    return [alias.name if alias.name in modules else INIT for alias in node.names]


def infra_imports(source: str, module: str, modules: Set[str]) -> list[Import]:
    """Every import of an infra module in `source`, wherever it is, with where it is."""
    found: list[Import] = []

    def visit(nodes: Iterable[ast.AST], hidden_in: str | None) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.extend(
                    Import(module, target, node.lineno, hidden_in)
                    for target in _targets(node, modules)
                )
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, hidden_in or "a TYPE_CHECKING block")
                visit(node.orelse, hidden_in)  # the else branch runs at import time
                continue
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(ast.iter_child_nodes(node), hidden_in or "a function")
                continue
            visit(ast.iter_child_nodes(node), hidden_in)

    visit(ast.parse(source).body, None)
    return found


def import_graph(imports: Iterable[Import], modules: Iterable[str]) -> dict[str, set[str]]:
    """module -> the infra modules it imports, counting every import (hidden ones too)."""
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
    return graph


def find_cycle(graph: Mapping[str, Set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a] (a imports b ...), or None."""
    try:
        # graph[m] are m's predecessors: what must be imported before m.
        TopologicalSorter(graph).prepare()
    except CycleError as error:
        return list(reversed(error.args[1]))  # CycleError lists it importee first
    return None


def _infra_sources() -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted(INFRA.glob("*.py"))}


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    sources = _infra_sources()
    return [
        imp
        for module, source in sources.items()
        for imp in infra_imports(source, module, set(sources))
    ]


def test_every_infra_module_has_a_layer() -> None:
    assert set(_infra_sources()) == set(LAYERS)


def test_no_import_circle(imports: list[Import]) -> None:
    graph = import_graph(imports, _infra_sources())
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_hidden_infra_imports(imports: list[Import]) -> None:
    hidden = [
        f"infra/{imp.source}.py:{imp.line} imports infra.{imp.target} inside {imp.hidden_in}"
        for imp in imports
        if imp.hidden_in is not None
    ]
    assert hidden == []


def test_imports_go_one_way(imports: list[Import]) -> None:
    # (A module missing from LAYERS fails test_every_infra_module_has_a_layer.)
    upward = [
        f"infra/{imp.source}.py:{imp.line} (layer {LAYERS.get(imp.source)}) imports "
        f"infra.{imp.target} (layer {LAYERS.get(imp.target)})"
        for imp in imports
        if LAYERS.get(imp.target, 0) > LAYERS.get(imp.source, 0)
    ]
    assert upward == []


def test_nag_and_config_import_no_infra_module(imports: list[Import]) -> None:
    assert {imp.target for imp in imports if imp.source in ("config", "nag")} == set()


# -- the checks above can fail --------------------------------------------------------------


def test_cycle_detector_finds_a_cycle() -> None:
    cycle = find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycle is not None
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert all(after in graph[before] for before, after in pairwise(cycle))
    assert find_cycle({"a": {"a"}}) is not None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# The shape of the old circle, with its back-edges hidden the ways they were.
OLD_CIRCLE = {
    "stack": "from infra.api import InferenceApi\n",
    "api": "from infra.inference_function import InferenceFunction\n",
    "inference_function": "from infra.config import ModelDeployment\n",
    "config": "def sagemaker_from_specs():\n    from infra.sagemaker_endpoint import D\n",
    "sagemaker_endpoint": "from infra import nag\n",
    "nag": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from infra.stack import OnnxliftStack\n"
        "else:\n    import infra.config\n"
        "class Acks:\n    def run(self):\n        from . import sagemaker_endpoint\n"
    ),
}


def test_the_parser_sees_hidden_imports_and_the_circle_they_close() -> None:
    modules = set(OLD_CIRCLE)
    found = [
        imp
        for module, source in OLD_CIRCLE.items()
        for imp in infra_imports(source, module, modules)
    ]
    assert {(i.source, i.target, i.hidden_in) for i in found if i.hidden_in} == {
        ("config", "sagemaker_endpoint", "a function"),
        ("nag", "stack", "a TYPE_CHECKING block"),
        ("nag", "sagemaker_endpoint", "a function"),
    }
    assert ("nag", "config", None) in {(i.source, i.target, i.hidden_in) for i in found}
    assert find_cycle(import_graph(found, modules)) is not None
    # Only the hidden imports close it: the module-level ones alone are acyclic.
    visible = [imp for imp in found if imp.hidden_in is None]
    assert find_cycle(import_graph(visible, modules)) is None


def test_import_forms_resolve_to_infra_modules() -> None:
    modules = {"config", "nag", "stack"}
    source = (
        "import infra\nimport infra.nag as n\nimport os.path\n"
        "from infra import config, VERSION\nfrom .stack import OnnxliftStack\n"
        "from aws_cdk import Stack\nfrom .. import elsewhere\n"
    )
    targets = [imp.target for imp in infra_imports(source, "api", modules)]
    assert targets == [INIT, "nag", "config", INIT, "stack"]
