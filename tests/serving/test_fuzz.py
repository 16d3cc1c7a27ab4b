"""Whatever a client sends, the Lambda handler answers 2xx, 4xx or 503 with Retry-After.

The real handler of every model (minilm from a moto registry, textclf and tabular baked in as
an image holds them), driven in-process with API Gateway REST events: first the cases that
once answered 500, then a seeded fuzz run of REQUESTS_PER_MODEL events per model over every
route, method, version and a wide range of broken bodies. Deterministic (one seed) and bounded
(a fixed count; about a minute on two shared cores).
"""

from __future__ import annotations

import base64
import collections
import gzip
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from onnxlift_serving.contract import API_BODY_BYTES, ROUTES, Env, serving_environment

from tests.conftest import ROOT, FakeLambdaContext, load_event, published_copy

pytestmark = pytest.mark.slow

MODELS = ("minilm", "textclf", "tabular")
REQUESTS_PER_MODEL = 3_400  # x 3 models: over 10,000 in all
SEED = 20261125
FEATURES = 30  # tabular's input width
Result = tuple[int, dict[str, str], Any]
CONTEXT = FakeLambdaContext()


@pytest.fixture
def served(
    load_handler: Callable[..., Any], tmp_path: Path, published: str
) -> dict[str, tuple[Any, str]]:
    """model -> (its handler module, the version it serves)."""
    from onnxlift.builder.build import build_model
    from onnxlift.spec import load_spec

    modules = {"minilm": (load_handler(LOG_LEVEL="WARNING"), published)}
    for name in ("textclf", "tabular"):
        build = build_model(load_spec(ROOT / "models" / name), root=ROOT, report=lambda _: None)
        folder = published_copy(build.folder, tmp_path / "image" / name, version="1")
        env = serving_environment(name=name, version="1", source="image", model_dir=str(folder))
        modules[name] = (load_handler(**env, **{Env.MODEL_BUCKET: "", "LOG_LEVEL": "WARNING"}), "1")
        assert modules[name][0].service.ready, modules[name][0].service.load_error
    return modules


def invoke(
    module: Any,
    method: str,
    path: str,
    body: str | bytes | None = None,
    *,
    b64: bool = False,
    headers: dict[str, str] | None = None,
) -> Result:
    event = load_event("infer", path=path, httpMethod=method, resource=path)
    event["headers"] = {**(event.get("headers") or {}), **(headers or {})}
    if isinstance(body, bytes):
        body, b64 = base64.b64encode(body).decode(), True
    event["body"], event["isBase64Encoded"] = body, b64
    result = module.lambda_handler(event, CONTEXT)
    headers = dict(result.get("headers") or {})
    for key, values in (result.get("multiValueHeaders") or {}).items():
        headers[key] = ", ".join(values)
    return result["statusCode"], headers, result.get("body")


def check(result: Result, what: str) -> int:
    """The contract: never >= 500 but a 503 with Retry-After; every error is JSON."""
    status, headers, body = result
    assert status < 500 or (status == 503 and headers.get("Retry-After")), (status, what, body)
    if status >= 400:
        assert isinstance(json.loads(body)["error"], str), (what, body)
    return status


def tensor(name: str, datatype: str, shape: list[int], data: Any) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


class Deep:
    """`depth` nested lists around `leaf`: written as text, since encoders recurse."""

    def __init__(self, depth: int, leaf: Any = 1.0) -> None:
        self.depth, self.leaf = depth, leaf


def nested(depth: int, leaf: Any = 1.0) -> Deep:
    return Deep(depth, leaf)


def to_json(doc: Any, *, ensure_ascii: bool = True) -> str:
    deep: list[Deep] = []

    def placeholder(value: Any) -> str:
        deep.append(value)
        return f"@@deep{len(deep) - 1}@@"

    text = json.dumps(doc, default=placeholder, ensure_ascii=ensure_ascii)
    for index, value in enumerate(deep):
        leaf = json.dumps(value.leaf, default=lambda _: None)
        text = text.replace(f'"@@deep{index}@@"', "[" * value.depth + leaf + "]" * value.depth)
    return text


# -- the cases that answered 500 before -----------------------------------------------------
def test_measured_500s_are_client_errors_now(
    served: dict[str, tuple[Any, str]], lambda_context: Any
) -> None:
    minilm, version = served["minilm"]
    textclf, _ = served["textclf"]
    tabular, _ = served["tabular"]
    infer = "/v2/models/{}/infer"
    cases: list[tuple[Any, str, str, Any, int, str]] = [
        (minilm, "POST", infer.format("minilm"), b'{"inputs": "\xff\xfe"}', 400, "UTF-8"),
        (textclf, "POST", infer.format("textclf"), b"\x80abc", 400, "UTF-8"),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [1, FEATURES], nested(1000))),
            400,
            "deeper than 400",
        ),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [1, 2], [[1.0, 2.0]])),
            422,
            "expects",
        ),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [1, FEATURES], ["nan"] * FEATURES)),
            422,
            "must be numbers",
        ),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [1, FEATURES], [None] * FEATURES)),
            422,
            "got null",
        ),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [1, FEATURES], [1e39] * FEATURES)),
            422,
            "finite",
        ),
        (
            tabular,
            "POST",
            infer.format("tabular"),
            to_json(tensor("features", "FP32", [2, FEATURES], [[1.0] * FEATURES, [1.0]])),
            422,
            "ragged",
        ),
        (minilm, "GET", infer.format("minilm"), None, 405, "use POST"),
        (minilm, "OPTIONS", "/v2/models/minilm", None, 405, "use GET"),
        (minilm, "TRACE", "/v2/health/live", None, 405, "use GET"),
        (minilm, "BREW", "/v2/nothing", None, 404, "no route"),
        (minilm, "OPTIONS", "/", None, 404, "no route"),
        (minilm, "POST", f"/v2/models/minilm/versions/{'a' * 300}/infer", "{}", 404, "not exist"),
        (minilm, "GET", "/v2/models/minilm/versions/01", None, 404, "not exist"),
        (minilm, "POST", "/v2/models/\ud800/infer", "{}", 404, "is not served here"),
    ]
    for module, method, path, body, status, fragment in cases:
        got, headers, raw = invoke(module, method, path, body)
        assert got == status, (method, path[:80], raw)
        assert fragment in json.loads(raw)["error"], raw
        assert "/tmp" not in raw and "sha256" not in raw
        if status == 405:
            assert headers["Allow"] in ("GET", "POST")
    got, _, raw = invoke(minilm, "POST", infer.format("minilm"), "not base64!", b64=True)
    assert got == 400 and "not valid base64" in json.loads(raw)["error"]
    # an empty batch: textclf (scikit-learn graph) and tabular answer with no rows
    got, _, raw = invoke(
        textclf, "POST", infer.format("textclf"), to_json(tensor("text", "BYTES", [0], []))
    )
    assert got == 200 and [o["shape"] for o in json.loads(raw)["outputs"]] == [[0], [0, 4]]
    got, _, raw = invoke(
        tabular,
        "POST",
        infer.format("tabular"),
        to_json(tensor("features", "FP32", [0, 30], [])),
    )
    assert got == 200 and [o["shape"] for o in json.loads(raw)["outputs"]] == [[0], [0, 2]]
    # the limit counts bytes: 1.6 M four-byte characters are 6.4 MB (and 1.6 M characters)
    emoji = to_json(tensor("text", "BYTES", [1], ["\U0001f600" * 1_600_000]), ensure_ascii=False)
    assert len(emoji) < API_BODY_BYTES < len(emoji.encode())
    got, _, raw = invoke(minilm, "POST", infer.format("minilm"), emoji)
    assert got == 413 and "bytes; the limit is" in json.loads(raw)["error"]
    assert invoke(minilm, "POST", f"/v2/models/minilm/versions/{version}/infer", "{}")[0] == 400


# -- the fuzz run ---------------------------------------------------------------------------
class Generator:
    """Seeded requests for one model: mostly broken, some good, every route and method."""

    METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT")
    TEXTS = ("hello", "", " ", "a" * 5000, "\U0001f600" * 50, "\x00\x01", "é", "\ufeff", "日本")

    def __init__(self, model: str, version: str, rng: random.Random) -> None:
        self.model, self.version, self.rng = model, version, rng

    def good(self) -> dict[str, Any]:
        rows = self.rng.choice((1, 1, 2, 3))
        if self.model == "tabular":
            data = [[self.rng.uniform(0, 30) for _ in range(FEATURES)] for _ in range(rows)]
            return tensor("features", "FP32", [rows, FEATURES], data)
        texts = [self.rng.choice(self.TEXTS[:3] + self.TEXTS[4:]) for _ in range(rows)]
        return tensor("text", "BYTES", [rows], texts)

    def scalar(self) -> Any:
        return self.rng.choice(
            (None, True, 0, -1, 1.5, 1e38, 1e39, -1e308, 2**64, 10**30, "nan", "1e999", "x", {}, [])
        )

    def value(self) -> Any:
        """Something to put where a tensor field goes: often wrong, sometimes deep."""
        roll = self.rng.random()
        if roll < 0.1:
            return nested(self.rng.choice((2, 50, 399, 400, 401, 990, 1015)), self.scalar())
        if roll < 0.3:
            return [self.scalar() for _ in range(self.rng.randint(0, 40))]
        if roll < 0.4:
            return [[self.scalar()] * self.rng.randint(0, 3) for _ in range(self.rng.randint(1, 4))]
        return self.scalar()

    def mutate(self, doc: dict[str, Any]) -> Any:
        spec = doc["inputs"][0]
        for _ in range(self.rng.randint(1, 3)):
            roll = self.rng.random()
            key = self.rng.choice(("name", "shape", "datatype", "data"))
            if roll < 0.15:
                spec.pop(key, None)
            elif roll < 0.45:
                spec[key] = self.value()
            elif roll < 0.55:
                spec["datatype"] = self.rng.choice(
                    ("FP32", "FP16", "INT64", "UINT8", "BOOL", "BYTES", "FP128")
                )
            elif roll < 0.7:
                spec["shape"] = [
                    self.rng.choice((0, 1, 2, 30, -1, 10**12, 257, 1025))
                    for _ in range(self.rng.randint(0, 3))
                ]
            elif roll < 0.8:
                doc[self.rng.choice(("inputs", "outputs", "id", "parameters"))] = self.value()
            elif roll < 0.85 and isinstance(doc.get("inputs"), list):
                doc["inputs"].append(dict(spec))
            elif roll < 0.9:
                self.boundary(spec)
            else:
                return self.rng.choice((self.value(), [doc], "text", None))
        return doc

    def boundary(self, spec: dict[str, Any]) -> None:
        """Keep the request well formed up to one thing: one odd element, no rows, too many."""
        roll = self.rng.random()
        data = spec.get("data")
        if roll < 0.5 and isinstance(data, list) and data:
            row = data[self.rng.randrange(len(data))]
            target = row if isinstance(row, list) and row else data
            target[self.rng.randrange(len(target))] = self.scalar()
        elif roll < 0.8:
            spec["shape"] = [0, FEATURES] if self.model == "tabular" else [0]
            spec["data"] = self.rng.choice(([], [[]], []))
        else:
            rows = self.rng.choice((65, 257, 1025))
            if self.model == "tabular":
                spec["shape"], spec["data"] = [rows, FEATURES], [[0.5] * FEATURES] * rows
            else:
                spec["shape"], spec["data"] = [rows], ["x"] * rows

    def raw_body(self) -> str | bytes:
        good = json.dumps(self.good())
        roll = self.rng.random()
        if roll < 0.25:
            return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 200)))
        if roll < 0.45:
            cut = self.rng.randint(0, len(good))
            return good[:cut]
        if roll < 0.6:
            return good.encode()[:-1] + b"\xff" + good.encode()[-1:]
        if roll < 0.7:
            return "[" * 1100 + "]" * 1100
        if roll < 0.8:
            return good.replace('"', "'")
        return self.rng.choice(("null", "1", '"x"', "[]", "{}", "NaN", "\ufeff{}", " ", ""))

    def path(self) -> str:
        roll = self.rng.random()
        name = self.model if roll < 0.8 else self.rng.choice(("other", "MINILM", "a" * 300, "%2F"))
        version = self.rng.choice(
            (self.version, self.version, "1", "2", "0", "01", "a" * 300, "-1", "1.0", "99999999999")
        )
        if self.rng.random() < 0.1:
            return self.rng.choice(
                (
                    "/",
                    "/v2",
                    "/v2/",
                    "/v2/models",
                    "/v2/models/",
                    f"/v2/models/{name}/",
                    f"/v2/models/{name}/versions",
                    f"/v2/models/{name}//infer",
                    "/ping",
                    f"/v2/models/{name}/infer/extra",
                    "/v2/repository/index",
                )
            )
        template = self.rng.choice(ROUTES).template
        return template.format(name=name, version=version)

    def request(self) -> tuple[str, str, Any, bool]:
        roll = self.rng.random()
        method = "POST"
        if roll < 0.15:
            path = self.path() if self.rng.random() < 0.5 else f"/v2/models/{self.model}/infer"
            return method, path, json.dumps(self.good()), False
        if roll < 0.55:
            body = to_json(self.mutate(self.good()), ensure_ascii=self.rng.random() < 0.5)
            return method, f"/v2/models/{self.model}/infer", body, False
        if roll < 0.7:
            body = self.raw_body()
            if isinstance(body, str) and self.rng.random() < 0.2:
                return method, f"/v2/models/{self.model}/infer", body, True  # "base64" that is not
            return method, f"/v2/models/{self.model}/infer", body, False
        method = self.rng.choice((*self.METHODS, "GET", "GET", "BREW", "get"))
        body = self.rng.choice((None, "", "{}", json.dumps(self.good())))
        return method, self.path(), body, False


def coded(rng: random.Random, body: Any) -> tuple[Any, dict[str, str]]:
    """Most requests as they are; some compressed (well or badly) or with a binary-extension
    header length, good or not: the paths in front of the JSON decoder."""
    if rng.random() < 0.8 or not isinstance(body, str | bytes):
        return body, {}
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    kind = rng.choice(("gzip", "deflate", "coding", "length", "binary"))
    if kind == "gzip":
        return gzip.compress(raw), {"Content-Encoding": rng.choice(("gzip", "x-gzip", "GZIP"))}
    if kind == "deflate":
        return zlib.compress(raw), {"Content-Encoding": "deflate"}
    if kind == "coding":
        value = rng.choice(("br", "gzip, gzip", "ü", "x" * 300, "", "identity", "gzip;q=1"))
        return raw, {"Content-Encoding": value}
    if kind == "length":
        value = rng.choice(("²", "-1", "0", "99999999", "1e3", str(len(raw)), str(len(raw) // 2)))
        return raw, {"Inference-Header-Content-Length": value}
    header = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[2],'
    header += b'"parameters":{"binary_data_size":%d}}]}' % rng.choice((8, 7, 0, 10**9))
    return header + rng.randbytes(8), {"Inference-Header-Content-Length": str(len(header))}


def requests_for(model: str, version: str, count: int) -> Iterator[tuple[str, str, Any, bool]]:
    generator = Generator(model, version, random.Random(f"{SEED}-{model}"))
    for _ in range(count):
        yield generator.request()


def test_fuzz_every_route_of_every_model_never_answers_a_server_error(
    served: dict[str, tuple[Any, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.perf_counter()
    histogram: dict[str, collections.Counter[int]] = {}
    for model in MODELS:
        module, version = served[model]
        counts = histogram.setdefault(model, collections.Counter())
        rng = random.Random(f"{SEED}-coded-{model}")
        for method, path, body, b64 in requests_for(model, version, REQUESTS_PER_MODEL):
            body, headers = coded(rng, body) if not b64 else (body, {})
            result = invoke(module, method, path, body, b64=b64, headers=headers)
            counts[check(result, f"{method} {path[:80]} {str(body)[:120]!r}")] += 1
    elapsed = time.perf_counter() - started
    total = sum(sum(c.values()) for c in histogram.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} requests in {elapsed:.1f}s")
        for model, counts in histogram.items():
            print(f"  {model}: {dict(sorted(counts.items()))}")
    assert total >= 10_000
    for model, counts in histogram.items():
        assert counts[200] >= 100, (model, counts)  # good requests were among them and answered
        assert {400, 404, 405, 422} <= set(counts), (model, counts)
        assert not {s for s in counts if s >= 500}, (model, counts)  # nothing, not even a 503
