"""`mobilenet-report RUN_OR_DIR ... [out=DIR] [tb=DIR] [--tensorboard]`: the paper's Tables 6/7
and Figures 4/5 for your own runs, with the published numbers beside them.

Finds every training run (a dir with metrics.jsonl, or only checkpoints/) and every
mobilenet-eval result (eval.json) under the given paths and writes, each file atomically:

    report.md                   the table (like the paper's Tables 6/7/14), skipped inputs, sources
    report.csv                  the same rows, full precision
    accuracy_vs_mult_adds.png   Figure 4: top-1 against mult-adds (log x), one line per alpha
    accuracy_vs_params.png      Figure 5: top-1 against parameters (log x)
    accuracy_vs_latency.png     top-1 against measured batch-1 latency, when latency.json files are found

`mobilenet-bench latency` writes latency.json; every one found under the given paths adds latency
columns to the runs of the same architecture (variant, alpha, resolution: latency does not depend
on the weights) and a latency section to report.md. Columns: batch 1, 1 thread, median ms.

A training run reports its best epoch by val top-1 (the one best.pt holds); a run that has not
reached its planned epochs is marked as in progress. Bad input (a dir without runs, a corrupt
metrics.jsonl line, a run without a val metric yet) is reported and skipped, never fatal.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import published
from .checkpoint import atomic_write_bytes, atomic_write_text
from .detection.report import detection_row, detection_section, is_detection
from .errors import UserError

PROG = "mobilenet-report"
OUTPUTS = ("report.md", "report.csv", "accuracy_vs_mult_adds.png", "accuracy_vs_params.png")
LATENCY_OUTPUT = "accuracy_vs_latency.png"  # written only when latency.json files are found
LATENCY_FILE = "latency.json"
LATENCY_THREADS = 1  # the table's latency columns: batch 1 on one thread (the most repeatable setting)
TB_MARKER = ".mobilenet-report"  # marks a TensorBoard dir this command wrote (and may replace)
SKIP_DIRS = {"tb", ".hydra", "__pycache__"}
VARIANT_NAMES = {"separable": "MobileNet", "conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}
VARIANT_MARKERS = {"separable": "o", "conv": "D", "shallow": "v"}
PUBLISHED_STYLE = {  # source -> (marker, legend label)
    "paper": ("s", "paper (Tables 4-7, 9)"),
    "tf_slim": ("^", "TF-slim release (16 checkpoints)"),
    "timm": ("*", "timm ra4 recipe (3600 epochs)"),
    "tf_model_garden": ("P", "TF Model Garden (500 epochs)"),
}


class Skip(Exception):
    """An input that cannot be reported; the message says why."""


@dataclass
class Result:
    name: str                     # where it was found, relative to the path given
    source: str                   # "train" (a run dir, its best epoch) | "eval" (an eval.json)
    path: str
    variant: str
    alpha: float
    resolution: int
    dataset: str | None
    top1: float
    top5: float | None
    mult_adds: int
    params: int
    images_per_sec: float | None  # train throughput of that epoch, or eval throughput
    epoch: int | None = None
    epochs_total: int | None = None
    in_progress: bool = False
    history: list[dict] = field(default_factory=list)  # the metrics lines, for TensorBoard
    quantization: str = "fp32"    # eval.json of an exported file: int8-ptq, int8-qat, uint8-google, ...

    @property
    def quantized(self) -> bool:
        return self.quantization != "fp32"

    @property
    def model(self) -> str:
        return VARIANT_NAMES.get(self.variant, self.variant)

    def key(self) -> tuple:
        return self.variant, float(self.alpha), int(self.resolution)


# ----------------------------------------------------------------------------- finding runs


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_metrics(path: Path, warnings: list[str]) -> list[dict]:
    """The epoch lines of metrics.jsonl; a corrupt line is reported in `warnings` and skipped."""
    lines = []
    for i, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError as e:
            warnings.append(f"{path} line {i}: not valid JSON ({e.msg}); line skipped")
            continue
        if not isinstance(line, dict) or not _number(line.get("epoch")):
            warnings.append(f"{path} line {i}: not an epoch record (no 'epoch'); line skipped")
            continue
        lines.append(line)
    return lines


def _from_hydra_config(run_dir: Path, line: dict) -> tuple[str | None, int | None]:
    """Dataset and planned epochs; runs written before metrics carried them: from .hydra/config.yaml."""
    dataset, planned = line.get("dataset"), line.get("epochs_total")
    config = run_dir / ".hydra" / "config.yaml"
    if (dataset is None or planned is None) and config.is_file():
        from omegaconf import OmegaConf

        try:
            cfg = OmegaConf.load(config)
            dataset = dataset or cfg.data.name
            planned = planned or cfg.trainer.epochs
        except Exception:  # noqa: BLE001 - an unreadable config only loses the data name and in-progress mark
            pass
    return dataset, int(planned) if _number(planned) else None


def _checkpoint_history(run_dir: Path) -> list[dict]:
    """A run dir without metrics.jsonl: the metrics stored in its best (or last) checkpoint."""
    from .checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            try:
                metrics = load_checkpoint(path).get("metrics") or {}
            except UserError as e:
                raise Skip(str(e)) from None
            return [metrics] if metrics else []
    return []


def load_train_run(run_dir: Path, name: str, warnings: list[str]) -> Result:
    metrics_path = run_dir / "metrics.jsonl"
    lines = read_metrics(metrics_path, warnings) if metrics_path.is_file() else _checkpoint_history(run_dir)
    val = [m for m in lines if _number(m.get("val_top1"))]
    if not val:
        raise Skip(f"no val metric yet ({len(lines)} epoch(s) logged): nothing to report until its first evaluation")
    best = max(val, key=lambda m: m["val_top1"])  # the first of equals, as best.pt keeps it
    missing = [k for k in ("alpha", "resolution", "params", "mult_adds") if not _number(best.get(k))]
    if missing:
        raise Skip(f"its metrics lack {', '.join(missing)} (written by an older mobilenet-train); "
                   f"evaluate its checkpoint with mobilenet-eval and report the eval.json instead")
    last_epoch = int(max(m["epoch"] for m in lines))
    dataset, planned = _from_hydra_config(run_dir, best)
    return Result(
        name=name, source="train", path=str(run_dir), variant=str(best.get("variant", "separable")),
        alpha=float(best["alpha"]), resolution=int(best["resolution"]), dataset=dataset,
        top1=float(best["val_top1"]), top5=best.get("val_top5"), mult_adds=int(best["mult_adds"]),
        params=int(best["params"]), images_per_sec=best.get("images_per_sec"), epoch=int(best["epoch"]),
        epochs_total=planned, in_progress=planned is not None and last_epoch < planned, history=lines,
    )


def load_eval(path: Path, name: str) -> Result:
    try:
        r = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise Skip(f"not valid JSON ({e.msg})") from None
    if not isinstance(r, dict):
        raise Skip("not a mobilenet-eval result (not a JSON object)")
    missing = [k for k in ("top1", "alpha", "resolution", "params", "mult_adds") if not _number(r.get(k))]
    if missing:
        raise Skip(f"not a mobilenet-eval result (no {', '.join(missing)})")
    return Result(
        name=name, source="eval", path=str(path), variant=str(r.get("variant", "separable")), alpha=float(r["alpha"]),
        resolution=int(r["resolution"]), dataset=r.get("dataset"), top1=float(r["top1"]), top5=r.get("top5"),
        mult_adds=int(r["mult_adds"]), params=int(r["params"]), images_per_sec=r.get("images_per_sec"),
        quantization=str(r.get("quantization") or "fp32"), epoch=r.get("epoch"),
        history=[{"epoch": r.get("epoch") or 0, "step": r.get("step") or 0,
                  "val_top1": r["top1"], "val_top5": r.get("top5"), "val_loss": r.get("loss")}],
    )


def _is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or any((path / "checkpoints").glob("*.pt"))


def _candidates(given: Path) -> list[tuple[str, Path]]:
    """("train", run dir) and ("eval", json file) under `given`, in a stable order."""
    if given.is_file():
        if given.name == LATENCY_FILE:
            return []  # read by find_latency
        if given.name == "metrics.jsonl":
            return [("train", given.parent)]
        if given.suffix == ".pt" and given.parent.name == "checkpoints":
            return [("train", given.parent.parent)]
        if given.suffix == ".json":
            return [("eval", given)]
        raise Skip("not a run dir, metrics.jsonl, checkpoint or eval JSON file")
    found = []
    for dirpath, dirnames, filenames in os.walk(given):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        here = Path(dirpath)
        if _is_run_dir(here):
            found.append(("train", here))
        # eval.json of a checkpoint; FILE.eval.json of an exported file (mobilenet-eval FILE.tflite)
        for name in sorted(f for f in filenames if f == "eval.json" or f.endswith(".eval.json")):
            found.append(("eval", here / name))
    return found


def _name(target: Path, given: Path) -> str:
    if target == given or not target.is_relative_to(given):
        return str(Path(*target.parts[-2:]))  # the run dir itself was given: its last two parts
    return str(target.relative_to(given))


def find_results(paths: list[str]) -> tuple[list[Result], list[str]]:
    """Every reportable result under `paths`, and one message per input skipped."""
    results, skipped, seen = [], [], set()
    for text in paths:
        given = Path(text)
        if not given.exists():
            skipped.append(f"{text}: does not exist")
            continue
        try:
            candidates = _candidates(given)
        except Skip as e:
            skipped.append(f"{text}: {e}")
            continue
        if not candidates and given.name != LATENCY_FILE:
            skipped.append(f"{text}: no runs under it (no metrics.jsonl, checkpoints/*.pt or eval.json)")
        for kind, target in candidates:
            if target.resolve() in seen or is_detection(kind, target):  # detection: detection_rows
                continue
            seen.add(target.resolve())
            warnings: list[str] = []
            try:
                name = _name(target, given)
                results.append(load_train_run(target, name, warnings) if kind == "train" else load_eval(target, name))
            except Skip as e:
                skipped.append(f"{target}: {e}")
            except OSError as e:
                skipped.append(f"{target}: cannot be read ({e.strerror or e})")
            skipped.extend(warnings)
    order = {v: i for i, v in enumerate(VARIANT_NAMES)}
    results.sort(key=lambda r: (order.get(r.variant, len(order)), -r.alpha, -r.resolution, r.source, r.name))
    return results, skipped


# ----------------------------------------------------------------------------- latency


@dataclass
class Latency:
    """One model of a latency.json: the batch-1 medians at LATENCY_THREADS thread(s)."""

    path: str
    written: str
    cpu: str
    variant: str
    alpha: float
    resolution: int
    eager_ms: float | None
    fp32_ms: float | None
    fp32_backend: str | None
    int8_ms: float | None
    int8_backend: str | None
    threads: int

    def key(self) -> tuple:
        return self.variant, float(self.alpha), int(self.resolution)


def _latency_files(paths: list[str]) -> list[Path]:
    files = []
    for text in paths:
        given = Path(text)
        if given.is_file() and given.name == LATENCY_FILE:
            files.append(given)
        elif given.is_dir():
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
                if LATENCY_FILE in filenames:
                    files.append(Path(dirpath) / LATENCY_FILE)
    return files


def load_latency(path: Path) -> list[Latency]:
    try:
        data = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise Skip(f"not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or data.get("format") != "mobilenet-bench-latency":
        raise Skip("not a mobilenet-bench latency file (no 'mobilenet-bench-latency' format tag)")
    out = []
    for m in data.get("models", []):
        rs = [r for r in m.get("results", []) if r.get("batch") == 1 and _number(r.get("median_ms"))]
        threads = LATENCY_THREADS if any(r["threads"] == LATENCY_THREADS for r in rs) else min(
            (r["threads"] for r in rs), default=LATENCY_THREADS)
        rs = [r for r in rs if r["threads"] == threads]

        def best(precision, exclude=()):
            cands = [r for r in rs if r["precision"] == precision and r["backend"] not in exclude]
            return min(cands, key=lambda r: r["median_ms"]) if cands else None

        eager = next((r for r in rs if r["backend"] == "pytorch" and r["precision"] == "fp32"), None)
        fp32, int8 = best("fp32", exclude=("pytorch",)), best("int8")
        out.append(Latency(
            path=str(path), written=str(data.get("written", "")), cpu=str((data.get("machine") or {}).get("cpu", "?")),
            variant=str(m.get("variant", "separable")), alpha=float(m["alpha"]), resolution=int(m["resolution"]),
            eager_ms=eager and eager["median_ms"], fp32_ms=fp32 and fp32["median_ms"],
            fp32_backend=fp32 and fp32["backend"], int8_ms=int8 and int8["median_ms"],
            int8_backend=int8 and int8["backend"], threads=threads))
    return out


def find_latency(paths: list[str]) -> tuple[dict[tuple, Latency], list[str]]:
    """Architecture -> its latency (the newest file wins), and one message per unreadable file."""
    found, skipped = {}, []
    for path in _latency_files(paths):
        try:
            entries = load_latency(path)
        except (Skip, KeyError, TypeError, ValueError) as e:
            skipped.append(f"{path}: {e if isinstance(e, Skip) else 'not a complete latency file'}")
            continue
        except OSError as e:
            skipped.append(f"{path}: cannot be read ({e.strerror or e})")
            continue
        for lat in entries:
            if lat.key() not in found or lat.written >= found[lat.key()].written:
                found[lat.key()] = lat
    return found, skipped


# ----------------------------------------------------------------------------- rows


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


def _latency_columns(lat: Latency | None) -> dict:
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
                   **_latency_columns(latency.get(r.key())))
        out.append({k: row.get(k) for k in CSV_COLUMNS})
    return out


# ----------------------------------------------------------------------------- report.md / .csv


def _f(x, digits: int = 2, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _millions(n: int) -> str:
    m = n / 1e6
    return f"{m:.1f}" if m >= 10 else f"{m:.2f}"


def _epoch(row: dict) -> str:
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
        paper = f"{r['paper_top1']} ({_f(r['paper_top1_diff'], 1, True)})" if r["paper_top1"] is not None else "–"
        slim = (f"{r['tfslim_top1']} / {r['tfslim_top5']} ({_f(r['tfslim_top1_diff'], 1, True)} / "
                f"{_f(r['tfslim_top5_diff'], 1, True)})" if r["tfslim_top1"] is not None else "–")
        speed = f"{r['images_per_sec']:.0f} ({r['source']})" if _number(r["images_per_sec"]) else "–"
        lat = (" / ".join(_f(r[k]) for k in ("latency_eager_ms", "latency_fp32_ms", "latency_int8_ms"))
               if r.get("latency_threads") else "–")
        lines.append(f"| {r['model']} | {r['alpha']} | {r['resolution']} | {r['quantization']} | {r['name']} | "
                     f"{r['dataset'] or '?'} | "
                     f"{_epoch(r)} | {_f(r['top1'])} | {_f(r['top5'])} | {_millions(r['mult_adds'])} | "
                     f"{_millions(r['params'])} | {speed} | {paper} | {slim} | {lat} | "
                     f"{'✓' if r['pareto_mult_adds'] else ''} |")
    return lines


def published_table() -> list[str]:
    lines = ["| source | model | alpha | resolution | top-1 | top-5 | mult-adds (M) | params (M) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for source in PUBLISHED_STYLE:
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
        ratio = _f(lat.int8_ms / lat.eager_ms) if lat.int8_ms and lat.eager_ms else "–"
        fp32 = f"{_f(lat.fp32_ms)} ({lat.fp32_backend})" if lat.fp32_ms else "–"
        int8 = f"{_f(lat.int8_ms)} ({lat.int8_backend})" if lat.int8_ms else "–"
        lines.append(f"| {VARIANT_NAMES.get(lat.variant, lat.variant)} | {lat.alpha} | {lat.resolution} | "
                     f"{lat.threads} | {_f(lat.eager_ms)} | {fp32} | {int8} | {ratio} | {lat.cpu} | {lat.path} |")
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


# ----------------------------------------------------------------------------- figures


def _plot_published(ax, source: str, points: list[published.Published], colors: dict, x: str) -> None:
    """One source's published points, one group per (variant, alpha); non-separable models are labelled."""
    marker, _label = PUBLISHED_STYLE[source]
    groups: dict[tuple, list[published.Published]] = {}
    for p in points:
        groups.setdefault((p.variant, p.alpha), []).append(p)
    for (variant, alpha), ps in groups.items():
        ps.sort(key=lambda p: p.mult_adds_m)
        xs = [p.mult_adds_m if x == "mult_adds" else p.params_m for p in ps]
        ax.plot(xs, [p.top1 for p in ps], marker=marker, markersize=7, color=colors[alpha],
                markerfacecolor="none" if source == "paper" else colors[alpha], alpha=0.75,
                linestyle=":" if source == "tf_slim" else "none", linewidth=1, gid=f"published:{source}")
        if variant != "separable":
            for p, xv in zip(ps, xs):
                ax.annotate(p.model, (xv, p.top1), textcoords="offset points", xytext=(0, -9), fontsize=8,
                            color="0.35", ha="center", va="top")


def _plot_runs(ax, results: list[Result], colors: dict, x: str) -> None:
    """The runs: one line per (data, variant, alpha) through its resolutions; hollow = still in progress."""
    groups: dict[tuple, list[Result]] = {}
    for r in results:
        if not r.quantized:  # exported int8 files: in the latency figure, beside their fp32 model
            groups.setdefault((r.dataset or "?", r.variant, r.alpha), []).append(r)
    for (_, variant, alpha), rs in sorted(groups.items(),
                                          key=lambda kv: (kv[0][0], kv[0][1] != "separable", -kv[0][2])):
        rs.sort(key=lambda r: getattr(r, x))
        xs = [getattr(r, x) / 1e6 for r in rs]
        ax.plot(xs, [r.top1 for r in rs], color=colors[alpha], linewidth=2)
        for filled in (True, False):
            pts = [(xv, r.top1) for xv, r in zip(xs, rs) if r.in_progress != filled]
            if pts:
                ax.plot(*zip(*pts), linestyle="none", marker=VARIANT_MARKERS.get(variant, "o"), markersize=8,
                        color=colors[alpha], markerfacecolor=colors[alpha] if filled else "white", gid="run")
        for xv, r in zip(xs, rs):
            ax.annotate(str(r.resolution), (xv, r.top1), textcoords="offset points", xytext=(5, 5), fontsize=8,
                        color=colors[alpha])


def _plot_frontiers(ax, results: list[Result], x: str) -> list[list[int]]:
    """The runs' Pareto frontiers (one per dataset), circled; returns them."""
    fronts = frontier(results, x)
    for front in fronts:
        fx = [getattr(results[i], x) / 1e6 for i in front]
        fy = [results[i].top1 for i in front]
        ax.plot(fx, fy, drawstyle="steps-post", linestyle="--", color="black", linewidth=1.2, alpha=0.7,
                marker="o", markersize=15, markerfacecolor="none", markeredgewidth=1.2, gid="frontier")
    return fronts


def _figure_legend(ax, results: list[Result], alphas: list[float], colors: dict, fronts: list[list[int]]) -> None:
    """Legend: colour says alpha, marker and line style say where a point comes from."""
    from matplotlib.lines import Line2D

    entries = [(Line2D([], [], color=colors[a], linewidth=4), f"α = {a}") for a in alphas]
    for variant in sorted({r.variant for r in results}, key=lambda v: v != "separable"):
        entries.append((Line2D([], [], color="0.3", linewidth=2, marker=VARIANT_MARKERS.get(variant, "o")),
                        f"your runs: {VARIANT_NAMES.get(variant, variant)}"))
    if any(r.in_progress for r in results):
        entries.append((Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none"),
                        "in progress (best epoch so far)"))
    entries.append((Line2D([], [], color="black", linestyle="--", marker="o", markersize=12, markerfacecolor="none"),
                    "Pareto frontier of your runs" + (" (per dataset)" if len(fronts) > 1 else "")))
    for source, (marker, label) in PUBLISHED_STYLE.items():
        entries.append((Line2D([], [], color="0.3", marker=marker,
                               markerfacecolor="none" if source == "paper" else "0.3",
                               linestyle=":" if source == "tf_slim" else "none"), f"{label}, ImageNet"))
    ax.legend(*zip(*entries), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def figure(results: list[Result], x: str):
    """Figure 4 (x='mult_adds') or Figure 5 (x='params'). Artists carry a gid: 'run' (one point
    per result), 'frontier', 'published:paper' and 'published:tf_slim' (one point per model)."""
    from matplotlib.figure import Figure

    xlabel = {"mult_adds": "mult-adds per image (millions, log scale)",
              "params": "parameters (millions, log scale)"}[x]
    title = {"mult_adds": "Top-1 accuracy vs computation (cf. paper Figure 4)",
             "params": "Top-1 accuracy vs model size (cf. paper Figure 5)"}[x]
    pub = {source: published.unique_points(source) for source in PUBLISHED_STYLE}
    alphas = sorted({r.alpha for r in results} | {p.alpha for ps in pub.values() for p in ps}, reverse=True)
    colors = {a: f"C{i % 10}" for i, a in enumerate(alphas)}

    fig = Figure(figsize=(10, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    # Published points first, so the runs draw on top of them.
    for source in PUBLISHED_STYLE:
        _plot_published(ax, source, pub[source], colors, x)
    _plot_runs(ax, results, colors, x)
    fronts = _plot_frontiers(ax, results, x)
    _figure_legend(ax, results, alphas, colors, fronts)
    datasets = ", ".join(sorted({r.dataset or "?" for r in results}))
    ax.set_title(f"{title}\nruns: best val top-1 on {datasets}; labels: input resolution", fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    return fig


def latency_figure(results: list[Result], latency: dict[tuple, Latency]):
    """Top-1 against batch-1 latency: per alpha, one line through the resolutions for each of eager
    fp32 (dotted, hollow), the fastest fp32 export (solid) and the fastest int8 export (dashed)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(10, 6.2), layout="constrained")
    ax = fig.subplots()
    ax.set_xscale("log")
    alphas = sorted({r.alpha for r in results}, reverse=True)
    colors = {a: f"C{i % 10}" for i, a in enumerate(alphas)}
    styles = {"latency_eager_ms": (":", "white"), "latency_fp32_ms": ("-", None), "latency_int8_ms": ("--", None)}
    matched = [r for r in results if r.key() in latency and not r.quantized]
    groups: dict[tuple, list[Result]] = {}
    for r in matched:
        groups.setdefault((r.dataset or "?", r.variant, r.alpha), []).append(r)
    for (_, _, alpha), rs in groups.items():
        for column, (linestyle, face) in styles.items():
            pts = sorted((v, r.top1, r.resolution) for r in rs
                         if (v := _latency_columns(latency[r.key()]).get(column)) is not None)
            if not pts:
                continue
            xs, ys, res = zip(*pts)
            ax.plot(xs, ys, linestyle=linestyle, marker="o", color=colors[alpha], markerfacecolor=face or colors[alpha],
                    gid=column)
            if column == "latency_fp32_ms":
                for xv, yv, rv in pts:
                    ax.annotate(str(rv), (xv, yv), textcoords="offset points", xytext=(5, 5), fontsize=8,
                                color=colors[alpha])
    shown = _plot_quantized(ax, [r for r in results if r.key() in latency and r.quantized], latency, colors)
    entries = [(Line2D([], [], color=colors[a], linewidth=4), f"α = {a}") for a in alphas]
    entries += [(Line2D([], [], color="0.3", linestyle=":", marker="o", markerfacecolor="white"), "eager PyTorch fp32"),
                (Line2D([], [], color="0.3", linestyle="-", marker="o"), "fastest fp32 export"),
                (Line2D([], [], color="0.3", linestyle="--", marker="o"), "fastest int8 export (fp32 top-1)")]
    entries += [(Line2D([], [], color="0.3", linestyle="none", marker=QUANTIZED_MARKERS.get(q, "P"), markersize=9),
                 f"{q} file's own top-1") for q in shown]
    ax.legend(*zip(*entries), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    cpus = ", ".join(sorted({lat.cpu for lat in latency.values()}))
    ax.set_title(f"Top-1 accuracy vs measured latency (batch 1, {LATENCY_THREADS} thread, {cpus})\n"
                 f"top-1: the fp32 model's; labels: input resolution", fontsize=11)
    ax.set_xlabel("latency per image (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    return fig


QUANTIZED_MARKERS = {"int8-ptq": "X", "int8-qat": "*", "uint8-google": "P"}


def _plot_quantized(ax, results: list[Result], latency: dict[tuple, Latency], colors: dict) -> list[str]:
    """Scored int8 files (eval.json of mobilenet-eval FILE): their own top-1 at the int8 latency of
    their architecture, one marker per kind (PTQ, QAT, Google's); returns the kinds shown."""
    kinds = []
    for r in results:
        x = latency[r.key()].int8_ms
        if x is None:
            continue
        ax.plot([x], [r.top1], linestyle="none", marker=QUANTIZED_MARKERS.get(r.quantization, "P"), markersize=11,
                color=colors.get(r.alpha, "0.3"), markeredgecolor="black", gid=f"quantized:{r.quantization}")
        kinds += [r.quantization] if r.quantization not in kinds else []
    return kinds


def save_png(fig, path: Path) -> None:
    atomic_write_bytes(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


# ----------------------------------------------------------------------------- TensorBoard


def write_tensorboard(results: list[Result], tb_dir: Path) -> None:
    """One TensorBoard run per result (its epoch scalars and hparams), all in `tb_dir`, so the
    Scalars and HParams tabs compare the whole sweep. Built aside, then swapped in."""
    from torch.utils.tensorboard import SummaryWriter

    if tb_dir.exists() and any(tb_dir.iterdir()) and not (tb_dir / TB_MARKER).exists():
        raise UserError(f"tb={tb_dir} exists and was not written by {PROG}: choose a new or empty directory")
    tmp = tb_dir.with_name(f".{tb_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for r in results:
            with SummaryWriter(str(tmp / r.name)) as w:
                for m in r.history:
                    step = int(m.get("step") or m.get("epoch") or 0)
                    for key, value in m.items():
                        if _number(value) and (key.startswith(("val_", "train_")) or key in ("images_per_sec", "lr")):
                            group, _, metric = (key.partition("_") if key.startswith(("val_", "train_"))
                                                else ("epoch", "", key))
                            w.add_scalar(f"{group}/{metric}", value, step)
                w.add_hparams({"alpha": r.alpha, "resolution": r.resolution, "variant": r.variant,
                               "mult_adds": r.mult_adds, "params": r.params, "dataset": r.dataset or "?",
                               "source": r.source},
                              {"hparam/top1": r.top1, "hparam/top5": r.top5 if _number(r.top5) else float("nan")},
                              run_name=".")
        (tmp / TB_MARKER).write_text(f"written by {PROG}; replaced by its next run\n")
        if tb_dir.exists():
            shutil.rmtree(tb_dir)
        tmp.rename(tb_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI


def detection_rows(paths: list[str]) -> list[dict]:
    """The task=detection runs and eval.json files under `paths` (the detection table's rows)."""
    found = []
    for text in paths:
        given = Path(text)
        try:
            candidates = _candidates(given) if given.exists() else []
        except Skip:
            continue
        for kind, target in candidates:
            if is_detection(kind, target):
                row = detection_row(kind, target, _name(target, given))
                found += [row] if row else []
    return found


def write_report(paths: list[str], out: Path, tb: Path | None = None) -> tuple[list[dict], list[str]]:
    results, skipped = find_results(paths)
    latency, latency_skipped = find_latency(paths)
    skipped += latency_skipped
    detections = detection_rows(paths)
    if not results and detections:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.md", "# MobileNet v1 detection\n\n" + "\n".join(
            detection_section(detections)))
        return [], skipped
    if not results:
        reasons = "; ".join(skipped) or "nothing given"
        raise UserError(f"no runs to report ({reasons})")
    table = rows(results, latency)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, skipped, paths, latency)
    if detections:
        text += "\n" + "\n".join(detection_section(detections))
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.csv", to_csv(table))
    save_png(figure(results, "mult_adds"), out / "accuracy_vs_mult_adds.png")
    save_png(figure(results, "params"), out / "accuracy_vs_params.png")
    if latency:
        save_png(latency_figure(results, latency), out / LATENCY_OUTPUT)
    if tb is not None:
        write_tensorboard(results, tb)
    return table, skipped


if __name__ == "__main__":  # python -m mobilenet_train.report: the same as mobilenet-report
    from .cli.report import main

    main()
