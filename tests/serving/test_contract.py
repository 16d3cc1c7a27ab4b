"""The serving contract: one route table, one error body, env names read from the env given.

The SageMaker proxy is a separate Lambda asset without dependencies, so it keeps its own
matcher; it is held here to the contract's table on every route and on near misses.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving.contract import (
    API_BODY_BYTES,
    DYNAMIC_BATCHING,
    ROUTES,
    Env,
    Op,
    allowed_methods,
    error_body,
    match_route,
    route_path,
    sandbox_environment,
    serving_environment,
    threads_for_memory,
)
from onnxlift_serving.service import ServiceConfig

from onnxlift.local.lambda_runtime import load_handler
from tests.conftest import ROOT

PROXY = ROOT / "functions" / "sagemaker" / "proxy" / "proxy_handler.py"
SAMPLE = {"name": "minilm", "version": "3"}
NEAR_MISSES = [
    ("GET", "/v2/models"),
    ("GET", "/v2/models/"),
    ("GET", "/v2/models/minilm/infer"),
    ("POST", "/v2/models/minilm"),
    ("POST", "/v2/models/minilm/ready"),
    ("GET", "/v2/models/minilm/versions"),
    ("GET", "/v2/models/minilm/versions/3/extra"),
    ("DELETE", "/v2/models/minilm"),
    ("POST", "/v2/health/live"),
    ("GET", "/v2/health"),
    ("GET", "/v2/models/a/b"),
    ("POST", "/v2"),
    ("POST", "/v2/"),
    ("POST", "/v2/models/minilm/config"),
    ("GET", "/v2/models/minilm/config/x"),
    ("GET", "/v2/models/minilm/versions/3/config/x"),
]


def concrete(template: str) -> str:
    return template.format(**SAMPLE)


@pytest.fixture(scope="module")
def proxy() -> Any:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_DEFAULT_REGION": "us-east-1", "ENDPOINT_NAME": "x"}.items():
            patch.setenv(key, value)
        load_handler(PROXY)  # as Lambda imports it
    yield sys.modules["proxy_handler"]
    sys.modules.pop("proxy_handler", None)


def test_every_route_matches_itself_with_its_parameters() -> None:
    assert {r.op for r in ROUTES} == set(Op)
    for route in ROUTES:
        found = match_route(route.method, concrete(route.template))
        assert found is not None and found.route == route
        assert found.name == (SAMPLE["name"] if "{name}" in route.template else None)
        assert found.version == (SAMPLE["version"] if "{version}" in route.template else None)


def test_a_trailing_slash_takes_the_route_as_api_gateway_does() -> None:
    """API Gateway REST routes /x/ to the resource /x; the handler and gateway follow."""
    for route in ROUTES:
        found = match_route(route.method, concrete(route.template) + "/")
        assert found is not None and found.route == route
    assert match_route("GET", "/v2//") is not None and route_path("/") == "/"
    assert allowed_methods("/v2/health/live/") == ("GET",)


@pytest.mark.parametrize(("method", "path"), NEAR_MISSES)
def test_near_misses_match_nothing(method: str, path: str) -> None:
    assert match_route(method, path) is None
    assert match_route(method, path) is None  # remembered, still nothing


def test_remembered_matches_are_bounded_and_answer_as_the_table_does() -> None:
    from onnxlift_serving import contract

    contract._MATCHED.clear()
    path = concrete("/v2/models/{name}/infer")
    first = match_route("POST", path)
    assert first is not None and match_route("POST", path) is first  # shared, immutable
    with pytest.raises(TypeError):
        first.params["name"] = "other"  # type: ignore[index]
    for index in range(contract._MATCHED_MAX + 10):  # made-up paths cannot grow it
        match_route("GET", f"/v2/models/m{index}")
    assert len(contract._MATCHED) <= contract._MATCHED_MAX
    long = "/v2/models/" + "x" * contract._MATCHED_PATH_MAX
    found = match_route("GET", long)
    assert found is not None and found.name == "x" * contract._MATCHED_PATH_MAX
    assert ("GET", long) not in contract._MATCHED
    assert match_route("G" * 4000, "/v2") is None and ("G" * 4000, "/v2") not in contract._MATCHED
    for route in ROUTES:  # after the table started over, answers as the routes do
        for path in (concrete(route.template), concrete(route.template) + "/"):
            assert match_route(route.method, path) == contract._match_route(route.method, path)
            assert match_route(route.method, path) == contract._match_route(route.method, path)


def test_the_sagemaker_proxy_follows_the_same_table(proxy: Any) -> None:
    for route in ROUTES:
        op, name, version = proxy._route(route.method, concrete(route.template))
        found = match_route(route.method, concrete(route.template))
        assert found is not None
        assert (op, name, version) == (str(found.op), found.name, found.version)
    for method, path in NEAR_MISSES:
        assert proxy._route(method, path) is None, (method, path)
    assert proxy.MAX_PAYLOAD_BYTES == API_BODY_BYTES


@pytest.mark.parametrize("slashes", ["/", "//"])
def test_the_sagemaker_proxy_ignores_a_trailing_slash_as_the_contract_does(
    proxy: Any, slashes: str
) -> None:
    for route in ROUTES:
        path = concrete(route.template) + slashes
        found = match_route(route.method, path)
        assert found is not None
        assert proxy._route(route.method, path) == (str(found.op), found.name, found.version)
    for method, path in NEAR_MISSES:
        assert match_route(method, path + slashes) is None
        assert proxy._route(method, path + slashes) is None, (method, path + slashes)
    assert proxy._route("GET", "/") is None and proxy._route("GET", "") is None
    # a path some route answers under another method is a 405 with Allow, slash or not
    reply = proxy._no_route("POST", "/v2/health/live/")
    assert reply["statusCode"] == 405 and reply["headers"]["Allow"] == "GET"


def test_error_body_is_one_shape() -> None:
    assert error_body("bad input") == {"error": "bad input"}


def test_service_config_reads_only_the_env_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(Env.ORT_INTRA_OP_THREADS, "5")  # must not leak into an explicit env
    given = {Env.MODEL_NAME: "m", Env.LAMBDA_MEMORY: "3538", Env.MODEL_ALIAS: "canary"}
    config = ServiceConfig.from_env(given)
    assert (config.name, config.alias, config.threads) == ("m", "canary", 2)
    assert ServiceConfig.from_env({**given, Env.ORT_INTRA_OP_THREADS: "3"}).threads == 3


@pytest.mark.parametrize(("memory", "threads"), [(128, 1), (1769, 1), (3538, 2), (10240, 5)])
def test_threads_follow_the_lambda_vcpu_share(memory: int, threads: int) -> None:
    assert threads_for_memory(memory) == threads


def test_the_serving_environment_reads_back_into_the_same_config() -> None:
    env = serving_environment(
        name="m",
        version="4",
        source="registry",
        alias="canary",
        bucket="b",
        cache_dir="/tmp/c",
        threads=3,
        alias_ttl_s=1.5,
        providers="CUDAExecutionProvider",
    ) | sandbox_environment("m", 1769)
    config = ServiceConfig.from_env(env)
    assert (config.name, config.version, config.source, config.alias) == (
        "m",
        "4",
        "registry",
        "canary",
    )
    assert (config.bucket, str(config.cache_dir), config.threads) == ("b", "/tmp/c", 3)
    assert (config.alias_ttl_s, config.providers) == (1.5, ("CUDAExecutionProvider",))
    assert env["POWERTOOLS_SERVICE_NAME"] == "onnxlift-m" and env[Env.LAMBDA_MEMORY] == "1769"
    assert ServiceConfig.from_env(serving_environment(name="m")).threads >= 1


# -- nothing else spells the contract ---------------------------------------------------------
SPELLERS = ["onnxlift", "layers", "functions", "infra", "scripts", "app.py"]
CONTRACT = ROOT / "layers" / "runtime" / "onnxlift_serving" / "contract.py"
# The proxy is a dependency-free asset: its own matcher is held to ROUTES above. (The
# PreTraffic hook's asset bundles the contract, so it imports it like everything else.)
OWN_COPY = {PROXY}
# Keys of the contract's documents spelled only there too (besides the Env names).
CONTRACT_KEYS = {DYNAMIC_BATCHING}


def contract_spellings(source: str) -> list[str]:
    """String literals (docstrings aside) that spell a V2 route, a contract env name or a
    contract key."""
    tree = ast.parse(source)
    docstrings = {
        id(body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and (body := node.body)
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
    }
    names = {str(e) for e in Env} | CONTRACT_KEYS
    return [
        f"{node.lineno}: {node.value!r}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and (node.value.startswith("/v2") or node.value in names)
    ]


def test_the_speller_finds_routes_and_env_names() -> None:
    sample = 'def f():\n    """/v2 is prose here."""\n    return f"/v2/models/{x}", "MODEL_NAME"\n'
    assert sorted(contract_spellings(sample)) == ["3: '/v2/models/'", "3: 'MODEL_NAME'"]
    launcher = 'env.get("SAGEMAKER_THREADS"), env["ONNXLIFT_GPUS"], meta["dynamic_batching"]\n'
    assert sorted(contract_spellings(launcher)) == [
        "1: 'ONNXLIFT_GPUS'",
        "1: 'SAGEMAKER_THREADS'",
        "1: 'dynamic_batching'",
    ]


def test_no_file_but_the_contract_spells_a_route_or_an_env_name() -> None:
    files: list[Path] = []
    for entry in SPELLERS:
        path = ROOT / entry
        files += [path] if path.is_file() else sorted(path.rglob("*.py"))
    spelled = {
        str(f.relative_to(ROOT)): hits
        for f in files
        if f not in OWN_COPY | {CONTRACT} and (hits := contract_spellings(f.read_text()))
    }
    assert spelled == {}
