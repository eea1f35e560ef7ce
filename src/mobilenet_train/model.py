"""MobileNet v1 exactly as Table 1 of Howard et al. 2017, in plain PyTorch.

    stem      3x3 conv, stride 2, 3 -> 32
    13 x      depthwise-separable block: 3x3 depthwise conv + BN + act, 1x1 conv + BN + act
    head      global average pool, dropout, fully connected -> num_classes

Every width is int(alpha * C) (``round_to=8`` rounds to a multiple of 8 instead).
``padding='tf_same'`` reproduces TensorFlow's SAME padding (stride-2 convs pad 0 on
top/left and 1 on bottom/right for even inputs), needed to run Google's released weights.
``norm='none'`` drops BN and gives every conv a bias instead: the form of TF-Lite models,
whose BN is folded into the conv weights and biases.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

# Table 1, after the stem: (output channels of the pointwise conv, stride of the depthwise conv).
STEM_CHANNELS = 32
BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)
# Table 5's "shallow" network drops the five 14x14x512 separable blocks (indices 6..10).
SHALLOW_REMOVED = range(6, 11)
NUM_STRIDE2 = 5  # the stem plus four stride-2 blocks: the output is input / 32


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    alpha: float = 1.0
    resolution: int = 224
    num_classes: int = 1000
    variant: str = "separable"
    dropout: float = 0.0
    activation: str = "relu"
    padding: str = "symmetric"
    round_to: int = 1
    min_channels: int = 8
    norm: str = "batchnorm"
    bn_momentum: float = 0.1
    bn_eps: float = 1e-5
    embedding_dim: int = 0       # > 0: an embedding network (task=embedding), no classifier
    l2_normalize: bool = False   # embedding networks: unit-length outputs

    @classmethod
    def from_config(cls, model_cfg) -> ModelArgs:
        names = cls.__dataclass_fields__.keys()
        args = cls(**{k: model_cfg[k] for k in names if k in model_cfg})
        args.validate()
        return args

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """The ranges and choices of the config schema (model.*), so a bad value reads the same
        whether it came from the command line, a checkpoint or Python."""
        from .config.schema import ModelConfig, check

        check(ModelConfig, {k: v for k, v in self.to_dict().items()}, "model.")
        for name in ("resolution", "num_classes", "round_to", "min_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UserError(f"model.{name}={value} must be an integer (e.g. model.{name}="
                                f"{getattr(ModelArgs, name)})")

    def channels(self, base: int) -> int:
        """Width of a layer with `base` channels at alpha=1."""
        if self.round_to == 1:
            return max(self.min_channels, int(self.alpha * base))
        # Round to the nearest multiple, never more than 10% below alpha * base (as TF/timm).
        divisor = self.round_to
        width = max(self.min_channels, int(self.alpha * base + divisor / 2) // divisor * divisor)
        if width < 0.9 * self.alpha * base:
            width += divisor
        return width


class TFSamePad(nn.Module):
    """TensorFlow "SAME" padding for a k x k conv: the extra pixel goes bottom/right."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def _pad(self, size: int) -> tuple[int, int]:
        total = max((math.ceil(size / self.stride) - 1) * self.stride + self.kernel_size - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._pad(x.shape[-2])
        left, right = self._pad(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class Conv2dTFSame(nn.Conv2d):
    """nn.Conv2d with TensorFlow SAME padding (same parameters, so the same state-dict keys)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self.same_pad = TFSamePad(self.kernel_size[0], self.stride[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.same_pad(x))


class ConvBNAct(nn.Module):
    """conv -> BatchNorm -> ReLU/ReLU6: the unit every layer of Table 1 is made of.

    With ``norm='none'`` the BN is an identity and the conv carries a bias (BN folded in).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, groups: int, args: ModelArgs):
        super().__init__()
        bias = args.norm == "none"
        if args.padding == "tf_same" and kernel_size > 1:
            self.conv = Conv2dTFSame(in_ch, out_ch, kernel_size, stride, groups=groups, bias=bias)
        else:
            self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)
        if bias:
            self.bn = nn.Identity()
        else:
            self.bn = nn.BatchNorm2d(out_ch, eps=args.bn_eps, momentum=args.bn_momentum)
        self.act = nn.ReLU6(inplace=True) if args.activation == "relu6" else nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (one filter per channel) then 1x1 pointwise conv (Figure 3, right)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, args: ModelArgs):
        super().__init__()
        self.dw = ConvBNAct(in_ch, in_ch, 3, stride, groups=in_ch, args=args)
        self.pw = ConvBNAct(in_ch, out_ch, 1, 1, groups=1, args=args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


class FullConv(nn.Module):
    """Table 4's baseline: a full 3x3 conv with the same in/out channels and stride."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, args: ModelArgs):
        super().__init__()
        self.conv = ConvBNAct(in_ch, out_ch, 3, stride, groups=1, args=args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileNetV1(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        args.validate()
        self.args = args
        in_ch = args.channels(STEM_CHANNELS)
        self.stem = ConvBNAct(3, in_ch, 3, 2, groups=1, args=args)
        blocks = []
        for i, (base_out, stride) in enumerate(BLOCKS):
            if args.variant == "shallow" and i in SHALLOW_REMOVED:
                continue
            out_ch = args.channels(base_out)
            block_cls = FullConv if args.variant == "conv" else DepthwiseSeparable
            blocks.append(block_cls(in_ch, out_ch, stride, args))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(args.dropout)
        # An embedding network's head is a learned projection of the pooled features, none when the sizes agree.
        out = args.embedding_dim or args.num_classes
        self.fc = nn.Identity() if args.embedding_dim == in_ch else nn.Linear(in_ch, out)
        self.num_features = in_ch
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision's MobileNet init. nn.init's fan-out of a depthwise conv counts every
        # channel, which keeps depthwise filters small; with a small classifier this trains
        # much faster from scratch than a per-group He init (measured on `shapes`).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The layer before the classifier: globally pooled features (the embedding a teacher lends)."""
        return self.pool(self.forward_features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.dropout(self.forward_pooled(x)))
        return F.normalize(x, dim=1) if self.args.l2_normalize else x


def mobilenet_v1(args: ModelArgs | None = None, **kwargs) -> MobileNetV1:
    """Build the network: ``mobilenet_v1(alpha=0.75, resolution=192)``."""
    if args is None:
        args = ModelArgs(**kwargs)
    elif kwargs:
        raise TypeError("pass either ModelArgs or keyword arguments, not both")
    return MobileNetV1(args)


def build_model(model_cfg) -> tuple[MobileNetV1, ModelArgs]:
    """Build from the `model` config group (or a checkpoint's stored model args)."""
    args = ModelArgs.from_config(model_cfg)
    return MobileNetV1(args), args
