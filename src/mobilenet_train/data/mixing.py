"""Batch augmentation on the device: timm's RandomErasing and Mixup/CutMix.

They run in the training process on the normalised float batch, where timm applies them
(random erasing fills with normal noise in normalised units; mixup and cutmix blend whole
batches), so the loader workers keep handing over uint8. Their random draws come from the
training process's RNGs (python, numpy, torch), which every checkpoint saves and restores, so
an exact resume stays exact. No host syncs: the parameters are drawn on the host, the pixels
change on the device.
"""

from __future__ import annotations

import torch

from ..errors import UserError


class BatchAugment:
    """(x, labels) -> (x, targets): random erasing per image, then mixup/cutmix of the batch
    with label smoothing inside (soft targets); without mixing the targets are the labels."""

    def __init__(self, erase, mix):
        self.erase, self.mix = erase, mix

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.erase is not None:
            x = self.erase(x)
        if self.mix is not None:
            x, y = self.mix(x, y)
        return x, y


def mixing_active(data_cfg) -> bool:
    return float(data_cfg.mixup) > 0 or float(data_cfg.cutmix) > 0


def build_batch_augment(data_cfg, num_classes: int, label_smoothing: float, device: torch.device,
                        micro_batch: int) -> BatchAugment | None:
    """The configured batch augmentation (None when nothing is on)."""
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing

    erase = None
    if float(data_cfg.random_erasing) > 0:
        erase = RandomErasing(float(data_cfg.random_erasing), mode=str(data_cfg.random_erasing_mode),
                              max_count=int(data_cfg.random_erasing_count), device=device)
    mix = None
    if mixing_active(data_cfg):
        if micro_batch % 2:
            raise UserError(f"mixup/cutmix pair each image with another of its batch: the batch per process and "
                            f"micro-batch is {micro_batch}, odd; choose an even one (data.batch_size)")
        mix = Mixup(mixup_alpha=float(data_cfg.mixup), cutmix_alpha=float(data_cfg.cutmix),
                    prob=float(data_cfg.mixup_prob), switch_prob=float(data_cfg.mixup_switch_prob),
                    mode=str(data_cfg.mixup_mode), label_smoothing=label_smoothing, num_classes=num_classes)
    return BatchAugment(erase, mix) if erase is not None or mix is not None else None
