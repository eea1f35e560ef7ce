"""`data.decode=gpu`: the JPEG decode (nvJPEG) and the crop move to the GPU."""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision.transforms import v2

from ..errors import UserError
from .decode import Box, to_chw_uint8
from .transforms import FastRandomResizedCrop


class GpuDecode:
    """`data.decode=gpu`: a batch of encoded JPEGs -> uint8 NCHW on the GPU.

    Workers only read file bytes; nvJPEG decodes the whole batch in one call
    (`torchvision.io.decode_jpeg(device='cuda')`), then each image is cropped and resized on
    the GPU with the CPU path's crop geometry (`box`, fractional for the eval presets) and PIL's
    filter (`resize_box`), so GPU and CPU eval see the same pixels up to the JPEG decoders' rounding.
    Images nvJPEG cannot decode (PNG named .JPEG, CMYK) go through the CPU decoder; files without an
    end-of-image marker (truncated) are decoded by PIL as on the CPU path, which reports them; unreadable
    ones are replaced by another image of the batch and reported as bad. tests/test_cuda.py checks it on
    a GPU; test_data_gpu.py its logic on the CPU.
    """

    def __init__(self, transform, device: torch.device):
        self.transform, self.device = transform, device
        self.size = list(transform.size[::-1])
        self.filter = FILTERS.get(getattr(transform, "resample", Image.Resampling.BILINEAR))
        self.augment = getattr(transform, "augment", None)
        if self.augment is not None and not isinstance(self.augment, torch.nn.Module):
            # timm's RandAugment / AutoAugment work on PIL images, which live on the CPU.
            raise UserError("data.decode=gpu runs torchvision augmentations only: use data.auto_augment="
                            "trivialaugment, or data.decode=cpu for timm's RandAugment / AutoAugment")

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        if not _has_end_marker(data):  # nvJPEG and libjpeg fill a truncated file with grey; PIL reports it
            with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
                return to_chw_uint8(img.convert("RGB")).to(self.device)
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return decode_image(data, mode=ImageReadMode.RGB).to(self.device)

    def __call__(self, encoded: list[torch.Tensor], paths: list[str]) -> tuple[torch.Tensor, list]:
        from torchvision.io import ImageReadMode, decode_jpeg

        bad, images = [], []
        try:
            if not all(_has_end_marker(data) for data in encoded):
                raise RuntimeError("a truncated file")
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one non-JPEG or broken file fails the batch call: decode one by one
            for data, path in zip(encoded, paths):
                try:
                    images.append(self._decode_one(data))
                except (RuntimeError, OSError) as e:
                    images.append(None)
                    bad.append((path, f"{type(e).__name__}: {e}".splitlines()[0]))
        good = [im for im in images if im is not None]
        if not good:
            raise UserError(f"no image of a batch could be decoded (e.g. {bad[0][0]}: {bad[0][1]})")
        images = [img if img is not None else good[i % len(good)] for i, img in enumerate(images)]
        flip = self.transform.hflip if isinstance(self.transform, FastRandomResizedCrop) else 0.0
        boxes = [self.transform.box(img) for img in images]
        flips = [flip > 0 and torch.rand(1).item() < flip for _ in images]
        out = resize_boxes(images, boxes, self.size, self.filter, flips)
        if self.augment is not None:
            out = torch.stack([self.augment(crop) for crop in out])
        return out.contiguous(memory_format=torch.channels_last), bad


def _has_end_marker(data: torch.Tensor) -> bool:
    """Whether a JPEG's bytes end with its end-of-image marker (trailing padding allowed); other formats pass."""
    head = bytes(data[:2].tolist())
    if head != b"\xff\xd8":
        return True
    tail = bytes(data[-64:].tolist()).rstrip(b"\0\r\n ")
    return tail[-2:] == b"\xff\xd9"


def _triangle(x: torch.Tensor) -> torch.Tensor:
    return (1.0 - x.abs()).clamp_min(0.0)


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


# PIL's resampling filters (Resample.c): (function, support).
FILTERS = {Image.Resampling.BILINEAR: (_triangle, 1.0), Image.Resampling.BICUBIC: (_cubic, 2.0)}


def _weights(starts: list[float], ends: list[float], in_sizes: list[int], out_size: int, kernel,
             device) -> torch.Tensor:
    """(batch, out_size, max in_size) rows of PIL's antialiased filter for the source spans [start, end) of
    images `in_sizes` long, computed for the whole batch at once (a handful of kernels, not a few per image)."""
    fn, support = kernel
    f64 = dict(dtype=torch.float64, device=device)
    start, end = torch.tensor(starts, **f64)[:, None], torch.tensor(ends, **f64)[:, None]
    scale = (end - start) / out_size
    filterscale = scale.clamp_min(1.0)
    reach = support * filterscale
    centers = start + (torch.arange(out_size, **f64)[None, :] + 0.5) * scale  # (batch, out)
    x = torch.arange(max(in_sizes), **f64)
    w = fn((x - centers[..., None] + 0.5) / filterscale[..., None])
    # PIL's window: int(center -/+ support + 0.5), truncated toward zero and clipped to the image.
    lo = (centers - reach + 0.5).trunc().clamp_min(0)
    hi = torch.minimum((centers + reach + 0.5).trunc(), torch.tensor(in_sizes, **f64)[:, None])
    w = w * ((x >= lo[..., None]) & (x < hi[..., None]))
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-12)).float()


def resize_boxes(images: list[torch.Tensor], boxes: list[Box], size: list[int], kernel=None,
                 flips: list[bool] | None = None) -> torch.Tensor:
    """uint8 (N, 3, h, w): each uint8 CHW image's `box` (left, top, right, bottom; fractional) resized to
    `size` (h, w) as PIL's `Image.resize(size, filter, box=box)` does it: the same antialiased filter taps,
    the horizontal pass first, each rounded to uint8; mirrored where `flips` says. `kernel` None (a filter
    PIL has and this has not): torchvision's resized_crop on the whole-pixel box."""
    out_h, out_w = size
    flips = flips or [False] * len(images)
    clipped = []
    for img, (left, top, right, bottom) in zip(images, boxes):
        height, width = img.shape[-2:]
        clipped.append((max(float(left), 0.0), max(float(top), 0.0), min(float(right), width),
                        min(float(bottom), height)))
    device = images[0].device
    out = torch.empty(len(images), 3, out_h, out_w, dtype=torch.uint8, device=device)
    if kernel is None:
        for i, (img, (left, top, right, bottom)) in enumerate(zip(images, clipped)):
            crop = v2.functional.resized_crop(img, int(top), int(left), max(int(bottom - top), 1),
                                              max(int(right - left), 1), size, antialias=True)
            out[i] = crop.flip(-1) if flips[i] else crop
        return out
    widths, heights = [img.shape[-1] for img in images], [img.shape[-2] for img in images]
    wx = _weights([b[0] for b in clipped], [b[2] for b in clipped], widths, out_w, kernel, device)
    wy = _weights([b[1] for b in clipped], [b[3] for b in clipped], heights, out_h, kernel, device)
    if any(flips):  # a mirrored crop is the filter's output columns in reverse order
        mirror = torch.tensor(flips, device=device)[:, None, None]
        wx = torch.where(mirror, wx.flip(1), wx)
    for i, img in enumerate(images):
        x = (img.float() @ wx[i, :, :widths[i]].T + 0.5).floor_().clamp_(0, 255)  # horizontal pass, as PIL rounds
        out[i] = (wy[i, :, :heights[i]] @ x + 0.5).floor_().clamp_(0, 255)
    return out


def resize_box(image: torch.Tensor, box: Box, size: list[int], kernel=None) -> torch.Tensor:
    """One image's `resize_boxes`."""
    return resize_boxes([image], [box], size, kernel)[0]
