"""What the trainer calls for task=detection: the model, its data, its loss step and its evaluation
(engine/ keeps one loop; these are its detection hooks)."""

from __future__ import annotations

import torch
from torch import nn

from ..complexity import measure_complexity
from .model import DetArgs, DetectorOutputs, SSDMobileNetV1, build_detector


def detection_loss(train_model: nn.Module, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """torchvision SSD's loss (matched anchors: box regression + hard-negative-mined classification)."""
    device = x.device
    moved = [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
             for t in targets]
    losses = train_model(x, moved)
    return losses["bbox_regression"] + losses["classification"]


def detector_complexity(model: SSDMobileNetV1, resolution: int) -> dict:
    """Params and mult-adds of one image up to the box decoding (no NMS), as `mobilenet-info task=detection`."""
    return measure_complexity(DetectorOutputs(model), resolution)


__all__ = ["DetArgs", "SSDMobileNetV1", "build_detector", "detection_loss", "detector_complexity"]
