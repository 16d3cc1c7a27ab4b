"""The SageMaker container's dynamic batching, on and off: requests/s and latency at 32
concurrent clients (and the idle latency at 1), each mode a fresh `serve` (gunicorn + the app,
CPU provider, one worker) on 127.0.0.1 serving the same model folder.

    python -m onnxlift.bench.sagemaker_batching [--model minilm-fp32] [--requests N] [--max-s S]

Each client sends one text per request (distinct texts, from the parity set) on its own
keep-alive connection to the container's /invocations; 2 requests each warm up first. A level
stops at `requests` or `max_s`, whichever comes first. The clients run on the same cores as
the container. Also measured: the largest difference between the answers with batching on
and off for the same texts (float rounding only: an FP32 model and a masked, padded batch).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxlift_serving.batching import BatchingConfig
from onnxlift_serving.contract import (
    DYNAMIC_BATCHING,
    JSON_CONTENT_TYPE,
    MODELS_PREFIX,
    Env,
    batching_environment,
)

from onnxlift.bench.corpus import bench_sentences, v2_body
from onnxlift.bench.throughput import cores
from onnxlift.bench.timing import summarize

Report = Callable[[str], None]
CONCURRENCY = 32
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Mode:
    key: str
    label: str
    env: dict[str, str]


def modes(batch: int, delay_ms: float) -> list[Mode]:
    """Off as shipped (4 gthread threads), off with as many threads as batching gets (so the
    threads alone are not credited to batching), on with Triton's default delay 0, and on with
    `delay_ms`."""
    threads = str(BatchingConfig(max_batch_size=batch).request_threads)  # the launcher's
    return [
        Mode("off", "off (4 threads, as shipped)", {}),
        Mode("off_threads", f"off ({threads} threads)", {Env.SAGEMAKER_THREADS: threads}),
        Mode("on", f"on, {batch} rows, delay 0", batching_environment(batch, 0.0)),
        Mode(
            "on_delay",
            f"on, {batch} rows, delay {delay_ms:g} ms",
            batching_environment(batch, delay_ms),
        ),
    ]


@contextlib.contextmanager
def container(model_dir: Path, env: dict[str, str], logs: Path) -> Iterator[int]:
    """A fresh `serve` on a free loopback port; its port once /ping answers 200."""
    from onnxlift.local.processes import free_port, wait_http
    from onnxlift.local.sagemaker_server import start_container

    port = free_port(HOST)
    child = start_container(
        model_dir.name, model_dir, host=HOST, port=port, log=logs, threads=cores(), env=env
    )
    try:
        wait_http(child, f"http://{HOST}:{port}/ping", timeout=120)
        yield port
    finally:
        child.stop()


def _post(connection: http.client.HTTPConnection, body: bytes) -> bytes:
    connection.request("POST", "/invocations", body, {"Content-Type": JSON_CONTENT_TYPE})
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"the container answered {response.status}: {data[:200]!r}")
    return data


def drive(port: int, bodies: list[bytes], concurrency: int, requests: int, max_s: float) -> dict:
    """`requests` POSTs over `concurrency` clients (client i sends bodies[i], i+c, ...)."""
    connections = [http.client.HTTPConnection(HOST, port, timeout=60) for _ in range(concurrency)]
    mine = [bodies[i::concurrency] or bodies[:1] for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:  # warm-up, side by side
        list(
            pool.map(lambda i: [_post(connections[i], b) for b in mine[i][:2]], range(concurrency))
        )
    taken = itertools.count()

    def client(i: int) -> list[float]:
        latencies, cycle = [], itertools.cycle(mine[i])
        with contextlib.closing(connections[i]):
            while next(taken) < requests and time.perf_counter() < deadline:
                t0 = time.perf_counter()
                _post(connections[i], next(cycle))
                latencies.append((time.perf_counter() - t0) * 1000)
        return latencies

    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        deadline = started + max_s
        latencies = [ms for part in pool.map(client, range(concurrency)) for ms in part]
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": round(wall, 2),
        "rps": len(latencies) / wall if wall else 0.0,
        "latency_ms": summarize(latencies),
    }


def answers(port: int, bodies: list[bytes]) -> np.ndarray:
    """Every body's embeddings, all sent at once (so a batching container merges them)."""

    def one(body: bytes) -> np.ndarray:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        with contextlib.closing(connection):
            (tensor,) = json.loads(_post(connection, body))["outputs"]
        return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

    with ThreadPoolExecutor(len(bodies)) as pool:
        return np.concatenate(list(pool.map(one, bodies)))


def _metadata(port: int, name: str) -> dict[str, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    with contextlib.closing(connection):
        connection.request("GET", f"{MODELS_PREFIX}{name}")
        return dict(json.loads(connection.getresponse().read())["parameters"])


def measure_mode(
    mode: Mode,
    model_dir: Path,
    name: str,
    bodies: list[bytes],
    budget: tuple[int, float],
    logs: Path,
) -> tuple[dict[str, Any], np.ndarray]:
    requests, max_s = budget
    with container(model_dir, mode.env, logs / f"{mode.key}.log") as port:
        idle = drive(port, bodies, 1, max(20, requests // 10), max_s / 4)
        loaded = drive(port, bodies, CONCURRENCY, requests, max_s)
        got = answers(port, bodies[:CONCURRENCY])
        batching = _metadata(port, name).get(DYNAMIC_BATCHING)
    row = {"label": mode.label, "c1": idle, f"c{CONCURRENCY}": loaded}
    if batching:
        row[DYNAMIC_BATCHING] = batching
    return row, got


def run_batching(
    model_folder: Path, name: str, sentences: list[str], requests: int, max_s: float,
    report: Report, batch: int = 16, delay_ms: float = 5.0, rounds: int = 2,
) -> dict[str, Any]:  # fmt: skip
    """Every mode in turn on the same model folder, `rounds` times; on/off ratios per round."""
    from onnxlift.bench.serving import stage_artifact

    bodies = [v2_body([text]).encode() for text in sentences]
    out: dict[str, Any] = {"model": name, "cores": cores(), "concurrency": CONCURRENCY}
    out |= {"batch": batch, "delay_ms": delay_ms, "rounds": []}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="onnxlift-bench-sm-") as scratch:
        # the build as version 1, the folder SageMaker would unpack model.tar.gz into
        model_dir = stage_artifact(model_folder, model_folder / "model.onnx", Path(scratch) / name)
        for round_ in range(rounds):  # every mode once a round: drift spreads over all
            rows: dict[str, Any] = {}
            for mode in modes(batch, delay_ms):
                rows[mode.key], outputs[mode.key] = measure_mode(
                    mode, model_dir, name, bodies, (requests, max_s), Path(scratch)
                )
                report(f"  round {round_ + 1}: {name} {_line(rows[mode.key])}")
            out["rounds"].append({"modes": rows, "ratios": ratios(rows)})
    out["max_abs_diff_on_vs_off"] = float(np.abs(outputs["on"] - outputs["off"]).max())
    return out


def _line(row: dict[str, Any]) -> str:
    hot, idle = row[f"c{CONCURRENCY}"], row["c1"]
    return (
        f"{row['label']}: c={CONCURRENCY} {hot['rps']:.1f} req/s, p50 "
        f"{hot['latency_ms']['p50']:.1f} ms, p99 {hot['latency_ms']['p99']:.1f} ms; "
        f"c=1 p50 {idle['latency_ms']['p50']:.1f} ms ({hot['requests']} requests)"
    )


def ratios(rows: dict[str, Any]) -> dict[str, float]:
    key = f"c{CONCURRENCY}"

    def get(mode: str, *path: str) -> float:
        value: Any = rows[mode]
        for part in path:
            value = value[part]
        return float(value)

    return {
        "rps_on_over_off": get("on", key, "rps") / get("off", key, "rps"),
        "rps_on_over_off_threads": get("on", key, "rps") / get("off_threads", key, "rps"),
        "p50_on_over_off": get("on", key, "latency_ms", "p50")
        / get("off", key, "latency_ms", "p50"),
        "p99_on_over_off": get("on", key, "latency_ms", "p99")
        / get("off", key, "latency_ms", "p99"),
        "idle_p50_delay_cost_ms": get("on_delay", "c1", "latency_ms", "p50")
        - get("off", "c1", "latency_ms", "p50"),
    }


def distinct_sentences(parity_file: Path, count: int = 2 * CONCURRENCY) -> list[str]:
    """The bench's sentences, numbered so that no two are alike (a short set repeats)."""
    return [f"{i}: {text}" for i, text in enumerate(bench_sentences(parity_file, count=count))]


def main(argv: list[str] | None = None) -> None:
    from onnxlift.builder.build import build_model
    from onnxlift.spec import load_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-fp32")
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--max-s", type=float, default=25.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    spec = load_spec(args.root / "models" / args.model)
    build = build_model(spec, root=args.root, report=lambda line: print(f"  {line}"))
    sentences = distinct_sentences(spec.folder / spec.parity.inputs)
    result = run_batching(
        build.folder, spec.name, sentences, args.requests, args.max_s, print, rounds=args.rounds
    )
    for number, round_ in enumerate(result["rounds"], 1):
        print(
            f"round {number}: " + json.dumps({k: round(v, 3) for k, v in round_["ratios"].items()})
        )
    print(f"max |on - off| over {CONCURRENCY} answers: {result['max_abs_diff_on_vs_off']:.2e}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
