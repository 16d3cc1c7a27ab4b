"""REPORT.md and the PNG plots from the results: goals, the figures they are made of, details."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from onnxlift_serving.contract import DYNAMIC_BATCHING

from onnxlift.bench import op_profile
from onnxlift.bench.tiers import TIERS
from onnxlift.bench.timing import ratio

MB = 1e6
GOALS = (
    ("int8_vs_fp32", "INT8 at least 2x faster than FP32 (MiniLM, batch 1) with min cosine >= 0.99"),
    ("warm_vs_pytorch", "warm latency at least 6x lower than PyTorch eager (batch 1)"),
    (
        "cold_vs_pytorch",
        "full Lambda handler cold start at least 15x shorter than PyTorch (tracing off)",
    ),
    ("handler_init", "handler init (imports, verify, session, pipeline) <= 0.35 s (tracing off)"),
    ("size_vs_pytorch", "deployable size at least 8x smaller than a PyTorch-based function"),
    (
        "handler_overhead",
        "handler overhead (full handler over pre-processing + run) <= 10% at batch 1",
    ),
    ("throughput_c2", "local gateway throughput at concurrency 2 >= 70% of the limit"),
)
# goal -> the figure it reads, its bound (negative: at most), what follows the figure
RULES = {
    "int8_vs_fp32": ("int8_vs_fp32_fused", 2, " vs fused FP32 ({cos})"),
    "warm_vs_pytorch": ("int8_vs_torch_st", 6, " vs sentence-transformers ({cos})"),
    "cold_vs_pytorch": ("cold_untraced_handler_vs_torch", 15, " ({cos})"),
    "handler_init": ("handler_init_s", -0.35, ""),
    "size_vs_pytorch": ("size_vs_torch", 8, " ({cos})"),
    "handler_overhead": ("handler_overhead", -0.10, ""),
    "throughput_c2": ("throughput_c2_fraction", 0.70, " of the limit"),
}
HEADLINE = {  # label -> figure
    "INT8 vs FP32 ONNX, fused (same optimizer), batch 1, speed": "int8_vs_fp32_fused",
    "INT8 vs FP32 ONNX, plain export, batch 1, speed": "int8_vs_fp32",
    "INT8 vs PyTorch eager (sentence-transformers), batch 1, speed": "int8_vs_torch_st",
    "INT8 vs PyTorch eager (bare forward, no tokenizer), batch 1, speed": "int8_vs_torch_forward",
    "INT8 vs PyTorch, cold start": "cold_vs_torch",
    "INT8 full Lambda handler vs PyTorch, cold start (tracing on, as deployed)": (
        "cold_handler_vs_torch"
    ),
    "INT8 full Lambda handler vs PyTorch, cold start (tracing off)": (
        "cold_untraced_handler_vs_torch"
    ),
    "handler init, tracing on": "traced_handler_init_s",
    "handler init, tracing off": "handler_init_s",
    "INT8 function vs PyTorch function, deployable size": "size_vs_torch",
    "handler overhead over pre-processing + run, batch 1": "handler_overhead",
    "  of which V2 decode/validate/encode (no powertools)": "v2_overhead",
    "gateway throughput at concurrency 2 / limit": "throughput_c2_fraction",
}


def _get(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _p50(tree: Any, *keys: str) -> float | None:
    return _get(tree, *keys, "p50")


def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _shown(figure: str, value: float | None, missing: str = "-") -> str:
    """A figure as it reads: an overhead, a share of the limit, or a ratio."""
    if value is None:
        return missing
    if figure.endswith("overhead"):
        return f"+{value:.0%}"
    if figure.endswith("_s"):
        return f"{value:.3f} s"
    return f"{value:.0%}" if figure.endswith("fraction") else f"{value:.2f}x"


def figures(model: dict[str, Any]) -> dict[str, float | None]:
    """The ratios the headline and the goals are made of (None where not measured)."""
    alt, tiers = _get(model, "alternatives", "batches", "1"), _get(model, "tiers", "batches", "1")
    wall = {k: _get(model, "coldstart", "kinds", k, "median_wall_s") for k in ("torch", "int8")}
    handler = _get(model, "coldstart", "kinds", "handler_int8", "median_wall_s")
    untraced = _get(model, "coldstart", "kinds", "handler_int8_untraced", "median_wall_s")
    size = {k: _get(model, "size", k, "total_bytes") for k in ("pytorch", "onnxlift")}
    overhead = {k: ratio(_p50(tiers, k), _p50(tiers, "prep_run")) for k in ("handler", "v2")}
    parity = _get(model, "alternatives", "variants", "int8", "parity")
    versus = ("fp32_fused", "fp32", "torch_st", "torch_forward")
    return {
        **{f"int8_vs_{k}": ratio(_p50(alt, k), _p50(alt, "int8")) for k in versus},
        "cold_vs_torch": ratio(wall["torch"], wall["int8"]),
        "cold_handler_vs_torch": ratio(wall["torch"], handler),
        "cold_untraced_handler_vs_torch": ratio(wall["torch"], untraced),
        "traced_handler_init_s": _get(
            model, "coldstart", "kinds", "handler_int8", "median_phases", "init_s"
        ),
        "handler_init_s": _get(
            model, "coldstart", "kinds", "handler_int8_untraced", "median_phases", "init_s"
        ),
        "size_vs_torch": ratio(size["pytorch"], size["onnxlift"]),
        **{f"{k}_overhead": None if v is None else v - 1 for k, v in overhead.items()},
        "throughput_c2_fraction": _get(model, "throughput", "levels", "2", "fraction_of_limit"),
        "int8_min_cosine": _get(parity or _get(model, "build", "parity", "int8"), "min"),
    }


def goals(model_name: str, model: dict[str, Any]) -> list[dict[str, Any]]:
    f = figures(model)
    cos = f["int8_min_cosine"]
    cos_text = "parity not measured" if cos is None else f"min cos {cos:.4f}"
    rows = []
    for key, goal in GOALS:
        figure, bound, after = RULES[key]
        value = f[figure]
        met = None if value is None else (value <= -bound if bound < 0 else value >= bound)
        if key == "int8_vs_fp32" and met is not None:  # fast only counts at parity
            met = None if cos is None else met and cos >= 0.99
        text = _shown(figure, value, "not measured")
        text += after.format(cos=cos_text) if value is not None or "cos" in after else ""
        row = {"model": model_name, "id": key, "goal": goal, "value": value, "met": met}
        rows.append(row | {"figure": text})
    return rows


def notes(model: dict[str, Any]) -> list[str]:
    """Figures that explain the goals not met (the report's 'what limits' list)."""
    missed = {g["id"] for g in model["goals"] if g["met"] is False}
    alt, tiers = _get(model, "alternatives", "batches") or {}, _get(model, "tiers", "batches") or {}
    cold, size = _get(model, "coldstart", "kinds") or {}, model.get("size") or {}
    out, tp = [], model.get("throughput")
    if "int8_vs_fp32" in missed and alt:
        fused = ", ".join(
            f"batch {b}: {ratio(_p50(r, 'fp32_fused'), _p50(r, 'int8')):.2f}x"
            for b, r in alt.items()
            if "fp32_fused" in r
        )
        plain = figures(model)["int8_vs_fp32"] or 0
        out.append(
            f"INT8 over fused FP32 by batch size ({fused}); INT8 over the plain FP32 export at "
            f"batch 1: {plain:.2f}x."
        )
    if "handler_overhead" in missed and "1" in tiers:
        prep, v2, handler = (tiers["1"][k]["p50"] for k in ("prep_run", "v2", "handler"))
        at_8 = tiers.get("8", tiers["1"])
        at_8 = (ratio(at_8["handler"]["p50"], at_8["prep_run"]["p50"]) or 1) - 1
        out.append(
            f"at batch 1 pre-processing + run takes {prep:.2f} ms; V2 decode/validate/encode "
            f"adds {v2 - prep:.2f} ms and the handler's own path (route, proxy result, "
            f"powertools' Logger and Metrics; no Tracer, tracing off) {handler - v2:.2f} ms: "
            f"fixed costs that do not shrink with the model. At batch 8 "
            f"the handler adds {at_8:.0%}."
        )
    if "warm_vs_pytorch" in missed and "torch_forward" in alt.get("1", {}):
        st, forward, int8 = (alt["1"][k]["p50"] for k in ("torch_st", "torch_forward", "int8"))
        out.append(
            f"PyTorch at batch 1: sentence-transformers encode {st:.2f} ms, its bare forward "
            f"{forward:.2f} ms, INT8 pre-processing + run {int8:.2f} ms."
        )
    if "cold_vs_pytorch" in missed and "int8" in cold and "torch" in cold:
        int8, torch = (cold[k] for k in ("int8", "torch"))
        out.append(
            f"cold start INT8 {int8['median_wall_s']:.2f} s (imports "
            f"{int8['median_imports_s']:.2f} s) vs PyTorch {torch['median_wall_s']:.2f} s "
            f"(imports {torch['median_imports_s']:.2f} s)."
        )
    if "size_vs_pytorch" in missed and "onnxlift" in size:
        ours = size["onnxlift"]
        top = ", ".join(f"{n} {b / MB:.0f} MB" for n, b in list(ours["packages"].items())[:5])
        out.append(
            f"the onnxlift function's largest dependencies: {top}; the model itself is "
            f"{ours['model_bytes'] / MB:.0f} MB."
        )
    if "throughput_c2" in missed and tp:
        one = _p50(tp, "levels", "1", "latency_ms") or 0
        out.append(
            f"one request through the gateway takes {one:.2f} ms p50 against "
            f"{tp['floor_ms']:.2f} ms of bare run; the client, the gateway, the function and "
            f"the handler's Python share the {tp['cores']} cores with onnxruntime."
        )
    return out


# ----------------------------------------------------------------------------- Markdown


def _table(head: str, rows: Iterable[Iterable[Any]]) -> list[str]:
    """A Markdown table: `head` names the columns (` | ` between them), a cell is str() of it."""
    lines = [f"| {head} |", "|" + "---|" * len(head.split(" | "))]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _stats(s: dict[str, Any] | None) -> str:
    return "-" if s is None else " / ".join(_ms(s[k]) for k in ("p50", "p95", "p99"))


def _tiers_md(tiers: dict[str, Any]) -> list[str]:
    rows = tiers["batches"].values()
    table = [
        [TIERS[t], *(_stats(r.get(t)) for r in rows)] for t in TIERS if any(t in r for r in rows)
    ]
    table.append(["(padded sequence length)", *(r["sequence_length"] for r in rows)])
    return _table(
        " | ".join(["tier", *(f"batch {b} p50 / p95 / p99 ms" for b in tiers["batches"])]), table
    )


def _alt_md(alt: dict[str, Any]) -> list[str]:
    def cell(row: dict[str, Any], key: str) -> str:
        times = ratio(_p50(row, key), _p50(row, "int8"))
        return (
            "-" if key not in row else _ms(row[key]["p50"]) + (f" ({times:.2f}x)" if times else "")
        )

    table, sources = [], []
    for key, info in alt["variants"].items():
        parity = info.get("parity") or {}
        cos = [f"{parity[k]:.4f}" if k in parity else "-" for k in ("min", "mean")]
        size = f"{info['bytes'] / MB:.1f}" if info.get("bytes") else "-"
        table.append([info["label"], size, *cos, *(cell(r, key) for r in alt["batches"].values())])
        sources.append(f"{key}: {parity.get('source') or 'not measured'}")
    head = "variant | file MB | min cos | mean cos | " + " | ".join(
        f"batch {b} p50 ms (x INT8)" for b in alt["batches"]
    )
    parity = "Parity: cosine against sentence-transformers on the parity set; source per variant: "
    return [*_table(head, table), "", parity + ", ".join(sources) + "."]


def _threads_md(threads: dict[str, Any]) -> list[str]:
    table = []
    for b, row in threads["batches"].items():
        for key in sorted({k.split("@")[0] for k in row if "@" in k}):
            one, two = row[f"{key}@1"]["p50"], row[f"{key}@2"]["p50"]
            table.append([b, key, _ms(one), _ms(two), f"{one / two:.2f}x"])
    return _table("batch | variant | 1 thread p50 ms | 2 threads p50 ms | speed-up", table)


def _cold_md(cold: dict[str, Any]) -> list[str]:
    row = "{runs} | {median_wall_s:.3f} | {median_imports_s:.3f} | {median_load_s:.3f} | "
    row += "{median_first_inference_s:.3f} | {min_wall_s:.3f}-{max_wall_s:.3f}"
    head = "kind | runs | median wall s | imports s | load s | first inference s | min-max wall s"
    lines = _table(head, ([kind, row.format(**s)] for kind, s in cold["kinds"].items()))
    for kind, s in cold["kinds"].items():
        if phases := s.get("median_phases"):  # the handler's init, timed by the handler
            lines += ["", f"{kind}: the Lambda init phase by part (median s):", ""]
            lines += _table(
                " | ".join(name.removesuffix("_s") for name in phases),
                [[f"{value:.3f}" for value in phases.values()]],
            )
    return lines


def _size_md(size: dict[str, Any]) -> list[str]:
    sides = {key: size[key] for key in ("onnxlift", "pytorch") if size.get(key)}
    row = "{dependencies_bytes:.1f} | {model_bytes:.1f} | {code_bytes:.2f} | {total_bytes:.1f}"
    mb = {
        k: {"code_bytes": 0} | {n: v / MB for n, v in s.items() if n.endswith("_bytes")}
        for k, s in sides.items()
    }
    head = "function | dependencies MB | model MB | code MB | total MB"
    lines = [
        f"Method: {size.get('method')}.",
        "",
        *_table(head, ([k, row.format(**v)] for k, v in mb.items())),
    ]
    for key, s in sides.items():
        top = ", ".join(f"{n} {b / MB:.1f} MB" for n, b in list(s["packages"].items())[:8])
        lines += ["", f"Largest dependencies ({key}): {top}."]
    return lines


def _throughput_md(tp: dict[str, Any]) -> list[str]:
    row = "{requests} | {rps:.0f} | {fraction_of_limit:.0%}"
    table = ([c, row.format(**r), _stats(r["latency_ms"])] for c, r in tp["levels"].items())
    head = "concurrency | requests | req/s | of the limit | p50 / p95 / p99 ms"
    limit = f"Limit: {tp['cores']} cores / {tp['floor_ms']:.2f} ms (bare session.run, batch 1, "
    limit += f"one thread) = {tp['limit_rps']:.0f} requests/s."
    return [limit, "", *_table(head, table)]


def _batching_md(name: str, sb: dict[str, Any]) -> list[str]:
    """The SageMaker container's dynamic batching, on and off, one table a round."""
    c = sb["concurrency"]
    out = [
        f"### {name}: SageMaker dynamic batching, {c} concurrent clients",
        "",
        f"One `serve` (gunicorn, one worker, CPU provider) per mode on 127.0.0.1, {sb['cores']} "
        f"cores shared with the {c} client threads; one text a request. Largest difference "
        f"between the answers with batching on and off: {sb['max_abs_diff_on_vs_off']:.1e}.",
    ]
    head = (
        f"mode | requests | req/s | p50 / p95 / p99 ms at {c} | p50 ms at 1 | requests a merged run"
    )
    for number, round_ in enumerate(sb["rounds"], 1):
        rows = []
        for row in round_["modes"].values():
            hot, stats = row[f"c{c}"], row.get(DYNAMIC_BATCHING)
            merged = stats["merged_requests"] / stats["merged_runs"] if stats and stats[
                "merged_runs"] else None  # fmt: skip
            mean = "-" if merged is None else f"{merged:.1f}"
            rows.append(
                (
                    row["label"],
                    hot["requests"],
                    f"{hot['rps']:.1f}",
                    _stats(hot["latency_ms"]),
                    f"{row['c1']['latency_ms']['p50']:.1f}",
                    mean,
                )
            )
        r = round_["ratios"]
        summary = (
            f"Round {number}: on / off (as shipped) {r['rps_on_over_off']:.2f}x req/s, p50 "
            f"{r['p50_on_over_off']:.2f}x, p99 {r['p99_on_over_off']:.2f}x; a "
            f"{sb['delay_ms']:g} ms delay costs {r['idle_p50_delay_cost_ms']:+.1f} ms at p50 "
            "with one client."
        )
        out += ["", summary, "", *_table(head, rows)]
    return out


# a model's section -> its heading and its body; a plot `<section>_<model>.png` goes below
SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "tiers": ("Tiers of the request path (p50 / p95 / p99 ms, {threads} thread, INT8)", _tiers_md),
    "alternatives": ("INT8 vs FP32 vs PyTorch (pre-processing + run, {threads} thread)", _alt_md),
    "op_profile": (
        "Time by op type, INT8 vs FP32 (onnxruntime profiler, {threads} thread)",
        op_profile.render,
    ),
    "threads": ("intra_op_num_threads 1 vs 2 (pre-processing + run)", _threads_md),
    "coldstart": ("Cold start (fresh process to first answer)", _cold_md),
    "size": ("Deployable size", _size_md),
    "throughput": ("Throughput through the local gateway", _throughput_md),
}


def render_markdown(results: dict[str, Any], plots: list[str]) -> str:
    meta, machine, versions = (
        results["meta"],
        results["meta"]["machine"],
        results["meta"]["versions"],
    )
    dirty = " (with uncommitted changes)" if meta["git"]["dirty"] else ""
    flags = " ".join(machine.get("cpu_flags", [])) or "flags not recorded"
    marks = {True: "met", False: "**not met**", None: "not measured"}
    goals = [(g["model"], g["goal"], g["figure"], marks[g["met"]]) for g in results["goals"]]
    out = [
        "# onnxlift bench",
        "",
        f"`{meta['command']}`, {meta['mode']} mode, {meta['generated_at']}, commit "
        f"`{meta['git']['commit']}`{dirty}, {meta['duration_s']:.0f} s. Machine: "
        f"{machine['cpu']} ({flags}), {machine['cores']} cores, Python {machine['python']}, "
        f"onnxruntime {versions.get('onnxruntime')}, torch {versions.get('torch')}.",
        "",
        "## Goals",
        "",
        *_table("model | goal | figure | met", goals),
        "",
    ]
    for name, model in results["models"].items():
        f = figures(model)
        cos = "-" if f["int8_min_cosine"] is None else f"{f['int8_min_cosine']:.4f}"
        rows = [(label, _shown(key, f[key]), cos) for label, key in HEADLINE.items()]
        out += [
            f"## Headline: ratios, {name}",
            "",
            *_table(f"{name} | ratio | INT8 min cosine", rows),
            "",
        ]
    out += ["![overview](overview.png)", ""] if "overview.png" in plots else []
    for name, model in results["models"].items():
        out += [f"## {name}: details", ""]
        if model.get("notes"):
            out += [
                "What limits the goals that are not met:",
                "",
                *(f"- {n}" for n in model["notes"]),
                "",
            ]
        for key, (heading, body) in SECTIONS.items():
            if model.get(key):
                out += [f"### {heading.format_map(model[key])}", "", *body(model[key]), ""]
                out += [f"![{key}]({key}_{name}.png)", ""] if f"{key}_{name}.png" in plots else []
    for name, sb in results.get("sagemaker_batching", {}).items():
        out += [*_batching_md(name, sb), ""]
    return "\n".join([*out, "## Method", "", *(f"- {line}" for line in results["method"]), ""])


# ----------------------------------------------------------------------------- plots
NAMES = {"int8": "INT8", "fp32_fused": "FP32 fused", "fp32": "FP32", "torch_st": "PyTorch"}
COLORS = {"int8": "#2a7ab9", "fp32_fused": "#8fb8de", "fp32": "#c6dbef", "torch_st": "#d9534f"}


def _bars(ax: Any, batches: dict[str, Any], series: dict[str, str], title: str) -> None:
    """p50 of each series side by side, one group per batch size, on a log scale."""
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series.items()):
        xs = [j + i * width for j in range(len(batches))]
        ax.bar(xs, [_p50(row, key) or 0 for row in batches.values()], width, label=label)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(batches))])
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.set(yscale="log", ylabel="p50 latency, ms (log)", title=title)
    ax.legend(fontsize=8)


def _tiers_plot(ax: Any, name: str, tiers: dict[str, Any]) -> None:
    shown = {
        t: label for t, label in TIERS.items() if any(t in r for r in tiers["batches"].values())
    }
    _bars(ax, tiers["batches"], shown, f"{name}: where the time of a request goes (INT8, 1 thread)")


def _alternatives_plot(ax: Any, name: str, alt: dict[str, Any]) -> None:
    series = {key: variant["label"] for key, variant in alt["variants"].items()}
    _bars(ax, alt["batches"], series, f"{name}: INT8 vs FP32 vs PyTorch eager (1 thread)")


def _throughput_plot(
    ax: Any,
    name: str,
    tp: dict[str, Any],
    labels: tuple[str, str] = ("measured", "limit: cores / bare run"),
) -> None:
    levels = [int(c) for c in tp["levels"]]
    ax.plot(levels, [tp["levels"][str(c)]["rps"] for c in levels], "o-", label=labels[0])
    ax.axhline(tp["limit_rps"], color="grey", ls="--", label=labels[1])
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set(xlabel="concurrent clients", ylabel="requests / s (batch 1)", ylim=(0, None))
    ax.set_title(f"{name}: throughput through the local gateway")
    ax.legend()


def _overview(axes: Any, name: str, model: dict[str, Any]) -> None:
    """Four panels: warm latency, cold start, deployable size, throughput."""
    warm = {k: v["p50"] for k, v in (_get(model, "alternatives", "batches", "1") or {}).items()}
    cold = {
        "torch_st" if k == "torch" else k: v["median_wall_s"]
        for k, v in (_get(model, "coldstart", "kinds") or {}).items()
    }
    for ax, values, unit, title in (
        (axes[0][0], warm, "ms", "warm latency, batch 1, p50 (1 thread)"),
        (axes[0][1], cold, "s", "cold start to first answer, median"),
    ):
        keys = [k for k in NAMES if k in values]
        ax.bar([NAMES[k] for k in keys], [values[k] for k in keys], color=[COLORS[k] for k in keys])
        ax.set(ylabel=unit, title=title)
    size = model.get("size") or {}
    sides = [k for k in ("onnxlift", "pytorch") if k in size]
    labels = ["onnxlift INT8" if k == "onnxlift" else "PyTorch" for k in sides]
    deps = [size[k]["dependencies_bytes"] / MB for k in sides]
    axes[1][0].bar(labels, deps, color="#999999", label="dependencies")
    weights = [size[k]["model_bytes"] / MB for k in sides]
    axes[1][0].bar(labels, weights, bottom=deps, color=COLORS["int8"], label="model")
    axes[1][0].set(ylabel="MB installed", title="deployable size (Lambda platform)")
    axes[1][0].legend()
    if model.get("throughput"):
        _throughput_plot(axes[1][1], name, model["throughput"], ("local gateway", "limit"))
    axes[1][1].set(xlabel="concurrent clients", ylabel="requests / s", title="throughput, batch 1")
    axes[0][0].get_figure().suptitle(f"{name}: onnxlift INT8 vs the alternatives")


# a model's section -> what draws its plot, at which size
PLOTS = {
    "tiers": (_tiers_plot, (8, 4.5)),
    "alternatives": (_alternatives_plot, (8, 4.5)),
    "throughput": (_throughput_plot, (6, 4)),
}


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """tiers, alternatives and throughput of each model; the overview of the first one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(file: str, draw: Callable[..., None], size: tuple[float, float], *args: Any) -> str:
        overview = file == "overview.png"
        fig, axes = plt.subplots(2 if overview else 1, 2 if overview else 1, figsize=size)
        draw(axes, *args)
        fig.tight_layout()
        fig.savefig(out / file, dpi=100 if overview else 110)
        plt.close(fig)
        return file

    models = results["models"]
    written = [
        save(f"{key}_{name}.png", draw, size, name, model[key])
        for name, model in models.items()
        for key, (draw, size) in PLOTS.items()
        if model.get(key)
    ]
    if models:
        model = next(iter(models.values()))
        written.append(save("overview.png", _overview, (11, 7.5), model.get("name", ""), model))
    return written
