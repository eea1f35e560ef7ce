"""`mobilenet-report RUN_OR_DIR ... [out=DIR] [tb=DIR] [--tensorboard]`: the paper's Tables 6/7
and Figures 4/5 for your own runs, with the published numbers beside them.

Finds every training run (a dir with metrics.jsonl, or only checkpoints/) and every
mobilenet-eval result (eval.json) under the given paths and writes, each file atomically:

    report.md                   the table (like the paper's Tables 6/7), skipped inputs, sources
    report.csv                  the same rows, full precision
    accuracy_vs_mult_adds.png   Figure 4: top-1 against mult-adds (log x), one line per alpha
    accuracy_vs_params.png      Figure 5: top-1 against parameters (log x)
    accuracy_vs_latency.png     top-1 against measured batch-1 latency, when latency.json files are found
    attributes.csv              task=multilabel results, when found (report.md: beside Table 12)
    embeddings.csv              task=embedding results, when found (report.md: beside Table 14)

`mobilenet-bench latency` writes latency.json; every one found under the given paths adds latency
columns to the runs of the same architecture (variant, alpha, resolution: latency does not depend
on the weights) and a latency section to report.md. Columns: batch 1, 1 thread, median ms.

A training run reports its best epoch by val top-1 (the one best.pt holds; multi-label: val mAP,
embedding: val recall@1); a run that has not reached its planned epochs is marked as in progress.
Bad input (a dir without runs, a corrupt metrics.jsonl line, a run without a val metric yet) is
reported and skipped, never fatal.

Modules: runs (finding and reading runs, eval.json and latency.json), tables (classification rows,
report.md, report.csv), tasks (the multi-label and embedding tables), figures (matplotlib),
tensorboard (tb=DIR); this one writes them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import atomic_write_text
from ..detection.report import detection_row, detection_section, is_detection
from ..errors import UserError
from .figures import (
    PUBLISHED_STYLE,
    QUANTIZED_MARKERS,
    VARIANT_MARKERS,
    figure,
    latency_figure,
    save_png,
)
from .runs import (
    LATENCY_FILE,
    LATENCY_THREADS,
    SKIP_DIRS,
    TASK_METRICS,
    VARIANT_NAMES,
    Latency,
    Result,
    Skip,
    TaskResult,
    candidates,
    find_all,
    find_latency,
    find_results,
    load_eval,
    load_latency,
    load_run,
    load_train_run,
    read_metrics,
    result_name,
)
from .tables import (
    CSV_COLUMNS,
    LATENCY_OUTPUT,
    OUTPUTS,
    PROG,
    frontier,
    latency_section,
    markdown,
    pareto,
    published_table,
    results_table,
    rows,
    to_csv,
)
from .tasks import TASK_CSV, attributes_table, embeddings_table, task_rows, task_sections
from .tensorboard import TB_MARKER, write_tensorboard

__all__ = [
    "CSV_COLUMNS", "LATENCY_FILE", "LATENCY_OUTPUT", "LATENCY_THREADS", "OUTPUTS", "PROG", "PUBLISHED_STYLE",
    "QUANTIZED_MARKERS", "SKIP_DIRS", "TASK_CSV", "TASK_METRICS", "TB_MARKER", "VARIANT_MARKERS", "VARIANT_NAMES",
    "Latency", "Report", "Result", "Skip", "TaskResult", "attributes_table", "detection_rows", "embeddings_table",
    "figure", "find_all", "find_latency", "find_results", "frontier", "latency_figure", "latency_section",
    "load_eval", "load_latency", "load_run", "load_train_run", "make_report", "markdown", "pareto",
    "published_table", "read_metrics", "results_table", "rows", "save_png", "task_rows", "to_csv", "write_report",
    "write_tensorboard",
]
TASK_TITLES = {"multilabel": "face attributes", "embedding": "embeddings"}


def detection_rows(paths: list[str]) -> list[dict]:
    """The task=detection runs and eval.json files under `paths` (the detection table's rows)."""
    found = []
    for text in paths:
        given = Path(text)
        try:
            targets = candidates(given) if given.exists() else []
        except Skip:
            continue
        for kind, target in targets:
            if is_detection(kind, target):
                row = detection_row(kind, target, result_name(target, given))
                found += [row] if row else []
    return found


@dataclass
class Report:
    """What make_report found and wrote."""

    table: list[dict]                                   # the classification rows (report.csv)
    task_tables: dict[str, list[dict]]                  # multilabel / embedding -> their rows (TASK_CSV)
    detections: list[dict]
    skipped: list[str]
    written: list[Path] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.table) + sum(map(len, self.task_tables.values())) + len(self.detections)


def _title(task_results: list[TaskResult], detections: list[dict]) -> str:
    """report.md's title without classification runs: what it holds."""
    parts = [title for task, title in TASK_TITLES.items() if any(r.task == task for r in task_results)]
    return "# MobileNet v1 " + " and ".join(parts + (["detection"] if detections else []))


def make_report(paths: list[str], out: Path, tb: Path | None = None) -> Report:
    """Find every result under `paths` and write report.md, the csv files, the figures and `tb`."""
    results, task_results, skipped = find_all(paths)
    latency, latency_skipped = find_latency(paths)
    skipped += latency_skipped
    detections = detection_rows(paths)
    if not (results or task_results or detections):
        reasons = "; ".join(skipped) or "nothing given"
        raise UserError(f"no runs to report ({reasons})")
    sections, task_files = task_sections(task_results)
    sections += detection_section(detections) if detections else []
    report = Report(rows(results, latency) if results else [],
                    {task: task_rows(task_results, task) for task in TASK_METRICS}, detections, skipped)
    out.mkdir(parents=True, exist_ok=True)
    if results:
        text = markdown(report.table, skipped, paths, latency) + ("\n" + "\n".join(sections) if sections else "")
    else:  # no classification runs: their sections only
        text = _title(task_results, detections) + "\n\n" + "\n".join(sections)
        text += "\n".join(["## Skipped", "", *[f"- {s}" for s in skipped], ""]) if skipped else ""
    files = {"report.md": text, **({"report.csv": to_csv(report.table)} if results else {}), **task_files}
    for name, content in files.items():
        atomic_write_text(out / name, content)
        report.written.append(out / name)
    if results:
        figures = {OUTPUTS[2]: figure(results, "mult_adds"), OUTPUTS[3]: figure(results, "params"),
                   **({LATENCY_OUTPUT: latency_figure(results, latency)} if latency else {})}
        for name, fig in figures.items():
            save_png(fig, out / name)
            report.written.append(out / name)
    if tb is not None and (results or task_results):
        write_tensorboard(results + task_results, tb)
        report.written.append(tb)
    return report


def write_report(paths: list[str], out: Path, tb: Path | None = None) -> tuple[list[dict], list[str]]:
    """make_report's classification rows and skipped inputs."""
    report = make_report(paths, out, tb)
    return report.table, report.skipped
