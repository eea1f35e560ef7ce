"""Train and eval preprocessing: eval framing against torchvision, and the presets (data.eval_preset)."""

from __future__ import annotations

import pytest
import torch
from helpers import photo, save_jpeg
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms import v2

from mobilenet_train.config.schema import DataConfig
from mobilenet_train.data import CentralFractionCrop, FastEvalCrop, eval_transform
from mobilenet_train.errors import UserError


def test_eval_crop_equals_resize_then_centre_crop_without_draft(tmp_path):
    img = photo(500, 375)
    img.save(tmp_path / "x.png")
    reference = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224), v2.PILToTensor()])(img)
    with Image.open(tmp_path / "x.png") as im:  # PNG: no draft
        out = FastEvalCrop(224, "default", 0.875)(im)
    assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert (out.int() - reference.int()).abs().max().item() <= 1
    save_jpeg(tmp_path / "x.jpg", photo(1000, 750))
    with Image.open(tmp_path / "x.jpg") as im:
        reference = v2.Compose([v2.Resize(146, antialias=True), v2.CenterCrop(128),
                                v2.PILToTensor()])(im.convert("RGB"))
    with Image.open(tmp_path / "x.jpg") as im:
        out = FastEvalCrop(128, "default", 0.875)(im)  # 750 / 146 > 4: decoded at 1/4
        assert im.size == (250, 188)
    assert (out.float() - reference.float()).abs().mean().item() < 2.0


def data_cfg(preset):
    return OmegaConf.structured(DataConfig(eval_preset=preset, eval_crop_fraction=0.875, interpolation="bilinear"))


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


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


@pytest.mark.parametrize("name", ["rand-m9-mstd0.5", "original", "augmix-m3-w2", "trivialaugment"])
def test_auto_augment_is_timms_op_on_the_uint8_crop(tmp_path, name):
    """The train transform with data.auto_augment equals the crop without it followed by timm's own op
    (torchvision's for trivialaugment), drawn from the same seeds; the result stays uint8 CHW."""
    import numpy as np
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    from mobilenet_train.data import train_transform

    path = save_jpeg(tmp_path / "a.jpg", photo(160, 120))
    cfg = OmegaConf.structured(DataConfig(auto_augment=name, hflip=0.0))
    plain = OmegaConf.structured(DataConfig(hflip=0.0))
    params = {"translate_const": int(64 * 0.45), "img_mean": (128, 128, 128),
              "interpolation": Image.Resampling.BILINEAR}
    timm_op = {"rand-m9-mstd0.5": lambda: rand_augment_transform(name, params),
               "original": lambda: auto_augment_transform(name, params),
               "augmix-m3-w2": lambda: augment_and_mix_transform(name, {**params, "translate_pct": 0.3}),
               "trivialaugment": lambda: v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR)}[name]()
    for seed in range(3):
        _seed_all(seed)
        with Image.open(path) as img:
            ours = train_transform(cfg, 64)(img)
        _seed_all(seed)
        with Image.open(path) as img:
            crop = train_transform(plain, 64)(img)
        # the crop draws from torch only; seed python and numpy again as they were when the op started
        state = torch.get_rng_state()
        _seed_all(seed)
        torch.set_rng_state(state)
        expected = np.asarray(timm_op(Image.fromarray(crop.permute(1, 2, 0).numpy())))
        assert ours.dtype == torch.uint8 and ours.shape == (3, 64, 64)
        assert torch.equal(ours.permute(1, 2, 0), torch.from_numpy(np.array(expected)))


def test_unknown_auto_augment_is_a_user_error():
    from mobilenet_train.data import train_transform

    with pytest.raises(UserError, match="data.auto_augment=rand-x9"):
        train_transform(OmegaConf.structured(DataConfig(auto_augment="rand-x9")), 64)
