"""What differs between the image tasks in the training step: the label loss and the running accuracy.

Multi-label targets are float 1 / 0 per attribute with NaN for a missing label: it is masked out of
the loss (no gradient) and of the accuracy. The evaluations per task are in scoring.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics


class MaskedBCE(nn.Module):
    """Per-attribute sigmoid cross-entropy averaged over the known labels (NaN targets: missing, no
    gradient); `smoothing` moves the targets towards 1/2 as timm's BinaryCrossEntropy."""

    def __init__(self, smoothing: float = 0.0):
        super().__init__()
        self.smoothing = float(smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        clean = torch.where(known, target, torch.zeros_like(target))
        if self.smoothing:
            clean = clean * (1 - self.smoothing) + 0.5 * self.smoothing
        loss = F.binary_cross_entropy_with_logits(logits.float(), clean.float(), reduction="none")
        return (loss * known).sum() / known.sum().clamp(min=1)


def correct_count(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The running "top-1" of a batch as a device float64 sum: right argmaxes (classification), the
    share of each image's known attributes right (multilabel), nothing to count (embedding)."""
    if task == "multilabel":
        return lambda logits, y: metrics.label_accuracy(logits.detach(), y).sum().double()
    if task == "embedding":
        return lambda out, y: out.new_zeros((), dtype=torch.float64)
    return lambda logits, y: (logits.detach().argmax(1) == y).sum().double()
