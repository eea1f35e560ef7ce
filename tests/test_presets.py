"""Eval preprocessing presets (data.eval_preset): default, tf and keras."""

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mobilenet_train.data import CentralFractionCrop, eval_transform
from mobilenet_train.errors import UserError


def data_cfg(preset):
    return OmegaConf.create({"eval_preset": preset, "eval_crop_fraction": 0.875, "interpolation": "bilinear"})


def image(width=400, height=300, black=0.5):
    """White, with a black band over the left `black` share of the width: the output shows the framing."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, int(width * black), height))
    return img


def test_tf_crop_keeps_the_central_fraction_of_each_side():
    crop = CentralFractionCrop(0.875)(image(400, 300))
    assert crop.size == (350, 262)  # round(0.875 * 400), round(0.875 * 300)
    assert crop.getpixel((0, 0)) == (0, 0, 0) and crop.getpixel((349, 0)) == (255, 255, 255)


@pytest.mark.parametrize("preset,expected", [("default", 0.0), ("tf", 75 / 350), ("keras", 0.25)])
def test_presets_output_size_and_framing(preset, expected):
    # 400x200 with the left 100 columns black. default: shorter side to 256 (512x256), centre
    # 224 crop -> columns 144..368 of 512, no black. tf: columns 25..375 of 400, 75 of them
    # black, squashed to 224. keras: the whole width squashed, a quarter black.
    out = eval_transform(data_cfg(preset), 224)(image(400, 200, black=0.25))
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    black = (out[0, 112] < 128).float().mean().item()
    assert black == pytest.approx(expected, abs=0.01)


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="data.eval_preset=nope"):
        eval_transform(data_cfg("nope"), 56)
