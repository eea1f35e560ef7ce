"""Samples, batches and the bad-image policy.

Bad images (truncated, unreadable) are replaced by another sample, logged once and counted
(`ImageLoader.bad_images`, loaders.py); an epoch stops when more than `data.max_bad_share`
of it fails. A sample carries the (path, reason) of the images it replaced to the batch.
A read that fails the way a flaky network file system fails (EIO, a file gone for a moment) is
tried again first, after READ_RETRY_DELAYS; only then is the image bad.
"""

from __future__ import annotations

import errno
import time

import torch

from ..config.schema import DataConfig

DEFAULT_MAX_BAD_SHARE = DataConfig.max_bad_share  # the schema's default, for loaders built without a config
# A sample that fails is replaced by another; after this many failures in a row, a black image.
REPLACEMENT_TRIES = 8
# Seconds before each retry of a transient read error; then the image counts as bad.
READ_RETRY_DELAYS = (0.05, 0.25)
TRANSIENT = {errno.EIO, errno.ENOENT, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.ECONNRESET,
             errno.EHOSTDOWN, errno.ENOLCK}


class Sample(tuple):
    """(image, target) from a dataset, carrying the (path, reason) of images it replaced."""

    bad: tuple = ()
    path: str = ""

    def __new__(cls, image, target, bad=()):
        self = super().__new__(cls, (image, target))
        self.bad = tuple(bad)
        return self


class EncodedSample(Sample):
    """An encoded file (1-D uint8) for data.decode=gpu."""


class Batch:
    """A collated batch: unpacks as (images, targets); `bad` lists the replaced images.

    Images are uint8 NCHW views of NHWC memory (channels_last), or for `data.decode=gpu` a
    list of encoded files (`paths` name them for error reports).
    """

    def __init__(self, images, targets: torch.Tensor, bad=(), paths=()):
        self.images, self.targets, self.bad, self.paths = images, targets, list(bad), list(paths)

    def __iter__(self):
        return iter((self.images, self.targets))

    def pin_memory(self, device=None):
        if isinstance(self.images, torch.Tensor):
            self.images = self.images.pin_memory()
        self.targets = self.targets.pin_memory()
        return self


def collate_targets(samples: list) -> torch.Tensor:
    """Class indices -> int64 [N]; per-sample tensors (multi-label rows, NaN where missing) -> float32 [N, A]."""
    if isinstance(samples[0][1], torch.Tensor):
        return torch.stack([torch.as_tensor(s[1], dtype=torch.float32) for s in samples])
    return torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)


def collate(samples: list) -> Batch:
    """Stack uint8 images straight into (worker shared) memory as NHWC: one copy, channels_last."""
    targets = collate_targets(samples)
    bad = [b for s in samples for b in getattr(s, "bad", ())]
    first = samples[0][0]
    if first.dim() == 1:  # encoded files for data.decode=gpu
        return Batch([s[0] for s in samples], targets, bad, [getattr(s, "path", "") for s in samples])
    hwc = [s[0].permute(1, 2, 0) for s in samples]
    out = None
    if torch.utils.data.get_worker_info() is not None:
        # In a worker, stack into shared memory: the main process gets it without a copy.
        numel = sum(x.numel() for x in hwc)
        storage = hwc[0]._typed_storage()._new_shared(numel, device=hwc[0].device)
        out = hwc[0].new(storage).resize_(len(hwc), *hwc[0].shape)
    return Batch(torch.stack(hwc, 0, out=out).permute(0, 3, 1, 2), targets, bad)


def describe_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def blank_like(transform) -> torch.Tensor:
    """What a sample becomes when even its replacements fail (the bad-share check then stops the epoch)."""
    w, h = getattr(transform, "size", (32, 32))
    return torch.zeros(3, h, w, dtype=torch.uint8)


def load_retrying(dataset, index: int):
    """dataset.load(index), tried again after a transient read error (not after a decode error:
    PIL's errors carry no errno)."""
    for delay in READ_RETRY_DELAYS:
        try:
            return dataset.load(index)
        except OSError as e:
            if e.errno not in TRANSIENT:
                raise
            time.sleep(delay)
    return dataset.load(index)


def load_with_replacement(dataset, index: int) -> Sample:
    """dataset.load(index), or when that fails the next sample that loads; the failures ride along."""
    bad = []
    n = len(dataset)
    for attempt in range(REPLACEMENT_TRIES):
        try:
            image, target = load_retrying(dataset, index)
            sample = (EncodedSample if dataset.encoded else Sample)(image, target, bad)
            sample.path = dataset.describe(index)
            return sample
        except Exception as e:  # noqa: BLE001 - any decode failure: replace the sample
            tries = f" ({len(READ_RETRY_DELAYS) + 1} tries)" if getattr(e, "errno", None) in TRANSIENT else ""
            bad.append((dataset.describe(index), describe_error(e) + tries))
            index = (index * 7919 + 104729 + attempt) % n  # another sample, the same in every run
    blank = torch.zeros(0, dtype=torch.uint8) if dataset.encoded else blank_like(dataset.transform)
    # A multi-label dataset's blank carries no labels (all NaN: nothing to learn from it).
    return (EncodedSample if dataset.encoded else Sample)(blank, getattr(dataset, "blank_target", 0), bad)
