"""data.decode=gpu's batch logic, run on the CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import odd_dataset

from mobilenet_train.data import FastRandomResizedCrop


def test_gpu_decode_path_logic_on_cpu(tmp_path):
    """GpuDecode's batching, fallbacks and replacement, run with torchvision's CPU decoder
    (the nvJPEG call is the same with device='cuda'; no GPU here)."""
    from mobilenet_train.data import GpuDecode, ImageFiles, build_loader

    root = odd_dataset(tmp_path / "ds", truncated=False)
    (root / "train" / "n03" / "garbage.JPEG").write_bytes(b"not a jpeg at all")
    torch.manual_seed(0)
    dataset = ImageFiles(str(root / "train"), FastRandomResizedCrop(32, (0.5, 1.0)), encoded=True)
    loader = build_loader(dataset, 16, False, 0, 0, max_bad_share=0.1,
                          gpu_decode=GpuDecode(dataset.transform, torch.device("cpu")))
    (images, targets), = list(loader)
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.uint8 and targets.shape == (16,)
    assert loader.bad_images == 1  # the garbage file; CMYK, greyscale and PNG decode through the fallback
    assert images.float().std(dim=(1, 2, 3)).min() > 1  # no blank images


@pytest.mark.parametrize("box", [(13.4, 7.25, 190.6, 141.9), (0.0, 0.0, 200.0, 150.0), (50.5, 20.0, 90.25, 60.0)])
def test_resize_box_is_pils_resize_with_a_box(box):
    """data.decode=gpu resamples as the CPU path's PIL does (fractional eval boxes, antialiasing, upscaling),
    and a mirrored crop is the mirror of the crop."""
    from PIL import Image

    from mobilenet_train.data import to_chw_uint8
    from mobilenet_train.data.gpu import FILTERS, resize_boxes

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 30, 40, generator=g), size=(150, 200), mode="bilinear")
    image = (smooth[0] * 255).round().to(torch.uint8)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    kernel = FILTERS[Image.Resampling.BILINEAR]
    for size in ((64, 64), (96, 128)):
        ours = resize_boxes([image, image], [box, box], list(size), kernel, flips=[False, True])
        ref = to_chw_uint8(pil.resize(size[::-1], Image.Resampling.BILINEAR, box=box))
        assert (ours[0].int() - ref.int()).abs().max() <= 1
        assert (ours[0].int() - ref.int()).abs().float().mean() < 0.05  # PIL rounds its fixed-point taps
        assert torch.equal(ours[1], ours[0].flip(-1))
