"""The model as it is deployed: the checkpoint's, eval mode, BatchNorm folded into the convs."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..checkpoint import model_from_checkpoint
from ..model import Conv2dTFSame, ConvBNAct


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into its conv (in place): conv -> act, as TF-Lite models are."""
    model.eval()
    for m in model.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            m.conv = fuse_conv_bn_eval(m.conv, m.bn)  # keeps the conv's class (TF-same padding)
            m.bn = nn.Identity()
    return model


class _ChannelsLastTFSamePad(nn.Module):
    """TFSamePad's padding, applied on the NHWC view of the tensor (see pad_channels_last)."""

    def __init__(self, same_pad: nn.Module):
        super().__init__()
        self.same_pad = same_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self.same_pad._pad(x.shape[-2])
        left, right = self.same_pad._pad(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, left, right, top, bottom)).permute(0, 3, 1, 2)


def pad_channels_last(model: nn.Module) -> nn.Module:
    """TensorFlow-SAME padding (`tf_same`, as imported Google weights have) in the form TF-Lite converts
    best, in place; the numbers are identical. litert-torch converts the graph to NHWC but keeps a
    constant pad in NCHW, between two TRANSPOSEs, and int8 adds a requantising QUANTIZE after each
    pad. A stride-1 conv pads symmetrically, so it becomes a plain padded conv; a stride-2 conv pads
    on the NHWC view, where the permutes cancel and TF-Lite folds the pad into a SAME conv. The
    result has the op list of Google's own file."""
    for m in model.modules():
        if not isinstance(m, Conv2dTFSame):
            continue
        if m.stride == (1, 1) and all(k % 2 for k in m.kernel_size):
            m.padding = tuple(k // 2 for k in m.kernel_size)  # nn.Conv2d pads symmetrically itself
            m.same_pad = nn.Identity()
        else:
            m.same_pad = _ChannelsLastTFSamePad(m.same_pad)
    return model


def deploy_model(ckpt: dict) -> nn.Module:
    """The checkpoint's model, eval mode, BN folded."""
    model, _ = model_from_checkpoint(ckpt)
    return fold_batchnorm(model)


def example_input(ckpt: dict, batch: int = 2) -> torch.Tensor:
    """What the exporters trace with: zeros of the model's input shape."""
    res = int(ckpt["model_args"]["resolution"])
    return torch.zeros(batch, 3, res, res)
