"""`data.decode=gpu`: the JPEG decode (nvJPEG) and the crop move to the GPU."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from ..errors import UserError
from .transforms import FastRandomResizedCrop


class GpuDecode:
    """`data.decode=gpu`: a batch of encoded JPEGs -> uint8 NCHW on the GPU.

    Workers only read file bytes; nvJPEG decodes the whole batch in one call
    (`torchvision.io.decode_jpeg(device='cuda')`), then each image is cropped and resized on
    the GPU with the same crop geometry as the CPU path (`box`). Images nvJPEG cannot decode
    (PNG named .JPEG, CMYK) go through the CPU decoder; unreadable ones are replaced by another
    image of the batch and reported as bad. Not exercised by the test suite (no GPU there):
    keep it this small.
    """

    def __init__(self, transform, device: torch.device):
        self.transform, self.device = transform, device
        self.size = list(transform.size[::-1])
        self.augment = getattr(transform, "augment", None)
        if self.augment is not None and not isinstance(self.augment, torch.nn.Module):
            # timm's RandAugment / AutoAugment work on PIL images, which live on the CPU.
            raise UserError("data.decode=gpu runs torchvision augmentations only: use data.auto_augment="
                            "trivialaugment, or data.decode=cpu for timm's RandAugment / AutoAugment")

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return decode_image(data, mode=ImageReadMode.RGB).to(self.device)

    def __call__(self, encoded: list[torch.Tensor], paths: list[str]) -> tuple[torch.Tensor, list]:
        from torchvision.io import ImageReadMode, decode_jpeg

        bad, images = [], []
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one non-JPEG or broken file fails the batch call: decode one by one
            for data, path in zip(encoded, paths):
                try:
                    images.append(self._decode_one(data))
                except RuntimeError as e:
                    images.append(None)
                    bad.append((path, f"{type(e).__name__}: {e}".splitlines()[0]))
        good = [im for im in images if im is not None]
        if not good:
            raise UserError(f"no image of a batch could be decoded (e.g. {bad[0][0]}: {bad[0][1]})")
        out = torch.empty(len(images), 3, *self.size, dtype=torch.uint8, device=self.device)
        flip = self.transform.hflip if isinstance(self.transform, FastRandomResizedCrop) else 0.0
        for i, img in enumerate(images):
            img = img if img is not None else good[i % len(good)]
            left, top, right, bottom = self.transform.box(img)
            crop = v2.functional.resized_crop(img, int(top), int(left), max(int(bottom - top), 1),
                                              max(int(right - left), 1), self.size, antialias=True)
            crop = crop.flip(-1) if flip > 0 and torch.rand(1).item() < flip else crop
            out[i] = self.augment(crop) if self.augment is not None else crop
        return out.contiguous(memory_format=torch.channels_last), bad
