"""The fuzz run of tests/serving/test_fuzz.py over real HTTP: `onnxlift up` on 127.0.0.1, the
local gateway, the local Lambda runtime, every model. Fewer requests than in-process (each is a
round trip), the same contract: nothing >= 500 but a 503 with Retry-After, errors are JSON."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.local.conftest import start_stack, stop_stack
from tests.serving.test_fuzz import MODELS, SEED, Generator

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REQUESTS_PER_MODEL = 500


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm_build: Any) -> Iterator[dict[str, Any]]:
    state: Path = tmp_path_factory.mktemp("fuzz-state")
    process, info = start_stack(state)
    try:
        yield info
    finally:
        if process.poll() is None:
            stop_stack(process)


def test_fuzz_over_http_never_answers_a_server_error(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    session = requests.Session()
    rng = random.Random(SEED)
    started = time.perf_counter()
    histogram: dict[str, collections.Counter[int]] = {}
    for model in MODELS:
        version = str(stack["models"][model]["version"])
        generator = Generator(model, version, random.Random(f"{SEED}-http-{model}"))
        counts = histogram.setdefault(model, collections.Counter())
        sent = 0
        while sent < REQUESTS_PER_MODEL:
            method, path, body, _ = generator.request()  # every method, made-up ones too
            sent += 1
            raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
            headers = {"content-type": "application/json"}
            if rng.random() < 0.95:
                headers["x-api-key"] = stack["api_key"]
            response = session.request(
                method, stack["url"] + path, data=raw, headers=headers, timeout=60
            )
            status = response.status_code
            assert status < 500 or (status == 503 and response.headers.get("Retry-After")), (
                method,
                path[:80],
                response.text[:300],
            )
            if status >= 400 and method != "HEAD":
                assert isinstance(response.json()["error"], str), response.text[:300]
            counts[status] += 1
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        total = sum(sum(c.values()) for c in histogram.values())
        print(f"\nhttp fuzz: {total} requests in {elapsed:.1f}s")
        for model, counts in histogram.items():
            print(f"  {model}: {dict(sorted(counts.items()))}")
    for model, counts in histogram.items():
        assert counts[200] >= 20 and not {s for s in counts if s >= 500}, (model, counts)
