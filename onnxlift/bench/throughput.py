"""Requests per second through the local gateway at several concurrencies, against the limit:
cores / (bare session.run time at batch 1, one thread), what the machine could do if nothing
but onnxruntime ran. The client, the gateway and the function share those cores."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from onnxlift_serving.contract import infer_path

from onnxlift.bench.corpus import v2_body
from onnxlift.bench.serving import GatewayClient
from onnxlift.bench.timing import summarize

CONCURRENCY = (1, 2, 4, 8)


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def local_stack(
    root: Path, models: list[str], state: Path | None, report: Callable[[str], None]
) -> Iterator[dict[str, Any]]:
    """The local.json of a running stack: the one at `state`, or of `onnxlift up` started here
    as a user runs it (moto, a pool of local Lambda sandboxes per model, one thread each as at
    2,048 MB, the gateway), on free loopback ports with its own state folder."""
    if state is not None:
        info = json.loads(state.read_text())
        report(f"  using the running stack at {info['url']}")
        yield info
        return
    from onnxlift.local.processes import Child, free_port, tail

    with tempfile.TemporaryDirectory(prefix="onnxlift-bench-state-") as folder:
        ports = ["--port", str(free_port()), "--aws-port", str(free_port()), "--threads", "1"]
        args = [sys.executable, "-m", "onnxlift.cli", "up", *ports]
        args += [arg for model in models for arg in ("--model", model)]
        env = os.environ | {"ONNXLIFT_STATE_DIR": folder, "ONNXLIFT_ROOT": str(root)}
        log, info_path = Path(folder) / "up.log", Path(folder) / "local.json"
        started, deadline = time.perf_counter(), time.monotonic() + 240
        with log.open("w") as out:
            process = subprocess.Popen(
                args,
                cwd=root,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            up = Child("onnxlift up", process, log)
        try:
            while not info_path.is_file():
                if up.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"onnxlift up did not come up:\n{tail(log, 40)}")
                time.sleep(0.2)
            info = json.loads(info_path.read_text())
            elapsed = time.perf_counter() - started
            report(f"  started the local stack at {info['url']} in {elapsed:.1f} s")
            yield info
        finally:
            up.stop(timeout=60)  # `onnxlift up` stops on SIGTERM as on Ctrl-C


def drive(
    info: dict[str, Any], path: str, body: str, concurrency: int, requests: int, max_s: float
) -> dict[str, Any]:
    """`requests` POSTs over `concurrency` threads, each on its own keep-alive connection
    warmed up by 3 requests before the clock starts; stops at max_s. The warm-up runs the
    clients side by side, so the function's pool has started a sandbox for each of them (its
    cold starts) before the clock starts."""
    clients = [GatewayClient(info["url"], info["api_key"]) for _ in range(concurrency)]

    def warm(client: GatewayClient) -> None:
        for _ in range(3):
            client.post(path, body)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(warm, clients))
    taken = itertools.count()  # next() on it is atomic: one ticket per request

    def worker(client: GatewayClient) -> list[float]:
        mine = []
        with contextlib.closing(client):
            while next(taken) < requests and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                client.post(path, body)
                mine.append((time.perf_counter() - t0) * 1000)
        return mine

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        deadline = started + max_s
        latencies = [ms for mine in pool.map(worker, clients) for ms in mine]
    wall = time.perf_counter() - started
    rps = len(latencies) / wall if wall else 0.0
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": wall,
        "rps": rps,
        "latency_ms": summarize(latencies),
    }


def run_throughput(
    info: dict[str, Any],
    name: str,
    text: str,
    floor_ms: float,
    requests: int,
    max_s: float,
    report: Callable[[str], None],
) -> dict[str, Any]:
    path, body, limit = infer_path(name), v2_body([text]), cores() * 1000.0 / floor_ms
    levels: dict[str, Any] = {}
    for c in CONCURRENCY:
        row = levels[str(c)] = drive(info, path, body, c, requests, max_s)
        row["fraction_of_limit"] = row["rps"] / limit
        report(
            f"  throughput {name} c={c}: {row['rps']:.0f} req/s ({row['fraction_of_limit']:.0%} "
            f"of {limit:.0f}), p50 {row['latency_ms']['p50']:.2f} ms"
        )
    return {
        "cores": cores(),
        "floor_ms": floor_ms,
        "limit_rps": limit,
        "batch": 1,
        "levels": levels,
    }
