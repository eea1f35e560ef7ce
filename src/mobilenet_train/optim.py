"""Optimizer, weight-decay groups and learning-rate schedule.

AdamW and LAMB come from timm's `create_optimizer_v2` (with the groups below).
RMSProp is timm's `RMSpropTF` (TensorFlow semantics: the mean square starts at 1, epsilon
sits inside the square root, the learning rate is folded into the momentum buffer).
Weight decay is L2 added to the gradient, as TF-slim's regularizer, on conv and FC weights;
depthwise filters, BN parameters and biases are left out by default (each switchable).
The schedule is timm's, stepped once per optimizer update.
"""

from __future__ import annotations

import torch
from timm.optim import RMSpropTF, create_optimizer_v2
from timm.scheduler import CosineLRScheduler, StepLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

from .errors import UserError

REFERENCE_BATCH = 256  # the default optim.lr_batch: optim.lr is the learning rate for this global batch


def param_kind(module: nn.Module, name: str) -> str:
    """'depthwise', 'norm', 'bias' or 'weight' (conv / FC weight)."""
    if isinstance(module, nn.modules.batchnorm._NormBase) or isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
        return "norm"
    if name == "bias":
        return "bias"
    if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
        return "depthwise"
    return "weight"


def classify_params(model: nn.Module) -> dict[str, str]:
    """Parameter name -> kind, for every trainable parameter. A captured graph (qat.QatModel) has lost its
    module types and carries the kinds of the model it was captured from."""
    if hasattr(model, "param_kinds"):
        return {name: model.param_kinds[name] for name, p in model.named_parameters() if p.requires_grad}
    kinds = {}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                kinds[f"{module_name}.{name}" if module_name else name] = param_kind(module, name)
    return kinds


def param_groups(model: nn.Module, optim_cfg) -> list[dict]:
    decays = {
        "weight": True,
        "depthwise": bool(optim_cfg.decay_depthwise),
        "norm": bool(optim_cfg.decay_norm),
        "bias": bool(optim_cfg.decay_bias),
    }
    params = dict(model.named_parameters())
    with_decay, without_decay = [], []
    for name, kind in classify_params(model).items():
        (with_decay if decays[kind] else without_decay).append(params[name])
    groups = [{"params": with_decay, "weight_decay": float(optim_cfg.weight_decay)}]
    if without_decay:
        groups.append({"params": without_decay, "weight_decay": 0.0})
    return groups


def scaled_lr(optim_cfg, global_batch: int) -> float:
    """optim.lr at the run's global batch: x ratio (linear) or x sqrt(ratio) (sqrt), ratio = batch / lr_batch."""
    lr = float(optim_cfg.lr)
    if not optim_cfg.scale_lr:
        return lr
    ratio = global_batch / int(optim_cfg.lr_batch)
    return lr * (ratio ** 0.5 if optim_cfg.lr_scaling == "sqrt" else ratio)


def build_optimizer(model: nn.Module, optim_cfg, global_batch: int) -> torch.optim.Optimizer:
    lr = scaled_lr(optim_cfg, global_batch)
    groups = param_groups(model, optim_cfg)
    if optim_cfg.name == "rmsprop":
        return RMSpropTF(groups, lr=lr, alpha=float(optim_cfg.decay), eps=float(optim_cfg.eps),
                         momentum=float(optim_cfg.momentum))
    if optim_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(optim_cfg.momentum), nesterov=bool(optim_cfg.nesterov))
    if optim_cfg.name in ("adamw", "lamb"):
        # timm's factory, given our groups: they keep their own weight_decay (none on BN, biases,
        # depthwise unless asked), where timm's filter_bias_and_bn would pick its own.
        return create_optimizer_v2(groups, opt=optim_cfg.name, lr=lr, weight_decay=float(optim_cfg.weight_decay),
                                   betas=tuple(float(b) for b in optim_cfg.betas), eps=float(optim_cfg.eps))
    raise UserError(f"optim.name={optim_cfg.name} is unknown: use optim=rmsprop, sgd, adamw or lamb")


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg, epochs: int, steps_per_epoch: int) -> Scheduler:
    """timm scheduler in optimizer steps (t_in_epochs=False); call `.step_update(step)`."""
    warmup = round(float(sched_cfg.warmup_epochs) * steps_per_epoch)
    total = epochs * steps_per_epoch
    common = dict(warmup_t=warmup, warmup_lr_init=float(sched_cfg.warmup_lr_init), warmup_prefix=True,
                  t_in_epochs=False)
    if sched_cfg.name == "exponential":
        decay_t = max(1, round(float(sched_cfg.decay_epochs) * steps_per_epoch))
        return StepLRScheduler(optimizer, decay_t=decay_t, decay_rate=float(sched_cfg.decay_rate), **common)
    if sched_cfg.name == "cosine":
        return CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=float(sched_cfg.min_lr), **common)
    raise UserError(f"sched.name={sched_cfg.name} is unknown: use sched=exponential or sched=cosine")
