"""mobilenet-report's detection table: task=detection runs (metrics.jsonl with val_map) and their
mobilenet-eval results (eval.json with "task": "detection") beside the paper's Table 13."""

from __future__ import annotations

import json
from pathlib import Path

from .. import published


def is_detection(kind: str, target: Path) -> bool:
    """Whether a report candidate (("train", run dir) or ("eval", eval.json)) is a detection result."""
    try:
        if kind == "eval":
            return json.loads(target.read_text(errors="replace")).get("task") == "detection"
        path = target / "metrics.jsonl"
        first = json.loads(path.read_text(errors="replace").splitlines()[0]) if path.is_file() else {}
        # task=multilabel runs log a val_map too; they name their task, detection runs may not
        return first.get("task", "detection" if "val_map" in first else None) == "detection"
    except (OSError, json.JSONDecodeError, AttributeError, IndexError):
        return False


def detection_row(kind: str, target: Path, name: str) -> dict | None:
    """One table row: the best epoch by val mAP of a run, or an eval.json."""
    if kind == "eval":
        r = json.loads(target.read_text(errors="replace"))
        metrics = {k: r.get(k) for k in ("map", "map_50", "map_small", "map_medium", "map_large")}
        return {"name": name, "source": "eval", "alpha": r["alpha"], "resolution": r["resolution"],
                "head": r.get("head"), "dataset": r.get("dataset"), "mult_adds": r["mult_adds"], "params": r["params"],
                "epoch": r.get("epoch"), **metrics}
    lines = [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [m for m in lines if isinstance(m.get("val_map"), (int, float))]
    if not val:
        return None
    best = max(val, key=lambda m: m["val_map"])
    return {"name": name, "source": "train", "alpha": best["alpha"], "resolution": best["resolution"], "head": None,
            "dataset": best.get("dataset"), "mult_adds": best["mult_adds"], "params": best["params"],
            "epoch": best["epoch"], **{k: best.get(f"val_{k}") for k in ("map", "map_50", "map_small", "map_medium",
                                                                           "map_large")}}


def _pct(x) -> str:
    return "n/a" if x is None or x < 0 else f"{x:.1f}"


def detection_section(rows: list[dict]) -> list[str]:
    """Markdown: our detectors, then Table 13's rows."""
    ref = published.table13()
    out = ["## Detection (paper section 4.6, Table 13)", "",
           "mAP in percent with pycocotools' COCOeval on each run's own val split (mAP@[.5:.95], mAP@.5, AP of "
           "small / medium / large objects; n/a: no objects of that size); a training run shows its best epoch by "
           "val mAP. Mult-adds: conv multiply-accumulates of one image up to the box decoding; params: all "
           "parameters (the paper counts conv weights: `mobilenet-info task=detection`). The paper's numbers are "
           "COCO test-dev.", "",
           "| run | data | alpha | res | mult-adds (B) | params (M) | mAP | mAP@.5 | AP S / M / L | epoch |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} ({r['source']}) | {r['dataset']} | {r['alpha']} | {r['resolution']} | "
                   f"{r['mult_adds'] / 1e9:.3f} | {r['params'] / 1e6:.2f} | {_pct(r['map'])} | {_pct(r['map_50'])} | "
                   f"{_pct(r['map_small'])} / {_pct(r['map_medium'])} / {_pct(r['map_large'])} | {r['epoch']} |")
    for p in ref["rows"]:
        side = p["framework"].split()[-1]  # SSD 300, Faster-RCNN 300 / 600: the input size
        out.append(f"| paper: {p['framework']} {p['model']} | COCO | | {side} | {p['mult_adds_b']} | {p['params_m']} | "
                   f"{p['map']} | | | |")
    return out + [""]
