"""What the trainer calls for task=detection: the model, its data, its loss step and its evaluation
(engine/ keeps one loop; these are its detection hooks)."""

from __future__ import annotations

import torch
from torch import nn

from ..complexity import measure_complexity
from .model import DetArgs, DetectorOutputs, SSDMobileNetV1, build_detector


def detection_loss(train_model: nn.Module, x: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """The detector's own losses, summed: SSD's (matched anchors: box regression + hard-negative-mined
    classification), Faster R-CNN's (RPN objectness and boxes, RoI classes and boxes)."""
    device = x.device
    moved = [{"boxes": t["boxes"].to(device, non_blocking=True), "labels": t["labels"].to(device, non_blocking=True)}
             for t in targets]
    losses = train_model(x, moved)
    return sum(losses.values())


def detector_complexity(model: nn.Module, resolution: int) -> dict:
    """Params and mult-adds of one image, as `mobilenet-info task=detection`: SSD up to the box decoding (no
    NMS); Faster R-CNN with its RoI head run on detection.proposals crops (info.frcnn_counts)."""
    if getattr(model.args, "arch", "ssd") == "faster_rcnn":
        from ..complexity import count_params
        from .info import frcnn_counts

        return {"params": count_params(model), "mult_adds": frcnn_counts(model, resolution)["mult_adds"]}
    return measure_complexity(DetectorOutputs(model), resolution)


__all__ = ["DetArgs", "SSDMobileNetV1", "build_detector", "detection_loss", "detector_complexity"]
