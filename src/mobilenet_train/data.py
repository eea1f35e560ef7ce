"""Datasets, transforms and loaders.

Workers decode and augment on the CPU and hand over uint8 CHW batches (4x less to copy
than float); normalisation, the float cast and channels_last happen on the device
(`DevicePreprocess`). Datasets: `imagenet` (ImageFolder layout), `shapes` (the embedded
dataset, generated on first use) and `fake` (random tensors, for benchmarks).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import datasets
from torchvision.transforms import v2

from . import shapes
from .errors import UserError

LAYOUT_HINT = "expected ImageFolder layout ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, e.g. ROOT/train/n01440764/x.JPEG"
NORMALIZATION = {
    # TF-slim / Keras MobileNet: x / 127.5 - 1
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


# ----------------------------------------------------------------------------- transforms


def train_transform(data_cfg, resolution: int) -> v2.Compose:
    return v2.Compose([
        v2.RandomResizedCrop(
            resolution,
            scale=(float(data_cfg.min_crop_area), 1.0),
            ratio=tuple(data_cfg.crop_ratio),
            interpolation=_interpolation(data_cfg),
            antialias=True,
        ),
        v2.RandomHorizontalFlip(float(data_cfg.hflip)),
        v2.PILToTensor(),  # uint8 CHW: normalised later, on the device
    ])


def eval_resize_size(resolution: int, crop_fraction: float) -> int:
    """Shorter side before the centre crop: 224 / 0.875 = 256."""
    return int(math.floor(resolution / crop_fraction))


class CentralFractionCrop(torch.nn.Module):
    """tf.image.central_crop: keep the central `fraction` of each side, whatever the aspect.

    Sides are rounded to whole pixels and centred as torchvision's center_crop does; this
    reproduces the reference accuracies of Google's models (../shared) to 0.2 points, where
    TensorFlow's truncated offsets (one pixel off for some images) land 0.3-0.4 points away.
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


def eval_transform(data_cfg, resolution: int) -> v2.Compose:
    preset = data_cfg.get("eval_preset", "default")
    fraction = float(data_cfg.eval_crop_fraction)
    if preset == "default":
        steps = [v2.Resize(eval_resize_size(resolution, fraction), interpolation=_interpolation(data_cfg), antialias=True),
                 v2.CenterCrop(resolution)]
    elif preset == "tf":
        steps = [CentralFractionCrop(fraction),
                 v2.Resize((resolution, resolution), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    elif preset == "keras":
        steps = [v2.Resize((resolution, resolution), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)]
    else:
        raise UserError(f"data.eval_preset={preset} is unknown: use one of {', '.join(EVAL_PRESETS)}")
    return v2.Compose([*steps, v2.PILToTensor()])


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


# ----------------------------------------------------------------------------- datasets


class FakeImages(Dataset):
    """Deterministic random uint8 images: benchmarks without decode or disk."""

    def __init__(self, size: int, num_classes: int, resolution: int, seed: int = 0):
        self.size, self.num_classes, self.resolution, self.seed = size, num_classes, resolution, seed
        self.classes = [f"class_{i:04d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randint(0, 256, (3, self.resolution, self.resolution), dtype=torch.uint8, generator=g)
        return image, index % self.num_classes


def resolve_root(data_cfg) -> Path:
    """The dataset directory; for `shapes`, generated on first use."""
    if data_cfg.name == "shapes":
        gen = data_cfg.generate
        root = Path(data_cfg.root).expanduser() if data_cfg.root else shapes.default_root(
            gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
        return shapes.generate(root, gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
    if not data_cfg.root:
        raise UserError(f"data.root is not set: pass data.root=/path/to/{data_cfg.name} ({LAYOUT_HINT})")
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={root} does not exist or is not a directory ({LAYOUT_HINT})")
    return root


def split_dir(root: Path, split: str) -> Path:
    path = root / split
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:5]
        held = f"it holds: {', '.join(found)}" if found else "it holds no directories"
        raise UserError(f"data.root={root} has no '{split}/' directory ({held}); {LAYOUT_HINT}")
    return path


def image_folder(root: Path, split: str, transform) -> datasets.ImageFolder:
    path = split_dir(root, split)
    try:
        return datasets.ImageFolder(str(path), transform=transform)
    except FileNotFoundError as e:
        raise UserError(f"{path} holds no class directories with images ({e}); {LAYOUT_HINT}") from None


def build_dataset(data_cfg, resolution: int, split: str, train: bool, root: Path | None = None) -> Dataset:
    """One split of the configured dataset; `train` selects the augmenting transform."""
    if data_cfg.name == "fake":
        size = data_cfg.fake.train_size if train else data_cfg.fake.val_size
        return FakeImages(size, int(data_cfg.num_classes), resolution, seed=0 if train else 1)
    root = root or resolve_root(data_cfg)
    transform = train_transform(data_cfg, resolution) if train else eval_transform(data_cfg, resolution)
    return image_folder(root, split, transform)


def check_classes(dataset: Dataset, num_classes: int, where: str) -> list[str]:
    classes = list(dataset.classes)
    if len(classes) != num_classes:
        raise UserError(f"{where} has {len(classes)} classes but the model has {num_classes}: "
                        f"set data.num_classes={len(classes)} (or point data.root at the full dataset)")
    return classes


# ----------------------------------------------------------------------------- loaders


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, split across ranks, resumable mid-epoch.

    Epoch e uses the permutation seeded by (seed, e), so every rank and every restart agrees;
    rank r takes every world_size-th index; `set_epoch(e, start)` skips the first `start`
    samples of this rank's share (those already trained on before an interruption).
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True,
                 keyed: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.keyed = keyed  # yield (epoch, index) keys for `SeededSamples`
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size % self.world_size:
            # Equal shares for every rank (as DistributedSampler): repeat a few samples.
            order += order[: self.world_size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        indices = self._indices()[self.start :]
        return iter([(self.epoch, i) for i in indices] if self.keyed else indices)

    def __len__(self) -> int:
        share = math.ceil(self.size / self.world_size) if self.pad else len(range(self.rank, self.size, self.world_size))
        return max(share - self.start, 0)


class SeededSamples(Dataset):
    """Augmentation as a pure function of (seed, epoch, index).

    Each sample is transformed under RNGs seeded from its key, so the random crop and flip of
    an image do not depend on which worker, rank or restart produced it: a run resumed mid-epoch,
    or spread over another number of processes, sees exactly the same augmented images.
    The caller's RNG states are restored afterwards (with 0 workers that is the training process).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 100_000_007 + index
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


def build_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                           keyed=train)
    return DataLoader(
        SeededSamples(dataset, seed) if train else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        # The loader draws its workers' base seed from here, not from the global RNG, which
        # would otherwise advance once per epoch (or once per restart) and shift dropout.
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass
class DataBundle:
    train_loader: DataLoader | None
    val_loader: DataLoader
    classes: list[str]


def per_process_batch(global_batch: int, world_size: int, accum_steps: int, what: str = "data.batch_size") -> int:
    parts = world_size * accum_steps
    if global_batch < 1 or global_batch % parts:
        raise UserError(f"{what}={global_batch} is not divisible by world size x trainer.accum_steps = "
                        f"{world_size} x {accum_steps}: choose a multiple of {parts}")
    return global_batch // parts


def build_data(cfg, resolution: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
               train: bool = True) -> DataBundle:
    """Train and val loaders for `cfg.data`; `train=False` builds only the val side (eval)."""
    data_cfg = cfg.data
    root = None if data_cfg.name == "fake" else resolve_root(data_cfg)
    num_classes = int(cfg.model.num_classes)
    if root is not None:
        for split in ([data_cfg.train_split] if train else []) + [data_cfg.val_split]:
            split_dir(root, split)  # report a missing split before anything is read
    val_set = build_dataset(data_cfg, resolution, data_cfg.val_split, train=False, root=root)
    classes = check_classes(val_set, num_classes, f"{data_cfg.val_split} split of data.root={root}")
    eval_batch = max(1, int(data_cfg.eval_batch_size) // world_size)
    val_loader = build_loader(val_set, eval_batch, False, int(data_cfg.num_workers), cfg.seed, rank, world_size, pin_memory)
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
        train_loader = build_loader(train_set, batch, True, int(data_cfg.num_workers), cfg.seed, rank, world_size, pin_memory)
    return DataBundle(train_loader, val_loader, classes)
