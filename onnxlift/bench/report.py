"""The three outputs: results.json, REPORT.md (headline of ratios, goals met or not, details)
and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxlift.bench.tiers import TIER_LABELS, TIERS
from onnxlift.bench.timing import ratio

MB = 1e6
GOALS = (
    ("int8_vs_fp32", "INT8 at least 2x faster than FP32 (MiniLM, batch 1) with min cosine >= 0.99"),
    ("warm_vs_pytorch", "warm latency at least 6x lower than PyTorch eager (batch 1)"),
    ("cold_vs_pytorch", "cold start at least 10x shorter than PyTorch"),
    ("size_vs_pytorch", "deployable size at least 8x smaller than a PyTorch-based function"),
    (
        "handler_overhead",
        "handler overhead (full handler over pre-processing + run) <= 10% at batch 1",
    ),
    ("throughput_c2", "local gateway throughput at concurrency 2 >= 70% of the limit"),
)


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _p50(tree: Any, *keys: str) -> float | None:
    return _get(tree, *keys, "p50")


def int8_parity(model: dict[str, Any]) -> dict[str, Any] | None:
    return _get(model, "alternatives", "variants", "int8", "parity") or _get(
        model, "build", "parity", "int8"
    )


def figures(model: dict[str, Any]) -> dict[str, float | None]:
    """The ratios the headline and the goals are made of (None where not measured)."""
    alt = _get(model, "alternatives", "batches", "1") or {}
    tiers = _get(model, "tiers", "batches", "1") or {}
    cold = _get(model, "coldstart", "kinds") or {}
    size = model.get("size") or {}
    throughput = model.get("throughput") or {}
    int8 = _p50(alt, "int8")
    overhead = ratio(_p50(tiers, "handler"), _p50(tiers, "prep_run"))
    v2_overhead = ratio(_p50(tiers, "v2"), _p50(tiers, "prep_run"))
    return {
        "int8_vs_fp32_fused": ratio(_p50(alt, "fp32_fused"), int8),
        "int8_vs_fp32": ratio(_p50(alt, "fp32"), int8),
        "int8_vs_torch_st": ratio(_p50(alt, "torch_st"), int8),
        "int8_vs_torch_forward": ratio(_p50(alt, "torch_forward"), int8),
        "cold_vs_torch": ratio(
            _get(cold, "torch", "median_wall_s"), _get(cold, "int8", "median_wall_s")
        ),
        "cold_handler_vs_torch": ratio(
            _get(cold, "torch", "median_wall_s"), _get(cold, "handler_int8", "median_wall_s")
        ),
        "size_vs_torch": ratio(
            _get(size, "pytorch", "total_bytes"), _get(size, "onnxlift", "total_bytes")
        ),
        "handler_overhead": None if overhead is None else overhead - 1,
        "v2_overhead": None if v2_overhead is None else v2_overhead - 1,
        "throughput_c2_fraction": _get(throughput, "levels", "2", "fraction_of_limit"),
        "int8_min_cosine": _get(int8_parity(model), "min"),
    }


def goals(model_name: str, model: dict[str, Any]) -> list[dict[str, Any]]:
    f = figures(model)
    cos = f["int8_min_cosine"]
    cos_text = f"min cos {cos:.4f}" if cos is not None else "parity not measured"

    def x(value: float | None) -> str:
        return "not measured" if value is None else f"{value:.2f}x"

    rows = {
        "int8_vs_fp32": (
            f["int8_vs_fp32_fused"],
            None
            if f["int8_vs_fp32_fused"] is None or cos is None
            else f["int8_vs_fp32_fused"] >= 2 and cos >= 0.99,
            f"{x(f['int8_vs_fp32_fused'])} vs fused FP32 ({cos_text})",
        ),
        "warm_vs_pytorch": (
            f["int8_vs_torch_st"],
            None if f["int8_vs_torch_st"] is None else f["int8_vs_torch_st"] >= 6,
            f"{x(f['int8_vs_torch_st'])} vs sentence-transformers ({cos_text})",
        ),
        "cold_vs_pytorch": (
            f["cold_vs_torch"],
            None if f["cold_vs_torch"] is None else f["cold_vs_torch"] >= 10,
            f"{x(f['cold_vs_torch'])} ({cos_text})",
        ),
        "size_vs_pytorch": (
            f["size_vs_torch"],
            None if f["size_vs_torch"] is None else f["size_vs_torch"] >= 8,
            f"{x(f['size_vs_torch'])} ({cos_text})",
        ),
        "handler_overhead": (
            f["handler_overhead"],
            None if f["handler_overhead"] is None else f["handler_overhead"] <= 0.10,
            "not measured" if f["handler_overhead"] is None else f"+{f['handler_overhead']:.0%}",
        ),
        "throughput_c2": (
            f["throughput_c2_fraction"],
            None if f["throughput_c2_fraction"] is None else f["throughput_c2_fraction"] >= 0.70,
            "not measured"
            if f["throughput_c2_fraction"] is None
            else f"{f['throughput_c2_fraction']:.0%} of the limit",
        ),
    }
    return [
        {
            "model": model_name,
            "id": key,
            "goal": text,
            "value": rows[key][0],
            "met": rows[key][1],
            "figure": rows[key][2],
        }
        for key, text in GOALS
    ]


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------- Markdown


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _mark(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


def headline_table(results: dict[str, Any]) -> str:
    lines = [
        "| model | goal | figure | met |",
        "|---|---|---|---|",
    ]
    for goal in results["goals"]:
        lines.append(
            f"| {goal['model']} | {goal['goal']} | {goal['figure']} | {_mark(goal['met'])} |"
        )
    return "\n".join(lines)


def ratio_table(name: str, model: dict[str, Any]) -> str:
    f = figures(model)
    cos = f["int8_min_cosine"]
    cos_text = "-" if cos is None else f"{cos:.4f}"

    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    rows = [
        ("INT8 vs FP32 ONNX, fused (same optimizer), batch 1, speed", x(f["int8_vs_fp32_fused"])),
        ("INT8 vs FP32 ONNX, plain export, batch 1, speed", x(f["int8_vs_fp32"])),
        ("INT8 vs PyTorch eager (sentence-transformers), batch 1, speed", x(f["int8_vs_torch_st"])),
        (
            "INT8 vs PyTorch eager (bare forward, no tokenizer), batch 1, speed",
            x(f["int8_vs_torch_forward"]),
        ),
        ("INT8 vs PyTorch, cold start", x(f["cold_vs_torch"])),
        ("INT8 full Lambda handler vs PyTorch, cold start", x(f["cold_handler_vs_torch"])),
        ("INT8 function vs PyTorch function, deployable size", x(f["size_vs_torch"])),
        (
            "handler overhead over pre-processing + run, batch 1",
            "-" if f["handler_overhead"] is None else f"+{f['handler_overhead']:.0%}",
        ),
        (
            "  of which V2 decode/validate/encode (no powertools)",
            "-" if f["v2_overhead"] is None else f"+{f['v2_overhead']:.0%}",
        ),
        (
            "gateway throughput at concurrency 2 / limit",
            "-" if f["throughput_c2_fraction"] is None else f"{f['throughput_c2_fraction']:.0%}",
        ),
    ]
    lines = [f"| {name} | ratio | INT8 min cosine |", "|---|---|---|"]
    lines += [f"| {label} | {value} | {cos_text} |" for label, value in rows]
    return "\n".join(lines)


def _tiers_md(tiers: dict[str, Any]) -> list[str]:
    batches = tiers["batches"]
    sizes = list(batches)
    head = "| tier | " + " | ".join(f"batch {b} p50 / p95 / p99 ms" for b in sizes) + " |"
    lines = [head, "|---|" + "---|" * len(sizes)]
    for tier in TIERS:
        if not any(tier in batches[b] for b in sizes):
            continue
        cells = []
        for b in sizes:
            s = batches[b].get(tier)
            cells.append(
                "-" if s is None else f"{_ms(s['p50'])} / {_ms(s['p95'])} / {_ms(s['p99'])}"
            )
        lines.append(f"| {TIER_LABELS[tier]} | " + " | ".join(cells) + " |")
    lines.append(
        "| (padded sequence length) | "
        + " | ".join(str(batches[b]["sequence_length"]) for b in sizes)
        + " |"
    )
    return lines


def _alternatives_md(alt: dict[str, Any]) -> list[str]:
    sizes = list(alt["batches"])
    head = (
        "| variant | file MB | min cos | mean cos | "
        + " | ".join(f"batch {b} p50 ms (x INT8)" for b in sizes)
        + " |"
    )
    lines = [head, "|---|---|---|---|" + "---|" * len(sizes)]
    for key, info in alt["variants"].items():
        parity = info.get("parity") or {}
        cells = []
        for b in sizes:
            row = alt["batches"][b]
            if key not in row:
                cells.append("-")
                continue
            times = ratio(row[key]["p50"], _p50(row, "int8"))
            cells.append(
                f"{_ms(row[key]['p50'])} ({times:.2f}x)" if times else _ms(row[key]["p50"])
            )
        size = f"{info['bytes'] / MB:.1f}" if info.get("bytes") else "-"
        min_cos = f"{parity['min']:.4f}" if "min" in parity else "-"
        mean_cos = f"{parity['mean']:.4f}" if "mean" in parity else "-"
        lines.append(
            f"| {info['label']} | {size} | {min_cos} | {mean_cos} | " + " | ".join(cells) + " |"
        )
    sources = {k: (v.get("parity") or {}).get("source") for k, v in alt["variants"].items()}
    lines.append("")
    lines.append(
        "Parity: cosine against sentence-transformers on the parity set; source per variant: "
        + ", ".join(f"{k}: {s or 'not measured'}" for k, s in sources.items())
        + "."
    )
    return lines


def _threads_md(threads: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | variant | 1 thread p50 ms | 2 threads p50 ms | speed-up |",
        "|---|---|---|---|---|",
    ]
    for b, row in threads["batches"].items():
        for key in sorted({k.split("@")[0] for k in row if "@" in k}):
            one, two = row[f"{key}@1"]["p50"], row[f"{key}@2"]["p50"]
            lines.append(f"| {b} | {key} | {_ms(one)} | {_ms(two)} | {one / two:.2f}x |")
    return lines


def _cold_md(cold: dict[str, Any]) -> list[str]:
    lines = [
        "| kind | runs | median wall s | imports s | load s | first inference s | min-max wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, s in cold["kinds"].items():
        lines.append(
            f"| {key} | {s['runs']} | {s['median_wall_s']:.3f} | {s['median_imports_s']:.3f} | "
            f"{s['median_load_s']:.3f} | {s['median_first_inference_s']:.3f} | "
            f"{s['min_wall_s']:.3f}-{s['max_wall_s']:.3f} |"
        )
    return lines


def _size_md(size: dict[str, Any]) -> list[str]:
    lines = [f"Method: {size.get('method')}.", ""]
    lines += [
        "| function | dependencies MB | model MB | code MB | total MB |",
        "|---|---|---|---|---|",
    ]
    for key in ("onnxlift", "pytorch"):
        s = size.get(key)
        if not s:
            continue
        lines.append(
            f"| {key} | {s['dependencies_bytes'] / MB:.1f} | {s['model_bytes'] / MB:.1f} | "
            f"{s.get('code_bytes', 0) / MB:.2f} | {s['total_bytes'] / MB:.1f} |"
        )
    for key in ("onnxlift", "pytorch"):
        s = size.get(key)
        if not s:
            continue
        top = list(s["packages"].items())[:8]
        lines.append("")
        lines.append(
            f"Largest dependencies ({key}): "
            + ", ".join(f"{n} {b / MB:.1f} MB" for n, b in top)
            + "."
        )
    return lines


def _throughput_md(tp: dict[str, Any]) -> list[str]:
    lines = [
        f"Limit: {tp['cores']} cores / {tp['floor_ms']:.2f} ms (bare session.run, batch 1, one "
        f"thread) = {tp['limit_rps']:.0f} requests/s.",
        "",
        "| concurrency | requests | req/s | of the limit | p50 / p95 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for c, row in tp["levels"].items():
        lat = row["latency_ms"]
        lines.append(
            f"| {c} | {row['requests']} | {row['rps']:.0f} | {row['fraction_of_limit']:.0%} | "
            f"{_ms(lat['p50'])} / {_ms(lat['p95'])} / {_ms(lat['p99'])} |"
        )
    return lines


def render_markdown(results: dict[str, Any], plots: list[str]) -> str:
    meta = results["meta"]
    dirty = " (with uncommitted changes)" if meta["git"]["dirty"] else ""
    out = [
        "# onnxlift bench",
        "",
        f"`{meta['command']}`, {meta['mode']} mode, {meta['generated_at']}, commit "
        f"`{meta['git']['commit']}`{dirty}, "
        f"{meta['duration_s']:.0f} s. Machine: {meta['machine']['cpu']} "
        f"({' '.join(meta['machine'].get('cpu_flags', [])) or 'flags not recorded'}), "
        f"{meta['machine']['cores']} cores, Python {meta['machine']['python']}, onnxruntime "
        f"{meta['versions'].get('onnxruntime')}, torch {meta['versions'].get('torch')}.",
        "",
        "## Goals",
        "",
        headline_table(results),
        "",
    ]
    for name, model in results["models"].items():
        out += ["## Headline: ratios, " + name, "", ratio_table(name, model), ""]
    if "overview.png" in plots:
        out += ["![overview](overview.png)", ""]
    for name, model in results["models"].items():
        out += [f"## {name}: details", ""]
        notes = model.get("notes") or []
        if notes:
            out += ["What limits the goals that are not met:", ""]
            out += [f"- {n}" for n in notes] + [""]
        if model.get("tiers"):
            out += [
                f"### Tiers of the request path (p50 / p95 / p99 ms, {model['tiers']['threads']} "
                "thread, INT8)",
                "",
                *_tiers_md(model["tiers"]),
                "",
            ]
            if f"tiers_{name}.png" in plots:
                out += [f"![tiers](tiers_{name}.png)", ""]
        if model.get("alternatives"):
            out += [
                f"### INT8 vs FP32 vs PyTorch (pre-processing + run, "
                f"{model['alternatives']['threads']} thread)",
                "",
                *_alternatives_md(model["alternatives"]),
                "",
            ]
            if f"alternatives_{name}.png" in plots:
                out += [f"![alternatives](alternatives_{name}.png)", ""]
        if model.get("threads"):
            out += [
                "### intra_op_num_threads 1 vs 2 (pre-processing + run)",
                "",
                *_threads_md(model["threads"]),
                "",
            ]
        if model.get("coldstart"):
            out += [
                "### Cold start (fresh process to first answer)",
                "",
                *_cold_md(model["coldstart"]),
                "",
            ]
        if model.get("size"):
            out += ["### Deployable size", "", *_size_md(model["size"]), ""]
        if model.get("throughput"):
            out += [
                "### Throughput through the local gateway",
                "",
                *_throughput_md(model["throughput"]),
                "",
            ]
            if f"throughput_{name}.png" in plots:
                out += [f"![throughput](throughput_{name}.png)", ""]
    out += ["## Method", ""] + [f"- {line}" for line in results["method"]] + [""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plots


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[str] = []
    models = results["models"]
    for name, model in models.items():
        if model.get("tiers"):
            fig, ax = plt.subplots(figsize=(8, 4.5))
            batches = model["tiers"]["batches"]
            tiers = [t for t in TIERS if any(t in batches[b] for b in batches)]
            width = 0.8 / len(tiers)
            for i, tier in enumerate(tiers):
                xs = [j + i * width for j in range(len(batches))]
                ys = [_p50(batches[b], tier) or 0 for b in batches]
                ax.bar(xs, ys, width, label=TIER_LABELS[tier])
            ax.set_xticks([j + width * (len(tiers) - 1) / 2 for j in range(len(batches))])
            ax.set_xticklabels([f"batch {b}" for b in batches])
            ax.set_yscale("log")
            ax.set_ylabel("p50 latency, ms (log)")
            ax.set_title(f"{name}: where the time of a request goes (INT8, 1 thread)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / f"tiers_{name}.png", dpi=110)
            plt.close(fig)
            written.append(f"tiers_{name}.png")
        if model.get("alternatives"):
            alt = model["alternatives"]
            fig, ax = plt.subplots(figsize=(8, 4.5))
            keys = list(alt["variants"])
            batches = alt["batches"]
            width = 0.8 / len(keys)
            for i, key in enumerate(keys):
                xs = [j + i * width for j in range(len(batches))]
                ys = [_p50(batches[b], key) or 0 for b in batches]
                ax.bar(xs, ys, width, label=alt["variants"][key]["label"])
            ax.set_xticks([j + width * (len(keys) - 1) / 2 for j in range(len(batches))])
            ax.set_xticklabels([f"batch {b}" for b in batches])
            ax.set_yscale("log")
            ax.set_ylabel("p50 latency, ms (log)")
            ax.set_title(f"{name}: INT8 vs FP32 vs PyTorch eager (1 thread)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out / f"alternatives_{name}.png", dpi=110)
            plt.close(fig)
            written.append(f"alternatives_{name}.png")
        if model.get("throughput"):
            tp = model["throughput"]
            fig, ax = plt.subplots(figsize=(6, 4))
            levels = [int(c) for c in tp["levels"]]
            ax.plot(levels, [tp["levels"][str(c)]["rps"] for c in levels], "o-", label="measured")
            ax.axhline(tp["limit_rps"], color="grey", ls="--", label="limit: cores / bare run")
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels)
            ax.set_xticklabels([str(c) for c in levels])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("requests / s (batch 1)")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{name}: throughput through the local gateway")
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / f"throughput_{name}.png", dpi=110)
            plt.close(fig)
            written.append(f"throughput_{name}.png")
    first = next(iter(models.values()), None)
    if first is not None:
        written.append(_overview(first, out, plt))
    return written


def _overview(model: dict[str, Any], out: Path, plt: Any) -> str:
    """Four panels: warm latency, cold start, deployable size, throughput."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"int8": "#2a7ab9", "fp32_fused": "#8fb8de", "fp32": "#c6dbef", "torch_st": "#d9534f"}
    alt = _get(model, "alternatives", "batches", "1") or {}
    keys = [k for k in ("int8", "fp32_fused", "fp32", "torch_st") if k in alt]
    names = {"int8": "INT8", "fp32_fused": "FP32 fused", "fp32": "FP32", "torch_st": "PyTorch"}
    ax = axes[0][0]
    ax.bar([names[k] for k in keys], [alt[k]["p50"] for k in keys], color=[colors[k] for k in keys])
    ax.set_ylabel("ms")
    ax.set_title("warm latency, batch 1, p50 (1 thread)")
    cold = _get(model, "coldstart", "kinds") or {}
    ckeys = [k for k in ("int8", "fp32_fused", "fp32", "torch") if k in cold]
    ax = axes[0][1]
    ax.bar(
        [names.get(k, "PyTorch") for k in ckeys],
        [cold[k]["median_wall_s"] for k in ckeys],
        color=[colors.get(k, colors["torch_st"]) for k in ckeys],
    )
    ax.set_ylabel("s")
    ax.set_title("cold start to first answer, median")
    size = model.get("size") or {}
    ax = axes[1][0]
    skeys = [k for k in ("onnxlift", "pytorch") if k in size]
    deps = [size[k]["dependencies_bytes"] / MB for k in skeys]
    weights = [size[k]["model_bytes"] / MB for k in skeys]
    labels = ["onnxlift INT8" if k == "onnxlift" else "PyTorch" for k in skeys]
    ax.bar(labels, deps, color="#999999", label="dependencies")
    ax.bar(labels, weights, bottom=deps, color="#2a7ab9", label="model")
    ax.set_ylabel("MB installed")
    ax.set_title("deployable size (Lambda platform)")
    ax.legend()
    tp = model.get("throughput")
    ax = axes[1][1]
    if tp:
        levels = [int(c) for c in tp["levels"]]
        ax.plot(levels, [tp["levels"][str(c)]["rps"] for c in levels], "o-", label="local gateway")
        ax.axhline(tp["limit_rps"], color="grey", ls="--", label="limit")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_ylim(bottom=0)
        ax.legend()
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests / s")
    ax.set_title("throughput, batch 1")
    fig.suptitle(f"{model.get('name', '')}: onnxlift INT8 vs the alternatives")
    fig.tight_layout()
    fig.savefig(out / "overview.png", dpi=100)
    plt.close(fig)
    return "overview.png"
