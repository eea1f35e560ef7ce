"""report.md and report.csv of the classification runs: one flat row per result (the paper's Tables
6/7 columns, the published numbers beside ImageNet runs, Pareto marks, latency columns), the
published results table, and the latency section."""

from __future__ import annotations

import csv
import io
import math
from datetime import datetime

from .. import published
from .runs import VARIANT_NAMES, Latency, Result, number

PROG = "mobilenet-report"
OUTPUTS = ("report.md", "report.csv", "accuracy_vs_mult_adds.png", "accuracy_vs_params.png")
LATENCY_OUTPUT = "accuracy_vs_latency.png"  # written only when latency.json files are found



def pareto(points: list[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point beats: at most the cost and more accuracy."""
    frontier, best = set(), -math.inf
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if points[i][1] > best:
            frontier.add(i)
            best = points[i][1]
    return frontier


def frontier(results: list[Result], x: str) -> list[list[int]]:
    """Pareto frontiers in cost `x` (mult_adds or params), one per dataset (accuracies on different
    data do not compare), each as result indices sorted by cost."""
    by_dataset: dict[str | None, list[int]] = {}
    for i, r in enumerate(results):
        by_dataset.setdefault(r.dataset, []).append(i)
    fronts = []
    for idx in by_dataset.values():
        front = pareto([(getattr(results[i], x), results[i].top1) for i in idx])
        fronts.append(sorted((idx[j] for j in front), key=lambda i: getattr(results[i], x)))
    return fronts


def _published_for(r: Result) -> dict:
    """The paper's and TF-slim's numbers for this model, when the run is on ImageNet like them."""
    if r.dataset != "imagenet":
        return {}
    out = {}
    paper = published.matching(*r.key(), "paper")
    if paper:
        out.update(paper_tables=published.tables(paper), paper_top1=paper[0].top1,
                   paper_top1_diff=r.top1 - paper[0].top1, paper_mult_adds_m=paper[0].mult_adds_m,
                   paper_params_m=paper[0].params_m)
    slim = published.matching(*r.key(), "tf_slim")
    if slim:
        s = slim[0]
        out.update(tfslim_model=s.model, tfslim_top1=s.top1, tfslim_top5=s.top5, tfslim_top1_diff=r.top1 - s.top1,
                   tfslim_top5_diff=None if r.top5 is None else r.top5 - s.top5,
                   tfslim_macs_m=s.mult_adds_m, tfslim_params_m=s.params_m)
    return out


CSV_COLUMNS = ["model", "variant", "alpha", "resolution", "quantization", "name", "source", "dataset", "epoch",
               "epochs_total",
               "in_progress", "top1", "top5", "mult_adds", "params", "images_per_sec", "pareto_mult_adds",
               "pareto_params", "paper_tables", "paper_top1", "paper_top1_diff", "paper_mult_adds_m",
               "paper_params_m", "tfslim_model", "tfslim_top1", "tfslim_top5", "tfslim_top1_diff", "tfslim_top5_diff",
               "tfslim_macs_m", "tfslim_params_m", "latency_threads", "latency_eager_ms", "latency_fp32_ms",
               "latency_fp32_backend", "latency_int8_ms", "latency_int8_backend", "path"]


def latency_columns(lat: Latency | None) -> dict:
    if lat is None:
        return {}
    return {"latency_threads": lat.threads, "latency_eager_ms": lat.eager_ms, "latency_fp32_ms": lat.fp32_ms,
            "latency_fp32_backend": lat.fp32_backend, "latency_int8_ms": lat.int8_ms,
            "latency_int8_backend": lat.int8_backend}


def rows(results: list[Result], latency: dict[tuple, Latency] | None = None) -> list[dict]:
    """One flat record per result: what report.csv holds and report.md shows."""
    latency = latency or {}
    front_ma = {i for f in frontier(results, "mult_adds") for i in f}
    front_p = {i for f in frontier(results, "params") for i in f}
    out = []
    for i, r in enumerate(results):
        row = {k: getattr(r, k) for k in ("model", "variant", "alpha", "resolution", "quantization", "name", "source",
                                          "dataset",
                                          "epoch", "epochs_total", "in_progress", "top1", "top5", "mult_adds",
                                          "params", "images_per_sec", "path")}
        row.update(pareto_mult_adds=i in front_ma, pareto_params=i in front_p, **_published_for(r),
                   **latency_columns(latency.get(r.key())))
        out.append({k: row.get(k) for k in CSV_COLUMNS})
    return out


# ----------------------------------------------------------------------------- report.md / .csv


def fmt(x, digits: int = 2, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def millions(n: int) -> str:
    m = n / 1e6
    return f"{m:.1f}" if m >= 10 else f"{m:.2f}"


def epoch_text(row: dict) -> str:
    if row["source"] == "eval":
        return f"eval (ep. {row['epoch']})" if row["epoch"] is not None else "eval"
    text = f"{row['epoch']}/{row['epochs_total'] or '?'}"
    return f"{text} (in progress: best so far)" if row["in_progress"] else text


def results_table(table: list[dict]) -> list[str]:
    lines = ["| model | alpha | resolution | precision | run | data | epoch | top-1 | top-5 | mult-adds (M) | "
             "params (M) | images/s | paper top-1 (Δ) | TF-slim top-1 / top-5 (Δ) | latency ms eager / fp32 / int8 | "
             "Pareto |",
             "|---|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in table:
        paper = f"{r['paper_top1']} ({fmt(r['paper_top1_diff'], 1, True)})" if r["paper_top1"] is not None else "–"
        slim = (f"{r['tfslim_top1']} / {r['tfslim_top5']} ({fmt(r['tfslim_top1_diff'], 1, True)} / "
                f"{fmt(r['tfslim_top5_diff'], 1, True)})" if r["tfslim_top1"] is not None else "–")
        speed = f"{r['images_per_sec']:.0f} ({r['source']})" if number(r["images_per_sec"]) else "–"
        lat = (" / ".join(fmt(r[k]) for k in ("latency_eager_ms", "latency_fp32_ms", "latency_int8_ms"))
               if r.get("latency_threads") else "–")
        lines.append(f"| {r['model']} | {r['alpha']} | {r['resolution']} | {r['quantization']} | {r['name']} | "
                     f"{r['dataset'] or '?'} | "
                     f"{epoch_text(r)} | {fmt(r['top1'])} | {fmt(r['top5'])} | {millions(r['mult_adds'])} | "
                     f"{millions(r['params'])} | {speed} | {paper} | {slim} | {lat} | "
                     f"{'✓' if r['pareto_mult_adds'] else ''} |")
    return lines


def published_table() -> list[str]:
    lines = ["| source | model | alpha | resolution | top-1 | top-5 | mult-adds (M) | params (M) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for source in published.SOURCE_NAMES:
        for p in published.results(source):
            where = f"paper Table {p.table}" if p.table else published.SOURCE_NAMES[source]
            lines.append(f"| {where} | {p.model} | {p.alpha} | {p.resolution} | {p.top1} | {p.top5 or '–'} | "
                         f"{p.mult_adds_m} | {p.params_m} |")
    return lines


def latency_section(latency: dict[tuple, Latency]) -> list[str]:
    if not latency:
        return []
    lines = ["## Latency", "",
             "Batch 1, median ms, from `mobilenet-bench latency` (latency.json); eager = PyTorch fp32 as trained, "
             "fp32 / int8 = the fastest exported backend (ONNX Runtime, ExecuTorch XNNPACK, LiteRT, torch.compile). "
             "The latency columns above are these numbers for the same architecture.", "",
             "| model | alpha | resolution | threads | eager ms | fp32 ms (backend) | int8 ms (backend) | "
             "int8 × eager | CPU | file |", "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for lat in sorted(latency.values(), key=lambda lt: (lt.variant, -lt.alpha, -lt.resolution)):
        ratio = fmt(lat.int8_ms / lat.eager_ms) if lat.int8_ms and lat.eager_ms else "–"
        fp32 = f"{fmt(lat.fp32_ms)} ({lat.fp32_backend})" if lat.fp32_ms else "–"
        int8 = f"{fmt(lat.int8_ms)} ({lat.int8_backend})" if lat.int8_ms else "–"
        lines.append(f"| {VARIANT_NAMES.get(lat.variant, lat.variant)} | {lat.alpha} | {lat.resolution} | "
                     f"{lat.threads} | {fmt(lat.eager_ms)} | {fp32} | {int8} | {ratio} | {lat.cpu} | {lat.path} |")
    return [*lines, "", f"![top-1 against latency]({LATENCY_OUTPUT})", ""]


def markdown(table: list[dict], skipped: list[str], paths: list[str], latency: dict | None = None) -> str:
    sources = published.data()["sources"]
    text = [
        "# MobileNet v1: accuracy against cost",
        "",
        f"{len(table)} result(s) from {', '.join(f'`{p}`' for p in paths)}; written "
        f"{datetime.now().strftime('%Y-%m-%d %H:%M')} by `{PROG}`.",
        "",
        "Top-1/top-5 in percent on each run's own val split. A training run shows its best epoch by val top-1 "
        "(the one `best.pt` holds), marked *in progress* while it has not reached its planned epochs. "
        "images/s: training throughput of that epoch (train) or evaluation throughput (eval). Published "
        "numbers (ImageNet) stand beside runs on `data=imagenet` with the same variant, alpha and resolution; "
        "Δ = run − published. Pareto: no other run on the same data is both cheaper in mult-adds and more accurate.",
        "",
        *results_table(table),
        "",
        "![top-1 against mult-adds](accuracy_vs_mult_adds.png)",
        "![top-1 against parameters](accuracy_vs_params.png)",
        "",
    ]
    text += latency_section(latency or {})
    if skipped:
        text += ["## Skipped", "", *[f"- {s}" for s in skipped], ""]
    text += ["## Published results", "", *published_table(), "", "Sources:", ""]
    for key, s in sources.items():
        text.append(f"- {published.SOURCE_NAMES[key]}: {s['citation']}, <{s['url']}>. {s['notes']}")
    return "\n".join(text) + "\n"


def to_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


