"""The report's tables of task=multilabel and task=embedding results (their own sections of
report.md and their own csv files), beside the paper's Tables 12 (face attributes, section 4.5)
and 14 (face embeddings, section 4.7)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .. import published
from .runs import TASK_COUNTS, TASK_METRICS, TaskResult
from .tables import epoch_text, fmt, millions

TASK_CSV = {"multilabel": "attributes.csv", "embedding": "embeddings.csv"}  # written when such results are found
COMMON_COLUMNS = ["model", "variant", "alpha", "resolution", "name", "source", "dataset", "epoch", "epochs_total",
                  "in_progress"]
DISTILL_COLUMNS = ["teacher", "distill_alpha", "distill_target", "distill_temperature"]


def csv_columns(task: str) -> list[str]:
    return [*COMMON_COLUMNS, *TASK_METRICS[task], "mult_adds", "params", *TASK_COUNTS[task], *DISTILL_COLUMNS, "path"]


def task_rows(results: list[TaskResult], task: str) -> list[dict]:
    """One flat record per result of `task`: what its csv holds and its report.md section shows."""
    out = []
    for r in results:
        if r.task == task:
            row = {k: getattr(r, k) for k in (*COMMON_COLUMNS, "mult_adds", "params", *DISTILL_COLUMNS, "path")}
            out.append({k: row.get(k) for k in csv_columns(task)} | r.metrics | r.counts)
    return out


def task_csv(table: list[dict], task: str) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(task), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    return buf.getvalue()


def _teacher(row: dict) -> str:
    """The teacher's file name (or timm name) with distill.alpha and distill.target; '–' when not distilled."""
    if not row["teacher"]:
        return "–"
    details = [f"α {row['distill_alpha']}" if row["distill_alpha"] is not None else "", row["distill_target"] or ""]
    details = ", ".join(d for d in details if d)
    teacher = str(row["teacher"])
    name = teacher if teacher.startswith("timm:") else Path(teacher).name  # a checkpoint: its file name
    return f"{name} ({details})" if details else name


def _run_cells(row: dict) -> str:
    return (f"| {row['name']} ({row['source']}) | {row['dataset'] or '?'} | {row['alpha']} | {row['resolution']} | "
            f"{millions(row['mult_adds'])} | {millions(row['params'])} |")


def attributes_table(table: list[dict]) -> list[str]:
    """The multi-label runs' markdown table (the section adds Table 12's rows below them)."""
    out = ["| run | data | alpha | resolution | mult-adds (M) | params (M) | mAP | label accuracy | teacher | epoch |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in table:
        out.append(f"{_run_cells(r)} {fmt(r['map'])} | {fmt(r['label_accuracy'])} | {_teacher(r)} | "
                   f"{epoch_text(r)} |")
    return out


def embeddings_table(table: list[dict]) -> list[str]:
    """The embedding runs' markdown table (the section adds Table 14's rows below them)."""
    out = ["| run | data | alpha | resolution | mult-adds (M) | params (M) | recall@1 | ROC-AUC | TAR@FAR=1e-3 | "
           "TAR@FAR=1e-4 | teacher | epoch |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in table:
        out.append(f"{_run_cells(r)} {fmt(r['recall_at_1'])} | {fmt(r['roc_auc'], 4)} | "
                   f"{fmt(r['tar_at_far_1e-3'])} | {fmt(r['tar_at_far_1e-4'])} | {_teacher(r)} | {epoch_text(r)} |")
    return out


def attributes_section(table: list[dict], aps: dict[str, dict]) -> list[str]:
    """Markdown: the multi-label runs, Table 12's rows, then per-attribute AP of the eval.json files."""
    ref = published.table12()
    out = ["## Face attributes (multi-label; paper section 4.5, Table 12)", "",
           "mAP: mean over attributes of the average precision, in percent, on each run's own val split (attributes "
           "without a positive example left out); label accuracy: thresholded at 0.5, percent of the labels "
           "(eval.json only). A training run shows its best epoch by val mAP (the one `best.pt` holds). "
           "Teacher: the distillation teacher (distill.alpha, distill.target), – when trained on labels alone. "
           f"The paper's rows: {ref['about']}.", "",
           *attributes_table(table)]
    for p in ref["rows"]:
        out.append(f"| paper: {p['model']} | – | {p.get('alpha') or ''} | {p.get('resolution') or ''} | "
                   f"{p['mult_adds_m']} | {p['params_m']} | {p['map']} | | {p.get('teacher', '')} | |")
    return out + [""] + _per_attribute(aps)


def _per_attribute(aps: dict[str, dict]) -> list[str]:
    """AP per attribute (rows) of each eval.json that has it (columns), as the paper reports per attribute."""
    if not aps:
        return []
    names = list(aps)
    attributes = list(dict.fromkeys(a for ap in aps.values() for a in ap))
    out = ["Average precision per attribute (percent; n/a: no positive example in the val split):", "",
           "| attribute | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for a in attributes:
        out.append(f"| {a} | " + " | ".join(fmt(aps[n].get(a), 1) if aps[n].get(a) is not None else "n/a"
                                             for n in names) + " |")
    return out + [""]


def embeddings_section(table: list[dict]) -> list[str]:
    """Markdown: the embedding runs, then Table 14's rows."""
    ref = published.table14()
    out = ["## Embeddings (paper section 4.7, Table 14)", "",
           "Retrieval and verification on each run's own val split: recall@1 (percent of the images whose nearest "
           "other image by cosine similarity has the same label); ROC-AUC (0-1) and TAR@FAR (true accept rate in "
           "percent at a false accept rate of 1e-3 and 1e-4) over the same/different pairs; – where there are too "
           "few pairs for that false accept rate. A training run shows its best epoch by val recall@1. "
           f"The paper's rows: {ref['about']}; their number stands in the TAR@FAR=1e-4 column.", "",
           *embeddings_table(table)]
    for p in ref["rows"]:
        out.append(f"| paper: {p['model']} | – | {p.get('alpha') or ''} | {p.get('resolution') or ''} | "
                   f"{p['mult_adds_m']} | {p['params_m']} | | | | {p['accuracy_1e-4']} | {p.get('teacher', '')} | |")
    return out + [""]


def task_sections(results: list[TaskResult]) -> tuple[list[str], dict[str, str]]:
    """report.md's sections of the multi-label and embedding results, and their csv files (name -> text)."""
    lines, files = [], {}
    attributes = task_rows(results, "multilabel")
    if attributes:
        aps = {f"{r.name} ({r.source})": r.ap_per_attribute for r in results if r.task == "multilabel"
               and r.ap_per_attribute}
        lines += attributes_section(attributes, aps)
        files[TASK_CSV["multilabel"]] = task_csv(attributes, "multilabel")
    embeddings = task_rows(results, "embedding")
    if embeddings:
        lines += embeddings_section(embeddings)
        files[TASK_CSV["embedding"]] = task_csv(embeddings, "embedding")
    return lines, files
