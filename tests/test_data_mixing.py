"""Batch augmentation on the device (data/mixing.py): timm's RandomErasing and Mixup/CutMix on the
normalised batch, and the label loss that goes with them (engine/setup.py build_loss)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mobilenet_train.config.schema import DataConfig, OptimConfig
from mobilenet_train.data.mixing import build_batch_augment
from mobilenet_train.engine.setup import build_loss
from mobilenet_train.errors import UserError


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_batch_augment_is_timms_erasing_then_mixup(mode):
    from timm.data import Mixup
    from timm.data.random_erasing import RandomErasing

    cfg = OmegaConf.structured(DataConfig(random_erasing=0.5, random_erasing_mode="pixel", random_erasing_count=2,
                                          mixup=0.2, cutmix=1.0, mixup_mode=mode))
    x = torch.randn(6, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    augment = build_batch_augment(cfg, 5, 0.1, torch.device("cpu"), micro_batch=6)
    _seed(3)
    ours_x, ours_t = augment(x.clone(), y)
    _seed(3)
    erased = RandomErasing(0.5, mode="pixel", max_count=2, device="cpu")(x.clone())
    timm_x, timm_t = Mixup(mixup_alpha=0.2, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=5)(erased, y)
    assert torch.equal(ours_x, timm_x) and torch.equal(ours_t, timm_t)
    assert not torch.equal(ours_x, x)
    assert ours_t.shape == (6, 5) and torch.allclose(ours_t.sum(1), torch.ones(6))


def test_nothing_on_builds_nothing_and_odd_batches_cannot_mix():
    assert build_batch_augment(OmegaConf.structured(DataConfig()), 5, 0.0, torch.device("cpu"), 7) is None
    with pytest.raises(UserError, match="odd"):
        build_batch_augment(OmegaConf.structured(DataConfig(cutmix=1.0)), 5, 0.0, torch.device("cpu"), 7)


def test_loss_follows_timm_train_py():
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    ce = build_loss(OmegaConf.structured(OptimConfig(label_smoothing=0.1)), mixing=False)
    assert isinstance(ce, torch.nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    assert isinstance(build_loss(OmegaConf.structured(OptimConfig()), mixing=True), SoftTargetCrossEntropy)
    bce = build_loss(OmegaConf.structured(OptimConfig(loss="bce", label_smoothing=0.1, bce_target_thresh=0.2)),
                     mixing=True)
    assert isinstance(bce, BinaryCrossEntropy) and bce.smoothing == 0.0 and bce.target_threshold == 0.2
    logits, soft = torch.randn(4, 5), torch.full((4, 5), 0.05)
    soft[:, 1] = 0.8
    hard = torch.zeros(4, 5)
    hard[:, 1] = 1.0  # the threshold makes the soft targets hard
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, hard)
    assert bce(logits, soft).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device here"))])
def test_mixing_erasing_and_the_teacher_stay_on_the_device(device):
    """The CPU twin of the GPU path: random erasing, mixup/cutmix, a teacher at another resolution and
    normalisation, the loss and its backward; on CUDA with host syncs turned into errors."""
    from mobilenet_train.engine.distill import Distiller, LoadedTeacher
    from mobilenet_train.engine.loop import training_loss
    from mobilenet_train.engine.setup import TrainParts

    dev = torch.device(device)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3)).to(dev)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    cfg = OmegaConf.structured(DataConfig(random_erasing=1.0, mixup=0.2, cutmix=1.0))
    parts = TrainParts(student, student, None, None, None, build_loss(OmegaConf.structured(OptimConfig()), True),
                       None, None, None, distill=Distiller(LoadedTeacher(teacher, 8, (0.5,) * 3, (0.5,) * 3, {}), 0.5,
                                                           2.0, "imagenet", 4, dev, False, None),
                       batch_augment=build_batch_augment(cfg, 3, 0.1, dev, micro_batch=4))
    x, y = torch.randn(4, 3, 4, 4, device=dev), torch.tensor([0, 1, 2, 0], device=dev)
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        mixed, target = parts.batch_augment(x.clone(), y)
        loss = training_loss(parts, student(mixed), mixed, target)
        loss.backward()
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert target.shape == (4, 3) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in student.parameters())
    assert all(p.grad is None for p in parts.distill.model.parameters())
