"""The training loop: `train_one_epoch`, `evaluate` and `fit`, plain functions around one loop.

Per-step work stays on the device: losses and correct counts accumulate in device tensors
and are read (one host sync) only every `trainer.log_every_steps` optimizer steps, where
the NaN/inf check also happens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3, accuracy
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from . import distributed, finetune
from .checkpoint import atomic_write_text, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .complexity import format_count, measure_complexity
from .data import DataBundle, DevicePreprocess, build_data
from .errors import TrainingDiverged, UserError
from .model import MobileNetV1, ModelArgs, build_model
from .optim import build_optimizer, build_scheduler, scaled_lr
from .preemption import Preempted, StopRequest

log = logging.getLogger("mobilenet_train")
# Distributed runs compare stop flags (a signal on any rank) every this many optimizer steps.
STOP_SYNC_EVERY = 10


# ----------------------------------------------------------------------------- setup helpers


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available here: use trainer.device=cpu (or auto)")
    return device


def autocast_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """None (fp32), bfloat16 or float16; fp16 only on CUDA (it needs a GradScaler)."""
    if amp in (None, "none", False):
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise UserError("trainer.amp=fp16 needs a CUDA device: use trainer.amp=bf16 on CPU")
        return torch.float16
    raise UserError(f"trainer.amp={amp} is unknown: use none, bf16 or fp16")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def progress_enabled(setting) -> bool:
    """trainer.progress / progress: auto (a bar when stderr is a terminal), true or false."""
    if str(setting).lower() in ("auto", "none"):
        return sys.stderr.isatty()
    return str(setting).lower() == "true"


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- evaluation


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


# ----------------------------------------------------------------------------- training


@dataclass
class TrainState:
    epoch: int = 0           # epochs completed; the epoch being trained is `epoch` (0-based)
    step: int = 0            # optimizer steps taken
    batches_done: int = 0    # micro-batches of the current epoch already trained (mid-epoch resume)
    best_val_top1: float = -1.0
    best_epoch: int = 0


@dataclass
class TrainParts:
    """Everything the loop touches, built once by `fit`."""

    model: nn.Module           # the bare model (state dicts, eval, EMA source)
    train_model: nn.Module     # what the loop calls: DDP- and/or compile-wrapped model
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    prep: DevicePreprocess
    amp: torch.dtype | None
    ema: ModelEmaV3 | None
    frozen_backbone: bool = False  # fine-tuning: only the classifier trains


def train_one_epoch(parts: TrainParts, loader, state: TrainState, tcfg, epoch_desc: str,
                    writer: SummaryWriter | None, progress: bool, dist_info: distributed.DistInfo,
                    on_step_checkpoint=None, stop: StopRequest | None = None,
                    epoch_totals: torch.Tensor | None = None) -> dict | None:
    """One pass over `loader` (from `state.batches_done` on); returns the epoch's train metrics.

    Returns None when `stop` was requested (a signal): the loop ends after a whole optimizer
    step, with `state` saying exactly where, so that a checkpoint resumes at the next sample.
    `epoch_totals` (device float64: loss x n, correct, n) accumulates this rank's epoch sums; a
    resumed epoch passes in the sums saved mid-epoch so its train metrics cover the whole epoch.
    """
    p = parts
    p.train_model.train()
    if p.frozen_backbone:
        finetune.backbone_eval(p.model)
    device = p.prep.device
    accum = int(tcfg.accum_steps)
    log_every = max(1, int(tcfg.log_every_steps))
    ckpt_every = int(tcfg.checkpoint_every_steps or 0)
    grad_clip = float(tcfg.grad_clip or 0.0)

    # Device-side sums of (loss * n, correct, n): read only at log steps and at the end.
    epoch_sums = epoch_totals if epoch_totals is not None else torch.zeros(3, dtype=torch.float64, device=device)
    window = torch.zeros(3, dtype=torch.float64, device=device)
    epoch_images = 0
    window_start, window_data, window_images = time.perf_counter(), 0.0, 0
    epoch_start, epoch_data = time.perf_counter(), 0.0
    total_micro = len(loader) + state.batches_done
    bar = tqdm(total=total_micro, initial=state.batches_done, desc=epoch_desc, disable=not progress,
               dynamic_ncols=True, leave=True, unit="batch")
    end = time.perf_counter()
    for images, targets in loader:
        wait = time.perf_counter() - end
        window_data += wait
        epoch_data += wait
        x = p.prep(images)
        y = targets.to(device, non_blocking=True)
        last_micro = (state.batches_done + 1) % accum == 0
        # DDP: all-reduce gradients only on the micro-batch that completes the step.
        sync = contextlib.nullcontext() if last_micro or not dist_info.enabled else p.train_model.no_sync()
        with sync:
            with autocast(device, p.amp):
                logits = p.train_model(x)
                loss = p.loss_fn(logits, y)
            p.scaler.scale(loss / accum).backward()
        n = y.shape[0]
        stats = torch.stack([loss.detach().double() * n, (logits.detach().argmax(1) == y).sum().double(),
                             torch.tensor(float(n), dtype=torch.float64, device=device)])
        window += stats
        epoch_sums += stats
        window_images += n
        epoch_images += n
        state.batches_done += 1
        bar.update(1)

        if last_micro:
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

            if state.step % log_every == 0:
                # The one host sync of the interval.
                loss_sum, correct, count = window.tolist()
                if not math.isfinite(loss_sum):
                    bar.close()
                    raise TrainingDiverged(f"the training loss became {loss_sum / max(count, 1)} at step {state.step} "
                                           f"({epoch_desc}); stopped without writing a checkpoint. Lower optim.lr, "
                                           f"set trainer.grad_clip, or use trainer.amp=none")
                elapsed = time.perf_counter() - window_start
                lr = p.optimizer.param_groups[0]["lr"]
                window_metrics = {"loss": loss_sum / count, "top1": 100 * correct / count, "lr": lr,
                                  "images_per_sec": window_images * dist_info.world_size / elapsed,
                                  "data_wait_share": window_data / elapsed}
                bad = getattr(loader, "bad_images", 0)  # replaced unreadable images (data.ImageLoader)
                window_metrics["bad_images"] = bad
                bar.set_postfix(loss=f"{window_metrics['loss']:.3f}", lr=f"{lr:.2e}",
                                img_s=f"{window_metrics['images_per_sec']:.0f}",
                                data=f"{100 * window_metrics['data_wait_share']:.0f}%", **({"bad": bad} if bad else {}))
                if writer is not None:
                    for k, v in window_metrics.items():
                        writer.add_scalar(f"train/{k}", v, state.step)
                if not progress and dist_info.is_main:
                    log.info("%s step %d: loss %.4f top-1 %.2f%% lr %.3g %.0f img/s data-wait %.0f%%",
                             epoch_desc, state.step, window_metrics["loss"], window_metrics["top1"], lr,
                             window_metrics["images_per_sec"], 100 * window_metrics["data_wait_share"])
                window.zero_()
                window_start, window_data, window_images = time.perf_counter(), 0.0, 0
            if ckpt_every and state.step % ckpt_every == 0 and on_step_checkpoint is not None:
                on_step_checkpoint()
            if stop is not None and _stop_now(stop, state.step, dist_info, device):
                bar.close()
                return None
        end = time.perf_counter()
    bar.close()

    totals = distributed.all_reduce_sum(epoch_sums.clone())
    loss_sum, correct, count = totals.tolist()
    if not math.isfinite(loss_sum):
        raise TrainingDiverged(f"the training loss became {loss_sum / max(count, 1)} in {epoch_desc}; stopped "
                               f"without writing a checkpoint. Lower optim.lr, set trainer.grad_clip, or use trainer.amp=none")
    elapsed = time.perf_counter() - epoch_start
    return {"train_loss": loss_sum / max(count, 1), "train_top1": 100 * correct / max(count, 1),
            "images_per_sec": epoch_images * dist_info.world_size / elapsed, "data_wait_share": epoch_data / elapsed,
            "epoch_time_s": elapsed, "lr": p.optimizer.param_groups[0]["lr"],
            "bad_images": getattr(loader, "bad_images", 0)}


def _stop_now(stop: StopRequest, step: int, dist_info: distributed.DistInfo, device: torch.device) -> bool:
    """Whether to stop after this step. Alone: the flag. Distributed: all ranks must agree, which
    costs an all-reduce and a host sync, so they compare flags every STOP_SYNC_EVERY steps."""
    if not dist_info.enabled:
        return stop.requested
    return step % STOP_SYNC_EVERY == 0 and distributed.any_rank(stop.requested, device)


# ----------------------------------------------------------------------------- fit


def _check_resume_matches(ckpt: dict, args: ModelArgs, cfg: DictConfig, path: Path) -> None:
    stored = {**ModelArgs().to_dict(), **ckpt["model_args"]}  # keys added since count as their defaults
    diffs = [f"model.{k}={stored.get(k)} (config: {v})" for k, v in args.to_dict().items() if stored.get(k) != v]
    stored_optim = ckpt["config"].get("optim", {}).get("name")
    if stored_optim != cfg.optim.name:
        diffs.append(f"optim={stored_optim} (config: {cfg.optim.name})")
    if diffs:
        raise UserError(f"cannot resume from {path}: it was trained with {', '.join(diffs)}; "
                        f"use the same settings, or trainer.resume=none with a new hydra.run.dir")


def _resume_path(tcfg, run_dir: Path) -> Path | None:
    resume = tcfg.resume
    if resume in (None, False, "none", "false", "no"):
        return None
    if resume == "auto":
        path = run_dir / "checkpoints" / "last.pt"
        return path if path.is_file() else None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise UserError(f"trainer.resume={resume}: no such checkpoint file (use auto, none, or a path to last.pt)")
    return path


def _trim_metrics(path: Path, completed_epochs: int) -> None:
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


def fit(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train `cfg` in `run_dir` (resuming if asked); returns the final metrics.

    Raises `Preempted` after writing a checkpoint when SIGUSR1/SIGUSR2/SIGTERM arrives.
    """
    with StopRequest() as stop:
        return _fit(cfg, Path(run_dir), stop)


def _fit(cfg: DictConfig, run_dir: Path, stop: StopRequest) -> dict:
    tcfg = cfg.trainer
    if tcfg.deterministic:
        # Before CUDA starts: cuBLAS is only deterministic with a fixed workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist_info = distributed.init_distributed("cuda" if torch.cuda.is_available() and tcfg.device != "cpu" else "cpu",
                                             timeout_s=int(tcfg.get("dist_timeout_s") or 300))
    if dist_info.enabled:
        # Every rank must work in rank 0's run dir (a Hydra timestamp can differ by a second).
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
    device = resolve_device(tcfg.device, dist_info.local_rank)
    amp = autocast_dtype(tcfg.amp, device)
    progress = progress_enabled(tcfg.progress) and dist_info.is_main
    seed_everything(int(cfg.seed) + dist_info.rank)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if tcfg.get("sync_bn") and dist_info.enabled and device.type != "cuda":
        raise UserError("trainer.sync_bn=true needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel): "
                        "drop it for CPU runs")

    init = finetune.load_init(cfg)  # model.init: its architecture, and below its weights
    model, args = build_model(cfg.model)
    complexity = measure_complexity(model, args.resolution)
    epochs = int(tcfg.epochs)
    if epochs < 1:
        raise UserError(f"trainer.epochs={epochs} must be >= 1")
    accum = int(tcfg.accum_steps)
    if accum < 1:
        raise UserError(f"trainer.accum_steps={accum} must be >= 1")
    ckpt_path = _resume_path(tcfg, run_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    if ckpt is not None:
        if "optimizer" not in ckpt:
            raise UserError(f"cannot resume from {ckpt_path}: it holds weights only (no training state); "
                            f"start from it with +experiment=finetune model.init={ckpt_path}")
        _check_resume_matches(ckpt, args, cfg, ckpt_path)
        if ckpt["epoch"] >= epochs:
            log.info("run already finished: %d of %d epochs done, best val top-1 %.2f%% at epoch %d (%s). "
                     "Nothing to do; set trainer.epochs higher to train longer.", ckpt["epoch"], epochs,
                     ckpt.get("best_val_top1", float("nan")), ckpt.get("best_epoch", 0), run_dir / "checkpoints")
            return {**ckpt.get("metrics", {}), "already_finished": True}

    data: DataBundle = build_data(cfg, args.resolution, dist_info.rank, dist_info.world_size,
                                  pin_memory=device.type == "cuda")
    steps_per_epoch = len(data.train_loader) // accum
    if steps_per_epoch < 1:
        raise UserError(f"one epoch has fewer than trainer.accum_steps={accum} batches: lower it or data.batch_size")

    if init is not None and ckpt is None:  # a resumed run has its own weights
        finetune.load_init_weights(model, init, cfg.model.init)
    if tcfg.get("sync_bn") and dist_info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    global_batch = int(cfg.data.batch_size)
    optimizer = build_optimizer(model, cfg.optim, global_batch)
    scheduler = build_scheduler(optimizer, cfg.sched, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = ModelEmaV3(model, decay=float(tcfg.ema.decay), use_warmup=bool(tcfg.ema.warmup)) if tcfg.ema.enabled else None

    state = TrainState()
    epoch_totals = torch.zeros(3, dtype=torch.float64)  # this rank's (loss x n, correct, n) of the epoch so far
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        # The schedule is a pure function of the config and the step (set just below), so a
        # resumed run follows the current config; the stored scheduler state is informational.
        scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema") is not None:
            ema.load_state_dict(ckpt["ema"])
        state = TrainState(**{k: ckpt[k] for k in asdict(TrainState()) if k in ckpt})
        if ckpt.get("world_size", 1) != dist_info.world_size and state.batches_done:
            raise UserError(f"{ckpt_path} was written mid-epoch by {ckpt.get('world_size')} processes; resume it "
                            f"with the same world size (now {dist_info.world_size}), or from the epoch's start")
        per_rank = ckpt.get("rng_per_rank") or []
        set_rng_state(per_rank[dist_info.rank] if len(per_rank) == dist_info.world_size else ckpt["rng"])
        if state.batches_done and len(ckpt.get("epoch_totals_per_rank") or []) == dist_info.world_size:
            epoch_totals = torch.tensor(ckpt["epoch_totals_per_rank"][dist_info.rank], dtype=torch.float64)
    scheduler.step_update(num_updates=state.step)
    epoch_totals = epoch_totals.to(device)

    # Fine-tuning may train only the classifier at first (after the optimizer has all parameters).
    freeze_epochs = int(tcfg.get("freeze_backbone_epochs") or 0)
    frozen = state.epoch < freeze_epochs
    finetune.set_backbone_frozen(model, frozen)
    train_model = _training_wrapper(model, dist_info, device, bool(tcfg.compile))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.optim.label_smoothing))
    prep = DevicePreprocess(cfg.data.normalization, device, bool(tcfg.channels_last))
    parts = TrainParts(model, train_model, optimizer, scheduler, scaler, loss_fn, prep, amp, ema, frozen)

    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    writer = None
    config = OmegaConf.to_container(cfg, resolve=True)
    # Every metrics line names its model, data and planned length, so a report needs nothing else
    # (mobilenet-report marks a run whose last epoch < epochs_total as still in progress).
    identity = {"alpha": args.alpha, "resolution": args.resolution, "variant": args.variant, **complexity,
                "dataset": cfg.data.name, "epochs_total": epochs}
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is not None:
            _trim_metrics(metrics_path, state.epoch)
        writer = SummaryWriter(str(run_dir / "tb"))
        writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg) + "\n```", 0)
    log.info("MobileNet v1 (%s) alpha=%s resolution=%d: %s params, %s mult-adds; %d classes; device %s%s",
             args.variant, args.alpha, args.resolution, format_count(complexity["params"]),
             format_count(complexity["mult_adds"]), args.num_classes, device,
             f" x {dist_info.world_size} processes" if dist_info.enabled else "")
    log.info("%d train / %d val images, global batch %d (%d accumulation steps), peak lr %.4g, %d steps per epoch, "
             "run dir %s", len(data.train_loader.dataset), len(data.val_loader.dataset), global_batch, accum,
             scaled_lr(cfg.optim, global_batch), steps_per_epoch, run_dir)
    if ckpt is not None:
        log.info("resumed from %s: epoch %d, step %d%s", ckpt_path, state.epoch, state.step,
                 f", {state.batches_done} batches into the epoch" if state.batches_done else "")

    last_metrics: dict = dict(ckpt.get("metrics", {})) if ckpt is not None else {}

    def save(finished_epoch: bool, is_best: bool = False) -> None:
        # Called on every rank: each rank's RNG state goes into the checkpoint (dropout differs per rank).
        per_rank = distributed.gather_objects((rng_state(), epoch_totals.tolist()))
        if not dist_info.is_main:
            return
        payload = {
            "model": model.state_dict(), "model_args": args.to_dict(), "config": config,
            "classes": data.classes, "complexity": complexity, "metrics": last_metrics,
            **asdict(state), "finished": finished_epoch and state.epoch >= epochs,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "rng": per_rank[0][0], "rng_per_rank": [r for r, _ in per_rank], "world_size": dist_info.world_size,
            "epoch_totals_per_rank": [t for _, t in per_rank],
        }
        save_checkpoint(ckpt_dir / "last.pt", payload)
        if is_best:
            save_checkpoint(ckpt_dir / "best.pt", payload)

    try:
        while state.epoch < epochs:
            epoch = state.epoch
            if parts.frozen_backbone and epoch >= freeze_epochs:
                log.info("epoch %d: the backbone trains from now on (trainer.freeze_backbone_epochs=%d)",
                         epoch + 1, freeze_epochs)
                finetune.set_backbone_frozen(model, False)
                parts.frozen_backbone = False
                # DDP registers the trainable parameters when built, so build the wrapper again.
                parts.train_model = _training_wrapper(model, dist_info, device, bool(tcfg.compile))
            data.train_loader.sampler.set_epoch(epoch, start=state.batches_done * data.train_loader.batch_size)
            desc = f"epoch {epoch + 1}/{epochs}"
            train_metrics = train_one_epoch(parts, data.train_loader, state, tcfg, desc, writer, progress, dist_info,
                                            on_step_checkpoint=lambda: save(False), stop=stop,
                                            epoch_totals=epoch_totals)
            if train_metrics is None:  # a stop signal, after a whole step
                save(False)
                distributed.barrier()  # nobody exits before the checkpoint is on disk
                log.info("stopped on %s at epoch %d, step %d (%d batches into the epoch): checkpoint %s",
                         signal.Signals(stop.signum or signal.SIGTERM).name, epoch + 1, state.step,
                         state.batches_done, ckpt_dir / "last.pt")
                raise Preempted(stop.signum or signal.SIGTERM, ckpt_dir / "last.pt", stop.previous)
            state.epoch += 1
            state.batches_done = 0
            epoch_totals.zero_()
            metrics = {"epoch": state.epoch, "step": state.step, **train_metrics}
            do_eval = state.epoch % max(1, int(tcfg.eval_every_epochs)) == 0 or state.epoch == epochs
            if do_eval:
                val = evaluate(model, data.val_loader, prep, amp, desc=f"val {state.epoch}", progress=progress)
                metrics.update({f"val_{k}": v for k, v in val.items() if k != "images_per_sec"})
                if ema is not None:
                    val_ema = evaluate(ema.module, data.val_loader, prep, amp, desc=f"val ema {state.epoch}", progress=progress)
                    metrics.update({f"val_ema_{k}": v for k, v in val_ema.items() if k != "images_per_sec"})
            metrics.update(identity)
            is_best = do_eval and metrics["val_top1"] > state.best_val_top1
            if is_best:
                state.best_val_top1, state.best_epoch = metrics["val_top1"], state.epoch
            metrics["best_val_top1"] = state.best_val_top1
            last_metrics = metrics
            if dist_info.is_main:
                _log_epoch(metrics, writer, metrics_path, desc)
            save(True, is_best)
            if state.epoch < epochs and distributed.any_rank(stop.requested, device):
                distributed.barrier()
                log.info("stopped on a signal after epoch %d: checkpoint %s", state.epoch, ckpt_dir / "last.pt")
                raise Preempted(stop.signum or signal.SIGTERM, ckpt_dir / "last.pt", stop.previous)
        if dist_info.is_main:
            writer.add_hparams(
                {"alpha": args.alpha, "resolution": args.resolution, "variant": args.variant,
                 "mult_adds": complexity["mult_adds"], "params": complexity["params"], "dataset": cfg.data.name,
                 "optimizer": cfg.optim.name, "batch_size": global_batch, "epochs": epochs},
                {"hparam/val_top1": last_metrics.get("val_top1", float("nan")),
                 "hparam/val_top5": last_metrics.get("val_top5", float("nan")),
                 "hparam/best_val_top1": state.best_val_top1},
                run_name=".", global_step=state.step)
            log.info("done: %d epochs, final val top-1 %.2f%%, best %.2f%% (epoch %d); checkpoints in %s",
                     epochs, last_metrics.get("val_top1", float("nan")), state.best_val_top1, state.best_epoch, ckpt_dir)
    finally:
        if writer is not None:
            writer.close()
    return last_metrics


def _training_wrapper(model: nn.Module, dist_info: distributed.DistInfo, device: torch.device,
                      compile_model: bool) -> nn.Module:
    """What the loop calls: the model, DDP-wrapped when distributed, compiled if asked."""
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        train_model = torch.compile(train_model)
    return train_model


def _log_epoch(metrics: dict, writer: SummaryWriter, metrics_path: Path, desc: str) -> None:
    step = metrics["step"]
    for key in ("train_loss", "train_top1", "images_per_sec", "data_wait_share", "lr"):
        writer.add_scalar(f"epoch/{key}", metrics[key], step)
    for key, value in metrics.items():
        if key.startswith("val_") and key != "val_num_images":
            group, _, name = key.rpartition("_")
            writer.add_scalar(f"{group}/{name}", value, step)
    writer.add_scalar("epoch/epoch", metrics["epoch"], step)
    writer.flush()
    with open(metrics_path, "a") as f:
        f.write(json.dumps(metrics) + "\n")
    val = (f", val loss {metrics['val_loss']:.4f} top-1 {metrics['val_top1']:.2f}% top-5 {metrics['val_top5']:.2f}%"
           if "val_top1" in metrics else "")
    ema = f", EMA top-1 {metrics['val_ema_top1']:.2f}%" if "val_ema_top1" in metrics else ""
    log.info("%s: train loss %.4f top-1 %.2f%%%s%s, %.0f img/s, data-wait %.0f%%", desc, metrics["train_loss"],
             metrics["train_top1"], val, ema, metrics["images_per_sec"], 100 * metrics["data_wait_share"])


# ----------------------------------------------------------------------------- eval of a checkpoint


def model_from_checkpoint(ckpt: dict, use_ema: bool = False) -> tuple[MobileNetV1, ModelArgs]:
    args = ModelArgs(**ckpt["model_args"])
    model = MobileNetV1(args)
    state = ckpt["model"]
    if use_ema:
        if not ckpt.get("ema"):
            raise UserError("use_ema=true but this checkpoint has no EMA weights (train with trainer.ema.enabled=true)")
        state = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    model.load_state_dict(state)
    return model, args
