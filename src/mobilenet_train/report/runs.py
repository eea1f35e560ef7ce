"""Finding what to report: training runs (metrics.jsonl, or only checkpoints/) and mobilenet-eval
results (eval.json) under the paths given, and mobilenet-bench's latency.json files; read into
Result (classification), TaskResult (task=multilabel / task=embedding) and Latency records.
Detection runs are found here and read by detection/report.py."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..detection.report import is_detection
from ..errors import UserError

LATENCY_FILE = "latency.json"
LATENCY_THREADS = 1  # the table's latency columns: batch 1 on one thread (the most repeatable setting)
SKIP_DIRS = {"tb", ".hydra", "__pycache__"}
VARIANT_NAMES = {"separable": "MobileNet", "conv": "Conv MobileNet", "shallow": "Shallow MobileNet"}
# The tasks with their own table: the metric that picks a run's best epoch (as best.pt), then the
# other metrics reported, each as eval.json names it (metrics.jsonl: the same with a val_ prefix).
TASK_METRICS = {
    "multilabel": ("map", "label_accuracy", "loss"),
    "embedding": ("recall_at_1", "recall_at_5", "roc_auc", "tar_at_far_1e-2", "tar_at_far_1e-3", "tar_at_far_1e-4",
                  "verification_accuracy"),
}
# eval.json counts kept in the task's csv
TASK_COUNTS = {
    "multilabel": ("num_images", "num_attributes"),
    "embedding": ("num_images", "num_pairs_positive", "num_pairs_negative", "embedding_dim"),
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


@dataclass
class TaskResult:
    """A task=multilabel or task=embedding run (its best epoch by TASK_METRICS' first metric) or eval.json."""

    task: str                     # multilabel | embedding
    name: str
    source: str                   # train | eval
    path: str
    variant: str
    alpha: float
    resolution: int
    dataset: str | None
    mult_adds: int
    params: int
    metrics: dict                 # TASK_METRICS[task] -> value (None: not measured)
    epoch: int | None = None
    epochs_total: int | None = None
    in_progress: bool = False
    teacher: str | None = None    # distilled: the teacher (a checkpoint path or a timm name)
    distill_alpha: float | None = None
    distill_target: str | None = None
    distill_temperature: float | None = None
    counts: dict = field(default_factory=dict)          # eval.json: TASK_COUNTS[task]
    ap_per_attribute: dict = field(default_factory=dict)  # multilabel eval.json: attribute -> AP (None: no positive)
    history: list[dict] = field(default_factory=list)

    @property
    def model(self) -> str:
        return VARIANT_NAMES.get(self.variant, self.variant)

    @property
    def score(self) -> float:
        return self.metrics[TASK_METRICS[self.task][0]]


def number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------- training runs


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
        if not isinstance(line, dict) or not number(line.get("epoch")):
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
    return dataset, int(planned) if number(planned) else None


def _checkpoint_history(run_dir: Path) -> list[dict]:
    """A run dir without metrics.jsonl: the metrics stored in its best (or last) checkpoint."""
    from ..checkpoint import load_checkpoint

    for name in ("best.pt", "last.pt"):
        path = run_dir / "checkpoints" / name
        if path.is_file():
            try:
                ckpt = load_checkpoint(path)
            except UserError as e:
                raise Skip(str(e)) from None
            metrics = dict(ckpt.get("metrics") or {})
            task = (ckpt.get("config") or {}).get("task")
            if metrics and task and "task" not in metrics:  # the table it belongs in
                metrics["task"] = task
            return [metrics] if metrics else []
    return []


def run_lines(run_dir: Path, warnings: list[str]) -> list[dict]:
    metrics_path = run_dir / "metrics.jsonl"
    return read_metrics(metrics_path, warnings) if metrics_path.is_file() else _checkpoint_history(run_dir)


def _best(lines: list[dict], metric: str) -> dict:
    """The best epoch by `metric` (the first of equals, as best.pt keeps it); Skip without one."""
    val = [m for m in lines if number(m.get(metric))]
    if not val:
        raise Skip(f"no val metric yet ({len(lines)} epoch(s) logged): nothing to report until its first evaluation")
    best = max(val, key=lambda m: m[metric])
    missing = [k for k in ("alpha", "resolution", "params", "mult_adds") if not number(best.get(k))]
    if missing:
        raise Skip(f"its metrics lack {', '.join(missing)} (written by an older mobilenet-train); "
                   f"evaluate its checkpoint with mobilenet-eval and report the eval.json instead")
    return best


def load_train_run(run_dir: Path, name: str, warnings: list[str], lines: list[dict] | None = None) -> Result:
    lines = run_lines(run_dir, warnings) if lines is None else lines
    best = _best(lines, "val_top1")
    last_epoch = int(max(m["epoch"] for m in lines))
    dataset, planned = _from_hydra_config(run_dir, best)
    return Result(
        name=name, source="train", path=str(run_dir), variant=str(best.get("variant", "separable")),
        alpha=float(best["alpha"]), resolution=int(best["resolution"]), dataset=dataset,
        top1=float(best["val_top1"]), top5=best.get("val_top5"), mult_adds=int(best["mult_adds"]),
        params=int(best["params"]), images_per_sec=best.get("images_per_sec"), epoch=int(best["epoch"]),
        epochs_total=planned, in_progress=planned is not None and last_epoch < planned, history=lines,
    )


def load_task_run(run_dir: Path, name: str, task: str, lines: list[dict]) -> TaskResult:
    """A task=multilabel / task=embedding run at its best epoch by val mAP / val recall@1."""
    best = _best(lines, f"val_{TASK_METRICS[task][0]}")
    last_epoch = int(max(m["epoch"] for m in lines))
    dataset, planned = _from_hydra_config(run_dir, best)
    return TaskResult(
        task=task, name=name, source="train", path=str(run_dir), variant=str(best.get("variant", "separable")),
        alpha=float(best["alpha"]), resolution=int(best["resolution"]), dataset=dataset,
        mult_adds=int(best["mult_adds"]), params=int(best["params"]),
        metrics={k: best.get(f"val_{k}") for k in TASK_METRICS[task]}, epoch=int(best["epoch"]),
        epochs_total=planned, in_progress=planned is not None and last_epoch < planned,
        teacher=best.get("teacher") or None, distill_alpha=best.get("distill_alpha"),
        distill_target=best.get("distill_target"), distill_temperature=best.get("distill_temperature"),
        history=lines,
    )


def task_of(lines_or_eval: list[dict] | dict) -> str:
    """The task a run's metrics lines (or an eval.json) were written for; old runs: classification."""
    records = [lines_or_eval] if isinstance(lines_or_eval, dict) else lines_or_eval
    return next((str(r["task"]) for r in records if r.get("task")), "classification")


def load_run(run_dir: Path, name: str, warnings: list[str]) -> Result | TaskResult:
    lines = run_lines(run_dir, warnings)
    task = task_of(lines)
    if task in TASK_METRICS:
        return load_task_run(run_dir, name, task, lines)
    return load_train_run(run_dir, name, warnings, lines)


# ----------------------------------------------------------------------------- eval.json


def _read_eval(path: Path) -> dict:
    try:
        r = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as e:
        raise Skip(f"not valid JSON ({e.msg})") from None
    if not isinstance(r, dict):
        raise Skip("not a mobilenet-eval result (not a JSON object)")
    return r


def _check_eval(r: dict, required: tuple[str, ...]) -> None:
    missing = [k for k in (*required, "alpha", "resolution", "params", "mult_adds") if not number(r.get(k))]
    if missing:
        raise Skip(f"not a mobilenet-eval result (no {', '.join(missing)})")


def load_eval(path: Path, name: str, r: dict | None = None) -> Result:
    r = _read_eval(path) if r is None else r
    _check_eval(r, ("top1",))
    return Result(
        name=name, source="eval", path=str(path), variant=str(r.get("variant", "separable")), alpha=float(r["alpha"]),
        resolution=int(r["resolution"]), dataset=r.get("dataset"), top1=float(r["top1"]), top5=r.get("top5"),
        mult_adds=int(r["mult_adds"]), params=int(r["params"]), images_per_sec=r.get("images_per_sec"),
        quantization=str(r.get("quantization") or "fp32"), epoch=r.get("epoch"),
        history=[{"epoch": r.get("epoch") or 0, "step": r.get("step") or 0,
                  "val_top1": r["top1"], "val_top5": r.get("top5"), "val_loss": r.get("loss")}],
    )


def load_task_eval(path: Path, name: str, task: str, r: dict) -> TaskResult:
    """mobilenet-eval's eval.json of a task=multilabel / task=embedding checkpoint."""
    _check_eval(r, (TASK_METRICS[task][0],))
    metrics = {k: r.get(k) for k in TASK_METRICS[task]}
    aps = r.get("ap_per_attribute")
    return TaskResult(
        task=task, name=name, source="eval", path=str(path), variant=str(r.get("variant", "separable")),
        alpha=float(r["alpha"]), resolution=int(r["resolution"]), dataset=r.get("dataset"),
        mult_adds=int(r["mult_adds"]), params=int(r["params"]), metrics=metrics, epoch=r.get("epoch"),
        counts={k: r.get(k) for k in TASK_COUNTS[task]}, ap_per_attribute=aps if isinstance(aps, dict) else {},
        history=[{"epoch": r.get("epoch") or 0, "step": r.get("step") or 0,
                  **{f"val_{k}": v for k, v in metrics.items()}}],
    )


def load_any_eval(path: Path, name: str) -> Result | TaskResult:
    r = _read_eval(path)
    task = task_of(r)
    return load_task_eval(path, name, task, r) if task in TASK_METRICS else load_eval(path, name, r)


# ----------------------------------------------------------------------------- walking the paths


def _is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or any((path / "checkpoints").glob("*.pt"))


def candidates(given: Path) -> list[tuple[str, Path]]:
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


def result_name(target: Path, given: Path) -> str:
    if target == given or not target.is_relative_to(given):
        return str(Path(*target.parts[-2:]))  # the run dir itself was given: its last two parts
    return str(target.relative_to(given))


def find_all(paths: list[str]) -> tuple[list[Result], list[TaskResult], list[str]]:
    """Every reportable classification and multilabel/embedding result under `paths` (detection:
    detection_rows), and one message per input skipped."""
    results, task_results, skipped, seen = [], [], [], set()
    for text in paths:
        given = Path(text)
        if not given.exists():
            skipped.append(f"{text}: does not exist")
            continue
        try:
            found = candidates(given)
        except Skip as e:
            skipped.append(f"{text}: {e}")
            continue
        if not found and given.name != LATENCY_FILE:
            skipped.append(f"{text}: no runs under it (no metrics.jsonl, checkpoints/*.pt or eval.json)")
        for kind, target in found:
            if target.resolve() in seen or is_detection(kind, target):  # detection: detection_rows
                continue
            seen.add(target.resolve())
            warnings: list[str] = []
            try:
                name = result_name(target, given)
                r = load_run(target, name, warnings) if kind == "train" else load_any_eval(target, name)
                (task_results if isinstance(r, TaskResult) else results).append(r)
            except Skip as e:
                skipped.append(f"{target}: {e}")
            except OSError as e:
                skipped.append(f"{target}: cannot be read ({e.strerror or e})")
            skipped.extend(warnings)
    order = {v: i for i, v in enumerate(VARIANT_NAMES)}

    def key(r):
        return order.get(r.variant, len(order)), -r.alpha, -r.resolution, r.source, r.name

    return sorted(results, key=key), sorted(task_results, key=key), skipped


def find_results(paths: list[str]) -> tuple[list[Result], list[str]]:
    """Every reportable classification result under `paths`, and one message per input skipped."""
    results, _, skipped = find_all(paths)
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
        rs = [r for r in m.get("results", []) if r.get("batch") == 1 and number(r.get("median_ms"))]
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
