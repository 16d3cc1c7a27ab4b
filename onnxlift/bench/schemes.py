"""What saturation-free INT8 costs: each integer scheme against fused FP32, batch 1 / 8 / 32.

    python -m onnxlift.bench.schemes [--rounds 5]      (after `onnxlift build minilm`)

Schemes, all from the same split FP32 graph of the minilm build:
  7bit          reduce_range weights (served): no u8 x s8 pair can reach 16 bits
  7bit+setting  the same file with onnxlift's session setting (what every session gets)
  8bit          full-range s8 weights, onnxruntime defaults: saturates on AVX2 / AVX-512 w/o VNNI
  8bit+setting  the same file on onnxruntime's exact U8U8 path
Min cosine is against the FP32 export on the parity texts at batch 1 (the build's gate runs
against sentence-transformers in batches of 16, see the manifest). Timings: median of each
block, best of the rounds, one thread, interleaved so that noise hits every scheme alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import onnx
from onnxlift_serving.cpu import cpu_facts
from onnxlift_serving.pipelines import load_tokenizer
from onnxlift_serving.session import INTEGER_KERNEL_CONFIG, create_session

from onnxlift import paths
from onnxlift.builder.build import latest_build
from onnxlift.builder.quantize import quantize_dynamic_int8
from onnxlift.spec import load_spec

BATCHES = ((1, 200), (8, 40), (32, 12))  # batch, runs per block


def _feeds(tokenizer: Any, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }


def run(rounds: int = 5) -> list[dict[str, Any]]:
    spec = load_spec(paths.models_dir(paths.project_root()) / "minilm")
    build = latest_build(spec)
    if build is None:
        raise SystemExit("build minilm first: onnxlift build minilm")
    work = build / "work"
    eight_bit = work / "model.int8.8bit.onnx"
    if not eight_bit.is_file():
        split = onnx.load(str(work / "model.fp32.split.onnx"), load_external_data=False)
        helpers = [
            n.name
            for n in split.graph.node
            if n.name.endswith(("_outlier_gather", "_outlier_matmul"))
        ]
        quant = dataclasses.replace(spec.quantization, reduce_range=False)
        quantize_dynamic_int8(
            work / "model.fp32.split.onnx", eight_bit, quant, extra_fp32_nodes=helpers
        )
    files = {"fp32 fused": (work / "model.fp32.fused.onnx", INTEGER_KERNEL_CONFIG)}
    for label, path in (("7bit", build / "model.onnx"), ("8bit", eight_bit)):
        files[label] = (path, {})
        files[f"{label}+setting"] = (path, INTEGER_KERNEL_CONFIG)
    sessions = {k: create_session(p, integer_config=c) for k, (p, c) in files.items()}

    tokenizer = load_tokenizer(str(build / "assets" / "tokenizer.json"), spec.max_length)
    texts = [t for t in (spec.folder / spec.parity.inputs).read_text().splitlines() if t.strip()]
    reference = create_session(work / "model.fp32.onnx")
    rows = []
    for label, session in sessions.items():
        cosines = []
        for text in texts:
            feed = _feeds(tokenizer, [text])
            a, b = session.run(None, feed)[0][0], reference.run(None, feed)[0][0]
            cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        rows.append({"scheme": label, "min_cosine": min(cosines), "ms": {}})

    short = [t for t in texts if 8 <= len(tokenizer.encode(t).ids) <= 24]
    for _ in range(rounds):
        for batch, runs in BATCHES:
            feed = _feeds(tokenizer, (short * batch)[:batch])
            for row, session in zip(rows, sessions.values(), strict=True):
                session.run(None, feed)
                times = []
                for _ in range(runs):
                    started = time.perf_counter()
                    session.run(None, feed)
                    times.append(time.perf_counter() - started)
                best = row["ms"].get(batch, float("inf"))
                row["ms"][batch] = min(best, float(np.median(times)) * 1e3)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rows = run(parser.parse_args().rounds)
    facts = cpu_facts()
    print(f"CPU: {facts['model']} ({' '.join(facts['flags'])}); one thread")
    fp32 = rows[0]["ms"]
    print(f"{'scheme':<14} {'min cos':>8} " + " ".join(f"{'b' + str(b):>16}" for b, _ in BATCHES))
    for row in rows:
        cells = " ".join(
            f"{row['ms'][b]:8.2f} ms {fp32[b] / row['ms'][b]:4.2f}x" for b, _ in BATCHES
        )
        print(f"{row['scheme']:<14} {row['min_cosine']:8.4f} {cells}")


if __name__ == "__main__":
    main()
