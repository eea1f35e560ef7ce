"""Loaders: a split of the configured dataset -> batches of uint8 NCHW images.

Datasets (`data.name`): `imagenet` (ImageFolder layout, folders.py), `imagenet_shards`
(WebDataset tar shards written by `mobilenet-data pack`, shards.py), `shapes` (the embedded
dataset, generated on first use, shapes.py) and `fake` (random tensors, for benchmarks).
`build_data` makes the train and val loaders of a run; `eval_loader` makes mobilenet-eval's
val loader for any folder of labelled images (what mobilenet-export scores with).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..errors import UserError
from .folders import FakeImages, check_classes, image_folder, is_shards, resolve_root, split_dir
from .gpu import GpuDecode
from .samplers import EpochSampler, SeededSamples
from .samples import DEFAULT_MAX_BAD_SHARE, collate
from .shards import ShardFiles, ShardStream, check_split
from .transforms import eval_transform, train_transform

log = logging.getLogger("mobilenet_train")

DECODE_MODES = ("cpu", "gpu")


class ImageLoader:
    """A DataLoader that yields (images, targets), counts and logs bad images, and stops an
    epoch in which more than `max_bad_share` of the images failed.

    Everything else (`sampler.set_epoch`, `batch_size`, `dataset`, `len`) is the DataLoader's;
    for shards, `sampler` is the stream itself (its `set_epoch(epoch, start)`).
    """

    def __init__(self, loader: DataLoader, sampler, max_bad_share: float = DEFAULT_MAX_BAD_SHARE,
                 gpu_decode: GpuDecode | None = None):
        self.loader, self.sampler, self.max_bad_share, self.gpu_decode = loader, sampler, max_bad_share, gpu_decode
        self.bad_images = 0        # this epoch (so far)
        self.bad_images_total = 0  # since the loader was built
        self._logged: set[str] = set()

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.bad_images = 0
        planned = max(len(self) * (self.loader.batch_size or 1), 1)
        for batch in self.loader:
            images, targets = batch
            bad = list(getattr(batch, "bad", ()))
            if self.gpu_decode is not None:
                images, gpu_bad = self.gpu_decode(images, batch.paths)
                bad += gpu_bad
            if bad:
                self._count(bad, planned)
            yield images, targets

    def _count(self, bad: list, planned: int) -> None:
        for path, reason in bad:
            if path not in self._logged:
                self._logged.add(path)
                log.warning("bad image replaced by another sample: %s (%s)", path, reason)
        self.bad_images += len(bad)
        self.bad_images_total += len(bad)
        if self.bad_images > self.max_bad_share * planned:
            path, reason = bad[-1]
            raise UserError(f"{self.bad_images} of this epoch's {planned} images failed to load, more than "
                            f"data.max_bad_share={self.max_bad_share:g} (last: {path}: {reason}); repair the dataset "
                            f"(e.g. mobilenet-data prepare again) or raise data.max_bad_share")


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker; python's `random` (used by some transforms) must follow it.
    random.seed(torch.initial_seed() % 2**32)


def build_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 max_bad_share: float = DEFAULT_MAX_BAD_SHARE, gpu_decode: GpuDecode | None = None,
                 collate_fn=collate) -> ImageLoader:
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate_fn,
                  prefetch_factor=4 if num_workers > 0 else None, worker_init_fn=_seed_worker,
                  # The loader draws its workers' base seed from here, not from the global RNG, which
                  # would otherwise advance once per epoch (or once per restart) and shift dropout.
                  generator=torch.Generator().manual_seed(seed))
    if isinstance(dataset, IterableDataset):
        # The stream splits itself per rank and worker; workers are rebuilt each epoch so they
        # see the epoch set by `set_epoch` (persistent workers would keep a stale copy).
        dataset.configure(batch_size=batch_size, num_workers=num_workers, seed=seed, rank=rank, world_size=world_size)
        loader = DataLoader(dataset, drop_last=False, persistent_workers=False, **common)
        return ImageLoader(loader, dataset, max_bad_share, gpu_decode)
    # Training samples are keyed (epoch, index) and augmented under RNGs seeded from the key.
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                           keyed=train)
    loader = DataLoader(SeededSamples(dataset, seed) if train else dataset, sampler=sampler, drop_last=train,
                        persistent_workers=num_workers > 0, **common)
    return ImageLoader(loader, sampler, max_bad_share, gpu_decode)


def decode_mode(data_cfg) -> str:
    mode = str(data_cfg.decode)
    if mode not in DECODE_MODES:
        raise UserError(f"data.decode={mode} is unknown: use cpu or gpu")
    if mode == "gpu" and not torch.cuda.is_available():
        raise UserError("data.decode=gpu needs CUDA (nvJPEG), which is not available here: use data.decode=cpu")
    return mode


def build_dataset(data_cfg, resolution: int, split: str, train: bool, root: Path | None = None) -> Dataset:
    """One split of the configured dataset; `train` selects the augmenting transform."""
    if data_cfg.name == "fake":
        size = data_cfg.fake.train_size if train else data_cfg.fake.val_size
        return FakeImages(size, int(data_cfg.num_classes), resolution, seed=0 if train else 1)
    root = root or resolve_root(data_cfg)
    transform = train_transform(data_cfg, resolution) if train else eval_transform(data_cfg, resolution)
    encoded = decode_mode(data_cfg) == "gpu"
    if is_shards(data_cfg):
        if train:
            return ShardStream(root, split, transform, encoded=encoded,
                               buffer_size=int(data_cfg.shuffle_buffer))
        return ShardFiles(root, split, transform, encoded=encoded)
    return image_folder(root, split, transform, encoded=encoded)


@dataclass
class DataBundle:
    train_loader: ImageLoader | None
    val_loader: ImageLoader
    classes: list[str]


def per_process_batch(global_batch: int, world_size: int, accum_steps: int, what: str = "data.batch_size") -> int:
    parts = world_size * accum_steps
    if global_batch < 1 or global_batch % parts:
        raise UserError(f"{what}={global_batch} is not divisible by world size x trainer.accum_steps = "
                        f"{world_size} x {accum_steps}: choose a multiple of {parts}")
    return global_batch // parts


def run_loader(cfg, dataset: Dataset, batch: int, train: bool, rank: int = 0, world_size: int = 1,
               pin_memory: bool = False) -> ImageLoader:
    """build_loader with the run's workers, seed, data.max_bad_share and data.decode."""
    data_cfg = cfg.data
    gpu = decode_mode(data_cfg) == "gpu" and data_cfg.name != "fake"
    decoder = GpuDecode(dataset.transform, torch.device("cuda", torch.cuda.current_device())) if gpu else None
    return build_loader(dataset, batch, train, int(data_cfg.num_workers), cfg.seed, rank, world_size, pin_memory,
                        float(data_cfg.max_bad_share), decoder)


def build_data(cfg, resolution: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
               train: bool = True) -> DataBundle:
    """Train and val loaders for `cfg.data`; `train=False` builds only the val side (eval)."""
    data_cfg = cfg.data
    root = None if data_cfg.name == "fake" else resolve_root(data_cfg)
    num_classes = int(cfg.model.num_classes)
    if root is not None:
        for split in ([data_cfg.train_split] if train else []) + [data_cfg.val_split]:
            if is_shards(data_cfg):
                check_split(root, split)
            else:
                split_dir(root, split)  # report a missing split before anything is read

    def loader(dataset, batch, is_train):
        return run_loader(cfg, dataset, batch, is_train, rank, world_size, pin_memory)

    val_set = build_dataset(data_cfg, resolution, data_cfg.val_split, train=False, root=root)
    classes = check_classes(val_set, num_classes, f"{data_cfg.val_split} split of data.root={root}")
    eval_batch = max(1, int(data_cfg.eval_batch_size) // world_size)
    val_loader = loader(val_set, eval_batch, False)
    train_loader = None
    if train:
        train_set = build_dataset(data_cfg, resolution, data_cfg.train_split, train=True, root=root)
        train_classes = check_classes(train_set, num_classes, f"{data_cfg.train_split} split of data.root={root}")
        if train_classes != classes:
            raise UserError(f"data.root={root}: the {data_cfg.train_split}/ and {data_cfg.val_split}/ class "
                            f"directories differ; both must hold the same classes")
        batch = per_process_batch(int(data_cfg.batch_size), world_size, int(cfg.trainer.accum_steps))
        if len(train_set) < batch * world_size:
            raise UserError(f"the training split has {len(train_set)} images, fewer than one batch "
                            f"(data.batch_size={data_cfg.batch_size}): lower data.batch_size")
        train_loader = loader(train_set, batch, True)
    return DataBundle(train_loader, val_loader, classes)


def eval_loader(data_cfg, resolution: int, root, split: str | None = None, batch_size: int = 64,
                num_workers: int = 0) -> tuple[ImageLoader, list[str]]:
    """mobilenet-eval's val loader (uint8 NCHW batches) over any labelled image folder, and its classes.

    `root` is a dataset root holding `split` (default: data.val_split) or a split directory itself
    (ROOT/<class>/<image>); as in mobilenet-eval, empty class directories count as classes.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory of labelled images (ROOT/<class>/<image>)")
    split = split or str(data_cfg.val_split)
    if not (root / split).is_dir():
        root, split = root.parent, root.name  # root is the split directory
    dataset = image_folder(root, split, eval_transform(data_cfg, resolution))
    max_bad = float(data_cfg.max_bad_share)
    loader = build_loader(dataset, batch_size, False, num_workers, seed=0, max_bad_share=max_bad)
    return loader, list(dataset.classes)


def eval_images(data_cfg, resolution: int, paths) -> torch.Tensor:
    """Image files -> one uint8 NCHW batch, each framed as mobilenet-eval frames it."""
    transform = eval_transform(data_cfg, resolution)
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append((transform(img), 0))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from None
    return collate(images).images
