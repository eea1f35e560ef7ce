"""Datasets on disk in ImageFolder layout (ROOT/<split>/<class>/<image>), and `fake` images.

`data.root` is resolved here: `shapes` and `shapes_attr` (the embedded datasets, shapes.py,
shapes_attr.py) are generated on first use; `imagenet`, `imagenet_shards` and `attributes` point at
a directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets

from ..errors import UserError
from . import shapes, shapes_attr
from .decode import read_encoded
from .samples import Sample, load_with_replacement

LAYOUT_HINT = ("expected ImageFolder layout ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, "
               "e.g. ROOT/train/n01440764/x.JPEG")


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


def is_image_file(path: str) -> bool:
    """Image extensions only; hidden files (.DS_Store, ._x.JPEG from macOS) are not images."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(datasets.folder.IMG_EXTENSIONS)


class ImageFiles(datasets.ImageFolder):
    """ImageFolder that decodes with `decode_crop`, skips hidden entries, keeps empty class
    directories as classes, and replaces images that fail to load (see samples.py)."""

    def __init__(self, root: str, transform, encoded: bool = False):
        super().__init__(root, transform=transform, is_valid_file=is_image_file, allow_empty=True)
        self.encoded = encoded

    def find_classes(self, directory):
        classes = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class directories in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}

    def load(self, index: int):
        path, target = self.samples[index]
        if self.encoded:
            return read_encoded(path), target
        with Image.open(path) as img:
            return self.transform(img), target

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> Sample:
        return load_with_replacement(self, index)


def is_shards(data_cfg) -> bool:
    return data_cfg.format == "shards"


def resolve_root(data_cfg) -> Path:
    """The dataset directory; for `shapes` and `shapes_attr`, generated on first use."""
    if data_cfg.name == "shapes":
        gen = data_cfg.generate
        root = Path(data_cfg.root).expanduser() if data_cfg.root else shapes.default_root(
            gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
        return shapes.generate(root, gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
    if data_cfg.name == "shapes_attr":
        g = data_cfg.shapes_attr
        sizes = (g.seed, g.image_size, g.train_images, g.unlabelled_images, g.val_images)
        root = Path(data_cfg.root).expanduser() if data_cfg.root else shapes_attr.default_root(*sizes)
        return shapes_attr.generate(root, *sizes)
    if not data_cfg.root:
        what = "SHARDS (written by mobilenet-data pack)" if is_shards(data_cfg) else f"/path/to/{data_cfg.name}"
        raise UserError(f"data.root is not set: pass data.root={what} "
                        f"({LAYOUT_HINT if not is_shards(data_cfg) else 'a directory with index.json'})")
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


def image_folder(root: Path, split: str, transform, encoded: bool = False) -> ImageFiles:
    path = split_dir(root, split)
    try:
        dataset = ImageFiles(str(path), transform, encoded=encoded)
    except FileNotFoundError as e:
        raise UserError(f"{path} holds no class directories with images ({e}); {LAYOUT_HINT}") from None
    if not len(dataset):
        raise UserError(f"{path} holds no images (class directories: {len(dataset.classes)}); {LAYOUT_HINT}")
    return dataset


def check_classes(dataset: Dataset, num_classes: int, where: str) -> list[str]:
    classes = list(dataset.classes)
    if len(classes) != num_classes:
        raise UserError(f"{where} has {len(classes)} classes but the model has {num_classes}: "
                        f"set data.num_classes={len(classes)} (or point data.root at the full dataset)")
    return classes
