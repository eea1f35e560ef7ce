"""The loop: `train_one_epoch` (forward/backward, optimizer step, log window) and `evaluate`.

Per-step work stays on the device: losses and correct counts accumulate in device tensors
and are read (one host sync) only every `trainer.log_every_steps` optimizer steps, where
the NaN/inf check also happens, on sums taken over all ranks so that every rank decides alike.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.utils import accuracy
from torch import nn
from tqdm import tqdm

from .. import distributed, finetune
from ..data import DevicePreprocess
from ..errors import TrainingDiverged, UserError
from ..preemption import StopRequest
from .setup import TrainParts, autocast

# Distributed runs compare stop flags (a signal on any rank) every this many optimizer steps.
STOP_SYNC_EVERY = 10


@torch.no_grad()
def evaluate(model: nn.Module, loader, prep: DevicePreprocess, amp: torch.dtype | None = None,
             desc: str = "eval", progress: bool = False) -> dict:
    """Loss, top-1 and top-5 (percent) over the whole loader, summed across ranks."""
    model.eval()
    device = prep.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5 (summed), count
    count = 0
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        x = prep(images)
        y = targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        n = y.shape[0]
        count += n
        top1, top5 = accuracy(logits, y, topk=(1, 5))  # percent of this batch
        sums[:3] += torch.stack([F.cross_entropy(logits, y, reduction="sum").double(),
                                 top1.double() * n / 100, top5.double() * n / 100])
    sums[3] = count
    distributed.all_reduce_sum(sums)
    elapsed = time.perf_counter() - start
    loss, c1, c5, count = sums.tolist()
    if count == 0:
        raise UserError("the evaluation split holds no images")
    return {"loss": loss / count, "top1": 100 * c1 / count, "top5": 100 * c5 / count,
            "num_images": int(round(count)), "images_per_sec": count / elapsed}


@dataclass
class TrainState:
    epoch: int = 0           # epochs completed; the epoch being trained is `epoch` (0-based)
    step: int = 0            # optimizer steps taken
    batches_done: int = 0    # micro-batches of the current epoch already trained (mid-epoch resume)
    best_val_top1: float = -1.0
    best_epoch: int = 0


class Meter:
    """Device-side sums of (loss x n, correct, n) for the log window and the epoch, and host timers."""

    def __init__(self, device: torch.device, epoch_sums: torch.Tensor | None = None):
        self.epoch_sums = epoch_sums if epoch_sums is not None else torch.zeros(3, dtype=torch.float64, device=device)
        self.window = torch.zeros(3, dtype=torch.float64, device=device)
        self.epoch_start = self.window_start = time.perf_counter()
        self.epoch_wait = self.window_wait = 0.0
        self.epoch_images = self.window_images = 0

    def waited(self, seconds: float) -> None:
        self.epoch_wait += seconds
        self.window_wait += seconds

    def add(self, loss: torch.Tensor, correct: torch.Tensor | None, n: int) -> None:
        """A micro-batch's loss, its correct count (a device tensor; None: detection, no accuracy) and images."""
        if correct is None:
            correct = loss.new_zeros((), dtype=torch.float64)
        # new_full is a fill kernel on the device; torch.tensor(n, device=...) would be a blocking copy.
        stats = torch.stack([loss.detach().double() * n, correct, loss.new_full((), float(n), dtype=torch.float64)])
        self.window += stats
        self.epoch_sums += stats
        self.window_images += n
        self.epoch_images += n

    def take_window(self) -> tuple[list[float], float, float, int]:
        """((loss x n, correct, n) over all ranks, seconds, data-wait seconds, this rank's images) of
        the window, which starts again. The `.tolist()` is the one host sync of the interval."""
        sums = distributed.all_reduce_sum(self.window).tolist()
        out = (sums, time.perf_counter() - self.window_start, self.window_wait, self.window_images)
        self.window.zero_()
        self.window_start, self.window_wait, self.window_images = time.perf_counter(), 0.0, 0
        return out


def check_finite(loss_sum: float, count: float, where: str) -> None:
    """Stop on a NaN/inf loss; given sums over all ranks, every rank stops at the same step."""
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"the training loss became {loss_sum / max(count, 1)} {where}; stopped without "
                               f"writing a checkpoint. Lower optim.lr, set trainer.grad_clip, or use trainer.amp=none")


def check_exploding(parts: TrainParts, loss: float, max_ratio: float, where: str) -> None:
    """Stop when the loss grew past `max_ratio` times this process's first logged loss: a run that
    explodes can stay finite for epochs (its weights huge, its BN statistics inf) and learn nothing."""
    if parts.first_loss is None:
        parts.first_loss = loss
        return
    if max_ratio > 0 and loss > max_ratio * max(parts.first_loss, 1e-12):
        raise TrainingDiverged(f"the training loss exploded to {loss:.4g} {where}, more than "
                               f"trainer.max_loss_ratio={max_ratio:g} times its first logged value "
                               f"{parts.first_loss:.4g}; stopped without writing a checkpoint. Lower optim.lr or "
                               f"set trainer.grad_clip (or raise trainer.max_loss_ratio)")


def train_one_epoch(parts: TrainParts, loader, state: TrainState, tcfg, epoch_desc: str, logger=None,
                    progress: bool = False, dist_info: distributed.DistInfo | None = None,
                    after_step=None, stop: StopRequest | None = None,
                    epoch_totals: torch.Tensor | None = None) -> dict | None:
    """One pass over `loader` (from `state.batches_done` on); returns the epoch's train metrics.

    Only whole optimizer steps are trained: the micro-batches left over when the epoch does not
    divide by `tcfg.accum_steps` are skipped, so no gradient carries into the next epoch.
    `logger` (a RunLogger) reports each log window; `after_step()` runs after every optimizer
    step (the step checkpoint). Returns None when `stop` was requested (a signal): the loop ends
    after a whole step, with `state` saying exactly where, so a checkpoint resumes at the next
    sample. `epoch_totals` (device float64: loss x n, correct, n) accumulates this rank's epoch
    sums; a resumed epoch passes in the sums saved mid-epoch so its metrics cover the whole epoch.
    """
    if dist_info is None:
        dist_info = distributed.DistInfo()
    _train_mode(parts)
    device, accum = parts.prep.device, int(tcfg.accum_steps)
    log_every = max(1, int(tcfg.log_every_steps))
    planned = (len(loader) + state.batches_done) // accum * accum  # micro-batches of whole steps
    meter = Meter(device, epoch_totals)
    with tqdm(total=planned, initial=state.batches_done, desc=epoch_desc, disable=not progress,
              dynamic_ncols=True, leave=True, unit="batch") as bar:
        end = time.perf_counter()
        for images, targets in itertools.islice(loader, max(planned - state.batches_done, 0)):
            meter.waited(time.perf_counter() - end)
            last_micro = (state.batches_done + 1) % accum == 0
            _forward_backward(parts, images, targets, accum, meter, no_sync=dist_info.enabled and not last_micro)
            state.batches_done += 1
            bar.update(1)
            if last_micro:
                optimizer_step(parts, state, float(tcfg.grad_clip or 0.0))
                if state.step % log_every == 0:
                    _log_window(meter, parts, state, loader, bar, epoch_desc, logger, dist_info.world_size,
                                float(tcfg.max_loss_ratio))
                if after_step is not None:
                    after_step()
                if stop is not None and _stop_now(stop, state.step, dist_info, device):
                    return None
            end = time.perf_counter()
    return _epoch_metrics(meter, parts, loader, dist_info.world_size, epoch_desc)


def _train_mode(parts: TrainParts) -> None:
    parts.train_model.train()
    if parts.frozen_backbone:
        finetune.backbone_eval(parts.model)


def _forward_backward(parts: TrainParts, images, targets, accum: int, meter: Meter, no_sync: bool) -> None:
    p, device = parts, parts.prep.device
    x = p.prep(images)
    correct = None
    if p.forward_loss is not None:  # detection: the model computes its loss from the targets
        y = None
    else:
        y = targets.to(device, non_blocking=True)
        # Random erasing and mixup/cutmix on the device; `target` is soft when mixing (top-1 counts `y`).
        x, target = p.batch_augment(x, y) if p.batch_augment is not None else (x, y)
    # DDP: all-reduce gradients only on the micro-batch that completes the step.
    with p.train_model.no_sync() if no_sync else contextlib.nullcontext():
        with autocast(device, p.amp):
            if y is None:
                loss = p.forward_loss(p.train_model, x, targets)
            else:
                logits = p.train_model(x)
                loss = training_loss(p, logits, x, target)
                correct = p.correct(logits, y)
        p.scaler.scale(loss / accum).backward()
    meter.add(loss, correct, n=x.shape[0])


def training_loss(parts: TrainParts, logits: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The label loss, or with a teacher the distillation loss mixed with it (on the same batch `x`);
    `logits` are an embedding network's outputs for task=embedding."""
    d = parts.distill
    if d is None:
        return parts.loss_fn(logits, target)
    label_loss = None if d.alpha >= 1.0 else parts.loss_fn(logits, target)  # alpha 1: labels unused
    return d.loss(logits, d.teacher_outputs(x), label_loss)


def optimizer_step(parts: TrainParts, state: TrainState, grad_clip: float) -> None:
    """Unscale and clip, step, clear the gradients; then the schedule and the EMA follow the step."""
    p = parts
    if grad_clip > 0:
        p.scaler.unscale_(p.optimizer)
        nn.utils.clip_grad_norm_(p.model.parameters(), grad_clip)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    p.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    p.scheduler.step_update(num_updates=state.step)
    if p.ema is not None:
        p.ema.update(p.model, step=state.step)


def _log_window(meter: Meter, parts: TrainParts, state: TrainState, loader, bar, desc: str, logger,
                world_size: int, max_loss_ratio: float) -> None:
    (loss_sum, correct, count), elapsed, wait, images = meter.take_window()
    check_finite(loss_sum, count, f"at step {state.step} ({desc})")
    check_exploding(parts, loss_sum / count, max_loss_ratio, f"at step {state.step} ({desc})")
    lr = parts.optimizer.param_groups[0]["lr"]
    bad = getattr(loader, "bad_images", 0)  # replaced unreadable images (data.ImageLoader)
    metrics = {"loss": loss_sum / count, "top1": 100 * correct / count, "lr": lr,
               "images_per_sec": images * world_size / elapsed, "data_wait_share": wait / elapsed,
               "bad_images": bad}
    bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{lr:.2e}", img_s=f"{metrics['images_per_sec']:.0f}",
                    data=f"{100 * metrics['data_wait_share']:.0f}%", **({"bad": bad} if bad else {}))
    if logger is not None:
        logger.window(state.step, metrics, desc)


def _epoch_metrics(meter: Meter, parts: TrainParts, loader, world_size: int, desc: str) -> dict:
    totals = distributed.all_reduce_sum(meter.epoch_sums.clone())
    loss_sum, correct, count = totals.tolist()
    check_finite(loss_sum, count, f"in {desc}")
    elapsed = time.perf_counter() - meter.epoch_start
    return {"train_loss": loss_sum / max(count, 1), "train_top1": 100 * correct / max(count, 1),
            "images_per_sec": meter.epoch_images * world_size / elapsed, "data_wait_share": meter.epoch_wait / elapsed,
            "epoch_time_s": elapsed, "lr": parts.optimizer.param_groups[0]["lr"],
            "bad_images": getattr(loader, "bad_images", 0)}


def _stop_now(stop: StopRequest, step: int, dist_info: distributed.DistInfo, device: torch.device) -> bool:
    """Whether to stop after this step. Alone: the flag. Distributed: all ranks must agree, which
    costs an all-reduce and a host sync, so they compare flags every STOP_SYNC_EVERY steps."""
    if not dist_info.enabled:
        return stop.requested
    return step % STOP_SYNC_EVERY == 0 and distributed.any_rank(stop.requested, device)
