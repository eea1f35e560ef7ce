"""Decoding an image straight to the crop the model needs (`data.decode=cpu`; gpu.py for gpu).

The crop is chosen on the image size read from the header, the JPEG decoder is asked for the
smallest 1/2, 1/4 or 1/8 scale that still covers the crop at the output size (`Image.draft`,
DCT-domain downscaling), and one PIL resize with a source box crops and resizes (train crops
that allow no downscale are decoded by torchvision's libjpeg-turbo binding and resized as
uint8 tensors, which is faster than PIL).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the original image


def draft_scale(img: Image.Image, box: Box, size: tuple[int, int]) -> int:
    """The JPEG downscale (1, 2, 4 or 8) `Image.draft` picks so that `box` still covers `size`."""
    left, top, right, bottom = box
    width, height = img.size
    request = (math.ceil(width * size[0] / max(right - left, 1e-6)),
               math.ceil(height * size[1] / max(bottom - top, 1e-6)))
    ratio = min(width // max(request[0], 1), height // max(request[1], 1))
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


def decode_crop(img: Image.Image, box: Box, size: tuple[int, int], resample, draft: bool = True) -> Image.Image:
    """The `box` of `img` resized to `size` (w, h), as an RGB image; crop before resize.

    `img` should be freshly opened (not decoded): for a JPEG, `draft` then asks libjpeg for
    the largest 1/2, 1/4 or 1/8 downscale at which the box still covers `size`, so the
    decoder does the coarse downscaling in the DCT domain and only the rest is resampled.
    """
    left, top, right, bottom = box
    if draft and img.format == "JPEG" and not getattr(img, "decoderconfig", ()) and img.mode in ("RGB", "L", "CMYK"):
        width, height = img.size
        request = (math.ceil(width * size[0] / max(right - left, 1e-6)),
                   math.ceil(height * size[1] / max(bottom - top, 1e-6)))
        drafted = img.draft(img.mode, request)
        if drafted is not None:
            scale = width / drafted[1][2]  # 1, 2, 4 or 8: original pixels per decoded pixel
            left, top, right, bottom = left / scale, top / scale, right / scale, bottom / scale
    if img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")  # palette / alpha / 16-bit: resampling needs a plain mode
    width, height = img.size
    box = (max(left, 0.0), max(top, 0.0), min(right, width), min(bottom, height))
    out = img.resize(size, resample, box=box)
    return out if out.mode == "RGB" else out.convert("RGB")  # greyscale, CMYK -> RGB after the resize


# torchvision 0.29 deprecates its image decoders (for TorchCodec) with a warning on every call.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def tensor_decode_crop(img: Image.Image, box: Box, size: tuple[int, int]) -> torch.Tensor | None:
    """The crop via torchvision's libjpeg-turbo decode and uint8 antialiased resize (faster
    than PIL's when no DCT downscale applies), or None where PIL must do it: not a plain
    RGB/greyscale JPEG, or no end-of-image marker (a truncated file: PIL reports it, libjpeg would
    fill it with grey)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if img.format != "JPEG" or img.mode not in ("RGB", "L") or getattr(img, "decoderconfig", ()) or img.fp is None:
        return None
    img.fp.seek(0)
    data = img.fp.read()
    if not data.rstrip(b"\0\r\n ")[-2:] == b"\xff\xd9":
        return None
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    left, top, right, bottom = (int(v) for v in box)
    return v2.functional.resized_crop(image, top, left, bottom - top, right - left, [size[1], size[0]], antialias=True)


def to_chw_uint8(img: Image.Image) -> torch.Tensor:
    """uint8 CHW view of an HWC copy: `collate` stacks the HWC memory, giving NHWC batches."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def read_encoded(path: str) -> torch.Tensor:
    """The file's bytes as 1-D uint8, for `data.decode=gpu`."""
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
