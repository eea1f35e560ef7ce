"""data.decode=gpu's batch logic, run on the CPU."""

from __future__ import annotations

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
