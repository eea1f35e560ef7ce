"""Samples and batches: collate's uint8 channels_last batches."""

from __future__ import annotations

import torch

from mobilenet_train.data import collate


def test_collate_gives_channels_last_uint8_batches():
    batch = collate([(torch.full((3, 4, 5), i, dtype=torch.uint8), i) for i in range(3)])
    images, targets = batch
    assert images.shape == (3, 3, 4, 5) and images.is_contiguous(memory_format=torch.channels_last)
    assert images[2].eq(2).all() and targets.tolist() == [0, 1, 2]


class _Flaky:
    """A dataset whose sample 0 fails `fails` times with `error`, then loads."""

    encoded, transform = False, None

    def __init__(self, fails: int, error: OSError):
        self.fails, self.error, self.calls = fails, error, []

    def __len__(self):
        return 4

    def describe(self, index):
        return f"img{index}.jpg"

    def load(self, index):
        self.calls.append(index)
        if index == 0 and self.fails > 0:
            self.fails -= 1
            raise self.error
        return torch.full((3, 2, 2), index, dtype=torch.uint8), index


def test_transient_read_errors_are_retried_then_counted_as_bad(monkeypatch):
    import errno

    from mobilenet_train.data import samples

    monkeypatch.setattr(samples, "READ_RETRY_DELAYS", (0.0, 0.0))
    eio = OSError(errno.EIO, "Input/output error")
    once = _Flaky(1, eio)
    sample = samples.load_with_replacement(once, 0)
    assert sample[1] == 0 and sample.bad == () and once.calls == [0, 0]  # the retry read it: nothing lost
    always = _Flaky(99, eio)
    sample = samples.load_with_replacement(always, 0)
    assert sample[1] != 0 and always.calls[:3] == [0, 0, 0]  # 3 tries, then another sample
    assert sample.bad == (("img0.jpg", "OSError: [Errno 5] Input/output error (3 tries)"),)
    vanished = _Flaky(99, FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert samples.load_with_replacement(vanished, 0).bad[0][1].endswith("(3 tries)")
    broken = _Flaky(99, OSError("image file is truncated"))  # a decode error has no errno: no retry
    sample = samples.load_with_replacement(broken, 0)
    assert broken.calls.count(0) == 1 and "tries" not in sample.bad[0][1]
