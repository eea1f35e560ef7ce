"""The common form of imported weights, and its mapping onto the toolkit's `MobileNetV1`.

Every release of MobileNet v1 holds the same 27 convolutions (Table 1: the stem, then a
depthwise and a pointwise conv per block) and a 1x1 classifier; only names, layouts and the
treatment of BN differ. Readers convert to PyTorch layouts (OIHW; depthwise (C, 1, kH, kW))
and list the convs in Table 1 order; everything after that is shared here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from ..model import BLOCKS, STEM_CHANNELS, MobileNetV1, ModelArgs

# Output width at alpha=1 of each conv that sets a new width (stem, then every pointwise conv).
BASE_WIDTHS = (STEM_CHANNELS, *(width for width, _ in BLOCKS))
# Stride of each of the 27 convs, in order: stem, then (depthwise, pointwise) per block.
STRIDES = (2, *(s for _, stride in BLOCKS for s in (stride, 1)))
NUM_CONVS = 1 + 2 * len(BLOCKS)
# The toolkit module each of the 27 convs maps to.
MODULES = ("stem", *(f"blocks.{i}.{part}" for i in range(len(BLOCKS)) for part in ("dw", "pw")))
BN_KEYS = ("gamma", "beta", "mean", "var")


@dataclass
class ConvWeights:
    name: str                                  # the layer's name in the source, for messages
    weight: np.ndarray                         # OIHW; depthwise (C, 1, kH, kW)
    bias: np.ndarray | None = None             # BN folded into the conv (TF-Lite)
    bn: dict[str, np.ndarray] | None = None    # gamma, beta, mean, var (Keras)


@dataclass
class SourceWeights:
    """A MobileNet v1 read from a file; `to_model` turns it into the toolkit's model."""

    format: str                       # keras-hdf5 | tfjs-layers | tflite | timm
    sources: list[str]
    convs: list[ConvWeights]          # the 27 convs in Table 1 order
    fc_weight: np.ndarray             # (classes, features)
    fc_bias: np.ndarray
    resolution: int | None            # None: the file does not record its input size
    eval_preset: str                  # the eval preprocessing these weights were released with
    bn_eps: float | None = None       # None: BN folded into the convs (model.norm=none)
    details: dict = field(default_factory=dict)  # goes to the checkpoint's `import` section
    activation: str = "relu6"         # Google's releases; timm's MobileNet v1 too
    padding: str = "tf_same"          # how the weights were trained to see borders
    # The data.* settings of the eval these weights were released with (normalization, crop, filter).
    eval_data: dict = field(default_factory=lambda: {"normalization": "inception"})


def _check_structure(src: SourceWeights) -> list[int]:
    """Shapes chain as Table 1 says; returns the 14 widths the alpha must explain."""
    if len(src.convs) != NUM_CONVS:
        raise UserError(f"{src.sources[0]} holds {len(src.convs)} convolutions where MobileNet v1 has {NUM_CONVS} "
                        f"(a stem and 13 depthwise-separable blocks): not a MobileNet v1")
    in_ch = 3
    widths = []
    for i, conv in enumerate(src.convs):
        depthwise = i % 2 == 1
        w = conv.weight
        expected_k = 1 if i and not depthwise else 3
        expected_in = 1 if depthwise else in_ch
        if w.ndim != 4 or w.shape[1] != expected_in or w.shape[2:] != (expected_k, expected_k) or \
                (depthwise and w.shape[0] != in_ch):
            what = "a 3x3 depthwise conv" if depthwise else f"a {expected_k}x{expected_k} conv"
            raise UserError(f"layer {conv.name} of {src.sources[0]} has weights of shape {tuple(w.shape)} (as OIHW) "
                            f"where MobileNet v1 has {what} on {in_ch} channels: not a MobileNet v1 of Table 1")
        if not depthwise:
            widths.append(int(w.shape[0]))
        in_ch = int(w.shape[0])
    if src.fc_weight.ndim != 2 or src.fc_weight.shape[1] != in_ch or src.fc_bias.shape != src.fc_weight.shape[:1]:
        raise UserError(f"the classifier of {src.sources[0]} has weights {tuple(src.fc_weight.shape)} and bias "
                        f"{tuple(src.fc_bias.shape)}, but the last layer has {in_ch} channels")
    return widths


def infer_width(src: SourceWeights, widths: list[int]) -> tuple[float, int]:
    """(alpha, round_to) whose Table 1 widths are exactly the file's."""
    guesses = []
    for width, base in ((widths[-1], BASE_WIDTHS[-1]), (widths[0], BASE_WIDTHS[0])):
        guesses += [width / base, round(width / base, 2)]
    for alpha in dict.fromkeys(guesses):
        for round_to in (1, 8):
            args = ModelArgs(alpha=alpha, round_to=round_to)
            if [args.channels(base) for base in BASE_WIDTHS] == widths:
                return alpha, round_to
    # Name the first layer that disagrees with the most likely alpha.
    alpha = round(widths[-1] / BASE_WIDTHS[-1], 2)
    args = ModelArgs(alpha=alpha)
    names = [c.name for i, c in enumerate(src.convs) if i % 2 == 0]
    for name, width, base in zip(names, widths, BASE_WIDTHS):
        if args.channels(base) != width:
            raise UserError(f"layer {name} of {src.sources[0]} has {width} output channels, but MobileNet v1 with "
                            f"alpha={alpha} has {args.channels(base)} there: the file's widths {widths} fit no width "
                            f"multiplier (int(alpha * C) or multiples of 8)")
    raise AssertionError("unreachable: widths matched alpha")  # pragma: no cover


def to_model(src: SourceWeights, resolution: int, padding: str | None = None, keep_background: bool = False,
             dropout: float = 0.0, bn_momentum: float = 0.1) -> tuple[MobileNetV1, ModelArgs, dict]:
    """Build the toolkit's model holding `src`'s weights; returns it, its args and what was done.
    `padding`: None for the source's own."""
    widths = _check_structure(src)
    alpha, round_to = infer_width(src, widths)
    fc_weight, fc_bias = src.fc_weight, src.fc_bias
    # TF-slim heads have 1001 logits, index 0 meaning "background"; the toolkit's ImageNet has 1000.
    dropped_background = fc_weight.shape[0] == 1001 and not keep_background
    if dropped_background:
        fc_weight, fc_bias = fc_weight[1:], fc_bias[1:]
    folded = src.bn_eps is None
    args = ModelArgs(alpha=alpha, resolution=resolution, num_classes=int(fc_weight.shape[0]), dropout=dropout,
                     activation=src.activation, padding=padding or src.padding, round_to=round_to,
                     norm="none" if folded else "batchnorm", bn_momentum=bn_momentum,
                     bn_eps=ModelArgs.bn_eps if folded else float(src.bn_eps))
    model = MobileNetV1(args)
    state = model.state_dict()
    values: dict[str, np.ndarray] = {"fc.weight": fc_weight, "fc.bias": fc_bias}
    for module, conv in zip(MODULES, src.convs):
        values[f"{module}.conv.weight"] = conv.weight
        if folded:
            values[f"{module}.conv.bias"] = conv.bias
        else:
            for key, name in zip(BN_KEYS, ("weight", "bias", "running_mean", "running_var")):
                values[f"{module}.bn.{name}"] = conv.bn[key]
    for key, value in values.items():
        if value is None or tuple(value.shape) != tuple(state[key].shape):
            shape = None if value is None else tuple(value.shape)
            raise UserError(f"{src.sources[0]}: {key} would get an array of shape {shape}, the model needs "
                            f"{tuple(state[key].shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    model.load_state_dict(state)
    return model, args, {"dropped_background": dropped_background, "widths": widths}
