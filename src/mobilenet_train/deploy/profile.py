"""`mobilenet-bench profile`: where an exported ONNX model's time goes, per operator type, in ONNX
Runtime (its own profiler, run by onnx.py; the first runs are warm-up and not counted)."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..errors import UserError
from . import formats

WARMUP = 5
USAGE = ("profile takes one exported .onnx file (mobilenet-export CKPT --format onnx), e.g. "
         "mobilenet-bench profile best.onnx threads=1")


def check_file(path: str) -> Path:
    if not path.endswith(".onnx") or not Path(path).is_file():
        raise UserError(USAGE)
    return Path(path)


def onnx_profile(path: Path, threads: int = 1, runs: int = 50, batch: int = 1) -> dict:
    """Per operator type: ms per run and share of the node time; the convs also by kind."""
    events = formats.load("onnx").profile_events(path, threads, WARMUP + runs, batch)
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs_seen[WARMUP]["ts"] if len(runs_seen) > WARMUP else 0
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
             and e["ts"] >= start]
    by_op: dict[str, list] = {}
    for e in nodes:
        op = e.get("args", {}).get("op_name", "?")
        by_op.setdefault(op, [0.0, 0])
        by_op[op][0] += e["dur"] / 1e3
        by_op[op][1] += 1
    total = sum(v[0] for v in by_op.values()) or 1.0
    wall = [e["dur"] / 1e3 for e in runs_seen[WARMUP:]]
    ops = sorted(({"op": op, "ms_per_run": ms / runs, "share": ms / total, "nodes_per_run": n / runs}
                  for op, (ms, n) in by_op.items()), key=lambda r: -r["ms_per_run"])
    kinds = _conv_kinds(nodes, runs)
    return {"model": str(path), "threads": threads, "batch": batch, "runs": runs,
            "run_median_ms": statistics.median(wall) if wall else None, "ops": ops,
            "conv_kinds": [{"kind": k, "ms_per_run": v, "share": v * runs / total} for k, v in kinds.items()]}


def _conv_kinds(nodes: list[dict], runs: int) -> dict[str, float]:
    """MobileNet v1's convs run in order stem, then (depthwise, pointwise) x 13: split the conv time so."""
    convs = sorted((e for e in nodes if "Conv" in e.get("args", {}).get("op_name", "")), key=lambda e: e["ts"])
    per_run = len(convs) // runs if runs else 0
    kinds: dict[str, float] = {}
    if per_run and per_run % 2 == 1:
        for i, e in enumerate(convs):
            k = i % per_run
            kind = "stem 3x3 conv" if k == 0 else ("depthwise 3x3" if k % 2 else "pointwise 1x1")
            kinds[kind] = kinds.get(kind, 0.0) + e["dur"] / 1e3 / runs
    return kinds
