"""What a run reports: TensorBoard and metrics.jsonl (rank 0 only) and console lines.

A write the file system refuses (full, read-only, the run dir deleted) is one StorageError:
a metrics.jsonl line is appended whole or not at all; TensorBoard's last record may be cut,
which its reader skips."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from ..checkpoint import atomic_write_text
from ..errors import StorageError, writing

log = logging.getLogger("mobilenet_train")


# Per task: the score that picks best.pt, its console name, and the final metrics of the HParams summary.
FINAL_SCORES = {
    "classification": ("val_top1", "val top-1", ("val_top1", "val_top5")),
    "detection": ("val_map", "val mAP", ("val_map", "val_map_50")),
    "multilabel": ("val_map", "val mAP", ("val_map", "val_label_accuracy")),
    "embedding": ("val_recall_at_1", "val recall@1", ("val_recall_at_1", "val_roc_auc")),
}


class RunLogger:
    """TensorBoard (`tb/`) and `metrics.jsonl` in the run dir on rank 0; console lines.

    A resumed run first drops the metrics.jsonl lines of epochs its checkpoint does not include.
    """

    def __init__(self, run_dir: Path, cfg: DictConfig, is_main: bool, progress: bool, resumed_epoch: int | None):
        self.metrics_path = run_dir / "metrics.jsonl"
        self.is_main, self.progress = is_main, progress
        self.task = str(cfg.get("task") or "classification")
        # The running accuracy's name: top-1, or the share of known attributes right; none for embeddings.
        self.train_acc = {"classification": "top-1", "multilabel": "label acc"}.get(self.task)
        self.tb_dir = run_dir / "tb"
        self.writer: SummaryWriter | None = None
        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            if resumed_epoch is not None:
                trim_metrics(self.metrics_path, resumed_epoch)
            with writing(self.tb_dir):
                self.writer = SummaryWriter(str(self.tb_dir))
                self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)

    def window(self, step: int, metrics: dict, desc: str) -> None:
        """A log window's train metrics (loss, top1, lr, images_per_sec, data_wait_share, bad_images)."""
        if self.writer is not None:
            with writing(self.tb_dir):  # the writer's thread hands a failed write to the next call
                for k, v in metrics.items():
                    self.writer.add_scalar(f"train/{k}", v, step)
        if not self.progress and self.is_main:
            top1 = f" {self.train_acc} {metrics['top1']:.2f}%" if self.train_acc else ""
            log.info("%s step %d: loss %.4f%s lr %.3g %.0f img/s data-wait %.0f%%", desc, step,
                     metrics["loss"], top1, metrics["lr"], metrics["images_per_sec"], 100 * metrics["data_wait_share"])

    def epoch(self, metrics: dict, desc: str) -> None:
        """An epoch's line of metrics.jsonl, its TensorBoard scalars and its console line."""
        if not self.is_main:
            return
        with writing(self.tb_dir):
            self._epoch_scalars(metrics)
        append_line(self.metrics_path, json.dumps(metrics))
        val = (f", val loss {metrics['val_loss']:.4f} top-1 {metrics['val_top1']:.2f}% top-5 {metrics['val_top5']:.2f}%"
               if "val_top1" in metrics else "")
        if "val_map_50" in metrics:  # task=detection
            val = f", val mAP {metrics['val_map']:.2f}% mAP@.5 {metrics['val_map_50']:.2f}%"
        elif "val_label_accuracy" in metrics:  # task=multilabel
            val = f", val loss {metrics['val_loss']:.4f} mAP {metrics['val_map']:.2f}% label acc " \
                  f"{metrics['val_label_accuracy']:.2f}%"
        elif "val_recall_at_1" in metrics:  # task=embedding
            val = f", val recall@1 {metrics['val_recall_at_1']:.2f}% ROC-AUC {metrics['val_roc_auc']:.4f} " \
                  f"TAR@FAR=1e-3 {metrics['val_tar_at_far_1e-3']:.2f}%"
        ema = f", EMA top-1 {metrics['val_ema_top1']:.2f}%" if "val_ema_top1" in metrics else ""
        top1 = f" {self.train_acc} {metrics['train_top1']:.2f}%" if self.train_acc else ""
        log.info("%s: train loss %.4f%s%s%s, %.0f img/s, data-wait %.0f%%", desc, metrics["train_loss"], top1,
                 val, ema, metrics["images_per_sec"], 100 * metrics["data_wait_share"])

    def _epoch_scalars(self, metrics: dict) -> None:
        step, writer = metrics["step"], self.writer
        for key in ("train_loss", "train_top1", "images_per_sec", "data_wait_share", "lr"):
            writer.add_scalar(f"epoch/{key}", metrics[key], step)
        for key, value in metrics.items():
            if key.startswith("val_") and key != "val_num_images":
                group, _, name = key.rpartition("_")
                writer.add_scalar(f"{group}/{name}", value, step)
        writer.add_scalar("epoch/epoch", metrics["epoch"], step)
        writer.flush()

    def finish(self, hparams: dict, metrics: dict, state, ckpt_dir: Path) -> None:
        """The HParams summary (the run's settings with its final metrics) and the last console line."""
        if not self.is_main:
            return
        # state.best_val_top1 holds the task's score: val top-1, or val mAP for detection.
        score, name, shown = FINAL_SCORES[self.task]
        final = {f"hparam/{k}": metrics.get(k, float("nan")) for k in shown}
        with writing(self.tb_dir):
            self.writer.add_hparams(hparams, {**final, f"hparam/best_{score}": state.best_val_top1}, run_name=".",
                                    global_step=state.step)
        log.info("done: %d epochs, final %s %.2f%%, best %.2f%% (epoch %d); checkpoints in %s", hparams["epochs"],
                 name, metrics.get(score, float("nan")), state.best_val_top1, state.best_epoch, ckpt_dir)

    def close(self, quiet: bool = False) -> None:
        """`quiet`: the run is failing already, so a failed flush only repeats its cause."""
        if self.writer is None:
            return
        try:
            with writing(self.tb_dir):
                self.writer.close()
        except StorageError:
            if not quiet:
                raise


def append_line(path: Path, line: str) -> None:
    """Append one line, flushed to disk; a failed write is cut back so no partial line remains."""
    data = memoryview((line + "\n").encode())
    with writing(path, len(data)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def trim_metrics(path: Path, completed_epochs: int) -> None:
    """Drop metrics.jsonl lines of epochs the resumed checkpoint does not include."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= completed_epochs:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in keep))
