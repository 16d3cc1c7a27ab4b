"""p50/p95 latency of one infer call through a running local stack (reads .onnxlift/local.json).

    .venv/bin/python scripts/latency.py --requests 200 --batch 1

Only loopback traffic: the URL comes from local.json, which `onnxlift up` writes for 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
from pathlib import Path
from urllib.parse import urlsplit

from onnxlift_serving.contract import MODELS_PREFIX, infer_path


def example(tensor: dict, batch: int) -> dict:
    """A request tensor of `batch` rows shaped like the model's input signature."""
    shape = [batch] + [d if d > 0 else 8 for d in tensor["shape"][1:]]
    count = 1
    for d in shape:
        count *= d
    if tensor["datatype"] == "BYTES":
        data: list = ["A man is riding a white horse on the beach."] * count
    else:
        data = [0.5] * count
    return {"name": tensor["name"], "shape": shape, "datatype": tensor["datatype"], "data": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path(".onnxlift/local.json"))
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    info = json.loads(args.state.read_text())
    url = urlsplit(info["url"])
    if url.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing to load a non-loopback URL: {info['url']}")
    headers = {"x-api-key": info["api_key"], "content-type": "application/json"}
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    connection.request("GET", f"{MODELS_PREFIX}{args.model}", headers=headers)
    metadata = json.loads(connection.getresponse().read())
    body = json.dumps({"inputs": [example(t, args.batch) for t in metadata["inputs"]]})
    path = infer_path(args.model)
    timings = []
    for i in range(args.warmup + args.requests):
        started = time.perf_counter()
        connection.request("POST", path, body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}")
        if i >= args.warmup:
            timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p95 = timings[int(0.95 * (len(timings) - 1))]
    print(
        f"{args.model} batch {args.batch}: {len(timings)} requests, "
        f"p50 {statistics.median(timings):.2f} ms, p95 {p95:.2f} ms"
    )


if __name__ == "__main__":
    main()
