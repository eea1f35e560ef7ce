"""Samples and batches: collate's uint8 channels_last batches."""

from __future__ import annotations

import torch

from mobilenet_train.data import collate


def test_collate_gives_channels_last_uint8_batches():
    batch = collate([(torch.full((3, 4, 5), i, dtype=torch.uint8), i) for i in range(3)])
    images, targets = batch
    assert images.shape == (3, 3, 4, 5) and images.is_contiguous(memory_format=torch.channels_last)
    assert images[2].eq(2).all() and targets.tolist() == [0, 1, 2]
