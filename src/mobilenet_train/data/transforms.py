"""The one place that builds train and eval preprocessing.

Workers decode and augment on the CPU and hand over uint8 batches (4x less to copy than
float); normalisation, the float cast and channels_last happen on the device
(`DevicePreprocess`). The transforms take an opened, undecoded PIL image and decode it with
`decode.py` (draft scale, crop before resize).
"""

from __future__ import annotations

import math

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

from ..errors import UserError
from .decode import Box, decode_crop, draft_scale, tensor_decode_crop, to_chw_uint8

NORMALIZATION = {
    # TF-slim / Keras MobileNet: x / 127.5 - 1
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # Google's uint8 TF-Lite detector: scale 1/128, zero point 128
    "uint8_128": ((128 / 255,) * 3, (128 / 255,) * 3),
}
INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class FastRandomResizedCrop:
    """Train transform: RandomResizedCrop + horizontal flip on an opened, undecoded PIL image,
    then `augment` (RandAugment & co., PIL in, PIL out; uint8 throughout) when given.

    The crop is drawn as torchvision's RandomResizedCrop draws it (`get_params`, the same
    torch RNG calls), on the size from the image header. Where a DCT downscale applies, PIL
    decodes with draft (`decode_crop`); elsewhere torchvision's decoder (`tensor_decode_crop`).
    """

    def __init__(self, resolution: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 interpolation: str = "bilinear", draft: bool = True, augment=None):
        self.size = (resolution, resolution)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        self.resample, self.draft = PIL_RESAMPLE[interpolation], draft
        self.augment = augment

    def box(self, img) -> Box:
        top, left, h, w = transforms.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        return (left, top, left + w, top + h)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        out = self._crop_flip(img)
        if self.augment is not None:
            out = self.augment(out if isinstance(out, Image.Image) else chw_to_pil(out))
        return out if isinstance(out, torch.Tensor) else to_chw_uint8(out)

    def _crop_flip(self, img: Image.Image) -> torch.Tensor | Image.Image:
        box = self.box(img)
        if self.resample == Image.Resampling.BILINEAR and (not self.draft or draft_scale(img, box, self.size) == 1):
            out = tensor_decode_crop(img, box, self.size)
            if out is not None:
                return out.flip(-1) if self.hflip > 0 and torch.rand(1).item() < self.hflip else out
        out = decode_crop(img, box, self.size, self.resample, self.draft)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return out


def chw_to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 CHW -> RGB PIL image; merging the three planes is several times faster than an HWC transpose."""
    planes = image.numpy()
    return Image.merge("RGB", [Image.fromarray(planes[c]) for c in range(3)])


def auto_augment(name: str | None, resolution: int, normalization: str, interpolation: str):
    """`data.auto_augment` as a PIL -> PIL op: timm's RandAugment / AutoAugment / AugMix with the
    hyper-parameters timm's `create_transform` gives them, or torchvision's TrivialAugmentWide."""
    if not name:
        return None
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=INTERPOLATION[interpolation])
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    mean = NORMALIZATION[normalization][0]
    # As timm.data.create_transform: translations up to 45% of the side, fill with the mean colour.
    params = {"translate_const": int(resolution * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean),
              "interpolation": PIL_RESAMPLE[interpolation]}
    try:
        if name.startswith("rand"):
            return rand_augment_transform(name, params)
        if name.startswith("augmix"):
            return augment_and_mix_transform(name, {**params, "translate_pct": 0.3})
        return auto_augment_transform(name, params)
    except Exception as e:  # noqa: BLE001 - timm's parser raises assertions and key/value errors
        raise UserError(f"data.auto_augment={name} is not a timm augmentation string ({type(e).__name__}: {e}); "
                        f"e.g. data.auto_augment=rand-m9-mstd0.5") from None


def eval_resize_size(resolution: int, crop_fraction: float) -> int:
    """Shorter side before the centre crop: 224 / 0.875 = 256."""
    return int(math.floor(resolution / crop_fraction))


class CentralFractionCrop(torch.nn.Module):
    """tf.image.central_crop: keep the central `fraction` of each side, whatever the aspect.

    Sides are rounded to whole pixels and centred as torchvision's center_crop does; this
    reproduces the reference accuracies of Google's models (../shared) more closely than
    TensorFlow's truncated offsets (one pixel off for some images).
    """

    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def forward(self, image):
        height, width = v2.functional.get_size(image)
        return v2.functional.center_crop(image, [round(height * self.fraction), round(width * self.fraction)])


# Eval preprocessing, `data.eval_preset`:
#   default  resize the shorter side to resolution / eval_crop_fraction, centre crop (aspect kept)
#   tf       TF-slim's eval: central eval_crop_fraction (87.5%) of the whole image, bilinear
#            resize to resolution x resolution (aspect not kept); what Google's models were scored with
#   keras    framed as keras.utils.image_dataset_from_directory(image_size=...) loads images: the
#            whole image bilinearly resized to resolution x resolution, no crop
# tf and keras resample with PIL's antialiased bilinear filter, whatever data.interpolation says.
EVAL_PRESETS = ("default", "tf", "keras")


class FastEvalCrop:
    """Eval transform: the preset's framing as one source box, resized with draft decoding.

    Without draft (non-JPEG images, or crops too small for it) the pixels equal resize-then-crop:
    PIL resamples a box with the same scale and sample positions as the whole image.
    """

    def __init__(self, resolution: int, preset: str = "default", fraction: float = 0.875,
                 interpolation: str = "bilinear", draft: bool = True):
        if preset not in EVAL_PRESETS:
            raise UserError(f"data.eval_preset={preset} is unknown: use one of {', '.join(EVAL_PRESETS)}")
        self.size = (resolution, resolution)
        self.preset, self.fraction, self.draft = preset, fraction, draft
        self.resample = PIL_RESAMPLE[interpolation] if preset == "default" else Image.Resampling.BILINEAR

    def box(self, img) -> Box:
        width, height = img.size if isinstance(img, Image.Image) else (img.shape[-1], img.shape[-2])
        res = self.size[0]
        if self.preset == "default":
            # torchvision Resize(shorter side) then CenterCrop, in original pixels.
            short, long = min(width, height), max(width, height)
            new_short = eval_resize_size(res, self.fraction)
            new_long = int(new_short * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
            top, left = int(round((new_h - res) / 2.0)), int(round((new_w - res) / 2.0))
            sx, sy = width / new_w, height / new_h
            return (left * sx, top * sy, (left + res) * sx, (top + res) * sy)
        if self.preset == "tf":
            h, w = round(height * self.fraction), round(width * self.fraction)
            top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
            return (left, top, left + w, top + h)
        return (0, 0, width, height)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_chw_uint8(decode_crop(img, self.box(img), self.size, self.resample, self.draft))


def train_transform(data_cfg, resolution: int) -> FastRandomResizedCrop:
    interpolation = _interpolation_name(data_cfg)
    augment = auto_augment(data_cfg.auto_augment, resolution, str(data_cfg.normalization), interpolation)
    return FastRandomResizedCrop(resolution, scale=(float(data_cfg.min_crop_area), 1.0),
                                 ratio=tuple(data_cfg.crop_ratio),
                                 hflip=float(data_cfg.hflip), interpolation=interpolation,
                                 draft=bool(data_cfg.jpeg_draft), augment=augment)


def eval_transform(data_cfg, resolution: int) -> FastEvalCrop:
    return FastEvalCrop(resolution, data_cfg.eval_preset, float(data_cfg.eval_crop_fraction),
                        _interpolation_name(data_cfg), draft=bool(data_cfg.jpeg_draft))


def _interpolation_name(data_cfg) -> str:
    _interpolation(data_cfg)
    return str(data_cfg.interpolation)


def _interpolation(data_cfg):
    try:
        return INTERPOLATION[data_cfg.interpolation]
    except KeyError:
        raise UserError(f"data.interpolation={data_cfg.interpolation} is unknown: use bilinear or bicubic") from None


class DevicePreprocess:
    """uint8 NCHW batch -> normalised float on the device, channels_last if asked."""

    def __init__(self, normalization: str, device: torch.device, channels_last: bool):
        if normalization not in NORMALIZATION:
            raise UserError(f"data.normalization={normalization} is unknown: use one of {', '.join(NORMALIZATION)}")
        mean, std = NORMALIZATION[normalization]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0)
        self.device = device
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.mean) * self.inv_std


def normalized(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """A uint8 NCHW batch as the model's float input on the CPU (what `DevicePreprocess` feeds it)."""
    return DevicePreprocess(normalization, torch.device("cpu"), channels_last=False)(images).contiguous()
