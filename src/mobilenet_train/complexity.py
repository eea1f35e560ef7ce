"""Parameters and mult-adds measured from a built module, never from a hand table.

Mult-adds are the multiply-accumulates of the conv and fully connected layers, as the paper
counts them (BN, ReLU, pooling and biases are not counted): torch.utils.flop_counter counts
2 FLOPs per multiply-accumulate for convolutions and matmuls, so mult-adds = FLOPs / 2.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .model import MobileNetV1, ModelArgs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def counted_forward(model: nn.Module, resolution: int) -> tuple[torch.Tensor, FlopCounterMode]:
    """One eval-mode forward pass of a single resolution x resolution image under a FlopCounterMode;
    returns the logits and the counter (totals and per-module counts). Restores the model's mode."""
    param = next(model.parameters())
    x = torch.zeros(1, 3, resolution, resolution, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            logits = model(x)
    finally:
        model.train(was_training)
    return logits, counter


def count_mult_adds(model: nn.Module, resolution: int) -> int:
    """Multiply-accumulates of one forward pass of a single resolution x resolution image."""
    return counted_forward(model, resolution)[1].get_total_flops() // 2


def measure_complexity(model: nn.Module, resolution: int) -> dict:
    return {"params": count_params(model), "mult_adds": count_mult_adds(model, resolution)}


def complexity_of(args: ModelArgs) -> dict:
    """Complexity of the network described by `args`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = MobileNetV1(args)
    return measure_complexity(model, args.resolution)


def format_count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"
