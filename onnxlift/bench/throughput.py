"""Requests per second through the local gateway at several concurrencies, against the limit.

The stack is `onnxlift up` as a user runs it (a separate process: moto, one local Lambda
runtime per model with intra_op_num_threads=1 as at 2,048 MB, the gateway), started on free
loopback ports with its own state folder, or a running one named by its local.json. Each
client thread holds one keep-alive connection. The limit the figure tends to is
cores / (bare session.run time per request at batch 1, one thread): what the machine could do
if nothing but onnxruntime ran. The client, the gateway and the function share those cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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
    root: Path,
    models: list[str],
    *,
    state: Path | None = None,
    threads: int = 1,
    timeout: float = 240,
    report: Callable[[str], None] = print,
) -> Iterator[dict[str, Any]]:
    """The local.json of a running stack: the one at `state`, or a fresh `onnxlift up`."""
    if state is not None:
        info = json.loads(Path(state).read_text())
        report(f"  using the running stack at {info['url']}")
        yield info | {"started_here": False}
        return
    from onnxlift.local.processes import free_port

    with tempfile.TemporaryDirectory(prefix="onnxlift-bench-state-") as folder:
        state_dir = Path(folder)
        port, aws_port = free_port(), free_port()
        command = [sys.executable, "-m", "onnxlift.cli", "up", "--port", str(port)]
        command += ["--aws-port", str(aws_port), "--threads", str(threads)]
        for model in models:
            command += ["--model", model]
        env = dict(os.environ, ONNXLIFT_STATE_DIR=str(state_dir), ONNXLIFT_ROOT=str(root))
        log = (state_dir / "up.log").open("w")
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            info_path = state_dir / "local.json"
            deadline = time.monotonic() + timeout
            while not info_path.is_file():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "onnxlift up did not come up:\n"
                        + (state_dir / "up.log").read_text()[-3000:]
                    )
                time.sleep(0.2)
            info = json.loads(info_path.read_text())
            report(
                f"  started the local stack at {info['url']} "
                f"in {time.perf_counter() - started:.1f} s"
            )
            yield info | {"started_here": True}
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()


def drive(
    url: str,
    api_key: str,
    path: str,
    body: str,
    *,
    concurrency: int,
    requests: int,
    warmup: int = 3,
    max_seconds: float = 30.0,
) -> dict[str, Any]:
    """`requests` POSTs spread over `concurrency` threads, each on its own keep-alive connection."""
    lock = threading.Lock()
    left = [requests]
    latencies: list[float] = []
    errors: list[str] = []
    clock = {"started": 0.0, "deadline": 0.0}

    def release() -> None:  # runs once every thread has warmed up, before any is let go
        clock["started"] = time.perf_counter()
        clock["deadline"] = clock["started"] + max_seconds

    barrier = threading.Barrier(concurrency + 1, action=release)

    def take() -> bool:
        with lock:
            if left[0] <= 0 or time.perf_counter() > clock["deadline"]:
                return False
            left[0] -= 1
            return True

    def worker() -> None:
        client = GatewayClient(url, api_key)
        mine: list[float] = []
        try:
            for _ in range(warmup):
                client.post(path, body)
        except Exception as exc:
            errors.append(str(exc))
        barrier.wait()
        try:
            while take():
                t0 = time.perf_counter()
                client.post(path, body)
                mine.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:
            errors.append(str(exc))
        finally:
            client.close()
            with lock:
                latencies.extend(mine)

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for w in workers:
        w.start()
    barrier.wait()
    for w in workers:
        w.join()
    wall = time.perf_counter() - clock["started"]
    if errors:
        raise RuntimeError(
            f"{len(errors)} requests failed at concurrency {concurrency}: {errors[0]}"
        )
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": wall,
        "rps": len(latencies) / wall if wall else 0.0,
        "latency_ms": summarize(latencies),
    }


def run_throughput(
    *,
    info: dict[str, Any],
    name: str,
    text: str,
    floor_ms: float,
    requests: int,
    levels: tuple[int, ...] = CONCURRENCY,
    max_seconds: float = 30.0,
    report: Callable[[str], None] = print,
) -> dict[str, Any]:
    path, body = infer_path(name), v2_body([text])
    limit = cores() * 1000.0 / floor_ms
    results: dict[str, Any] = {
        "cores": cores(),
        "floor_ms": floor_ms,
        "limit_rps": limit,
        "batch": 1,
        "levels": {},
    }
    for level in levels:
        row = drive(
            info["url"],
            info["api_key"],
            path,
            body,
            concurrency=level,
            requests=requests,
            max_seconds=max_seconds,
        )
        row["fraction_of_limit"] = row["rps"] / limit
        results["levels"][str(level)] = row
        report(
            f"  throughput {name} c={level}: {row['rps']:.0f} req/s "
            f"({row['fraction_of_limit']:.0%} of {limit:.0f}), "
            f"p50 {row['latency_ms']['p50']:.2f} ms"
        )
    return results
