"""Before the loop: this process (device, distributed group, seeds, determinism) and the
`TrainParts` the loop touches (model, optimizer, scheduler, scaler, EMA, ...)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from timm.utils import ModelEmaV3
from torch import nn

from .. import distributed, finetune
from ..data import DevicePreprocess
from ..data.mixing import build_batch_augment, mixing_active
from ..detection.train import detection_loss
from ..errors import UserError
from ..optim import build_optimizer, build_scheduler
from .tasks import MaskedBCE, correct_count


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


# ----------------------------------------------------------------------------- this process


@dataclass(frozen=True)
class TrainContext:
    """Where and how this process trains."""

    dist_info: distributed.DistInfo
    run_dir: Path        # rank 0's run dir, on every rank
    device: torch.device
    amp: torch.dtype | None
    progress: bool       # a progress bar (rank 0 only)


def start_process(cfg: DictConfig, run_dir: Path) -> TrainContext:
    """Join the process group (if launched as several), pick the device, seed, set determinism."""
    tcfg = cfg.trainer
    if tcfg.deterministic:
        # Before CUDA starts: cuBLAS is only deterministic with a fixed workspace.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    dist_info = distributed.init_distributed("cuda" if torch.cuda.is_available() and tcfg.device != "cpu" else "cpu",
                                             timeout_s=int(tcfg.dist_timeout_s))
    if dist_info.enabled:
        # Every rank must work in rank 0's run dir (a Hydra timestamp can differ by a second).
        run_dir = Path(distributed.broadcast_object(str(run_dir)))
    device = resolve_device(tcfg.device, dist_info.local_rank)
    amp = autocast_dtype(tcfg.amp, device)
    progress = progress_enabled(tcfg.progress) and dist_info.is_main
    seed_everything(int(cfg.seed) + dist_info.rank)
    _set_determinism(bool(tcfg.deterministic), device)
    return TrainContext(dist_info, run_dir, device, amp, progress)


def _set_determinism(deterministic: bool, device: torch.device) -> None:
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


# ----------------------------------------------------------------------------- the parts


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
    distill: Any = None            # a distill.Distiller when distill.teacher is set
    batch_augment: Any = None      # data.mixing.BatchAugment: random erasing, mixup/cutmix on the device
    forward_loss: Callable | None = None  # task=detection: (train_model, x, targets) -> loss, the model's own
    # (outputs, targets) -> the batch's correct count on the device (tasks.correct_count of the task)
    correct: Callable = field(default_factory=lambda: correct_count("classification"))
    first_loss: float | None = None  # this process's first log window's loss: the exploding-loss reference


def _qat_model(cfg: DictConfig, model: nn.Module, weights: dict | None, init: dict | None, step: int) -> nn.Module:
    """QAT: the float model (model.init's weights) captured and prepared, then a resumed run's state
    and the freezing due at `step`."""
    from .. import qat

    if init is not None:  # a float one (finetune.load_init refuses QAT checkpoints)
        finetune.load_init_weights(model, init, cfg.model.init)
    model = qat.prepare(model, cfg.qat)
    if weights is not None:
        model.load_state_dict(weights)
    qat.apply_freezing(model, step, cfg.qat)
    return model


def build_parts(cfg: DictConfig, ctx: TrainContext, model: nn.Module, weights: dict | None, init: dict | None,
                epoch: int, epochs: int, steps_per_epoch: int, distill=None, step: int = 0,
                classes: list[str] | None = None) -> TrainParts:
    """The parts for training `model` from `weights` (a resumed run's), else from `init` (model.init;
    `classes`: the data's, for a detector init's class rows).

    The weights go in before anything copies the model: the EMA starts from them. `distill`: the
    teacher and its loss (engine/distill.py), or None.
    """
    tcfg, device = cfg.trainer, ctx.device
    if cfg.qat.enabled:
        model = _qat_model(cfg, model, weights, init, step)
    elif weights is not None:
        model.load_state_dict(weights)
    elif init is not None:
        finetune.load_init_weights(model, init, cfg.model.init, classes)
    if tcfg.sync_bn and ctx.dist_info.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optim, int(cfg.data.batch_size))
    scheduler = build_scheduler(optimizer, cfg.sched, epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.amp == torch.float16)
    ema = ModelEmaV3(model, decay=float(tcfg.ema.decay), use_warmup=bool(tcfg.ema.warmup)) if tcfg.ema.enabled else None
    # Fine-tuning may train only the classifier at first (after the optimizer has all parameters).
    frozen = epoch < int(tcfg.freeze_backbone_epochs)
    if not cfg.qat.enabled:  # QAT refuses freeze_backbone_epochs (config schema): no module tree to freeze
        finetune.set_backbone_frozen(model, frozen)
    train_model = training_wrapper(model, ctx.dist_info, device, bool(tcfg.compile), str(tcfg.compile_mode))
    loss_fn = MaskedBCE(float(cfg.optim.label_smoothing)) if cfg.task == "multilabel" else build_loss(
        cfg.optim, mixing_active(cfg.data))
    prep = DevicePreprocess(cfg.data.normalization, device, bool(tcfg.channels_last))
    micro_batch = int(cfg.data.batch_size) // (ctx.dist_info.world_size * int(tcfg.accum_steps))
    batch_augment = build_batch_augment(cfg.data, int(cfg.model.num_classes), float(cfg.optim.label_smoothing),
                                        device, micro_batch)
    forward_loss = detection_loss if cfg.task == "detection" else None
    return TrainParts(model, train_model, optimizer, scheduler, scaler, loss_fn, prep, ctx.amp, ema, frozen, distill,
                      batch_augment, forward_loss, correct_count(str(cfg.task)))


def build_loss(optim_cfg, mixing: bool) -> nn.Module:
    """The label loss, as timm's train.py picks it: with mixup/cutmix the targets arrive soft (label
    smoothing already inside them), so CE becomes SoftTargetCrossEntropy and BCE gets no smoothing."""
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    smoothing = float(optim_cfg.label_smoothing)
    thresh = None if optim_cfg.bce_target_thresh is None else float(optim_cfg.bce_target_thresh)
    if optim_cfg.loss == "bce":
        return BinaryCrossEntropy(smoothing=0.0 if mixing else smoothing, target_threshold=thresh)
    return SoftTargetCrossEntropy() if mixing else nn.CrossEntropyLoss(label_smoothing=smoothing)


def training_wrapper(model: nn.Module, dist_info: distributed.DistInfo, device: torch.device,
                     compile_model: bool, compile_mode: str = "default") -> nn.Module:
    """What the loop calls: the model, DDP-wrapped when distributed, compiled (in `compile_mode`) if asked."""
    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        train_model = torch.compile(train_model, mode=None if compile_mode == "default" else compile_mode)
    return train_model
