"""The embedded detection dataset `shapes_det`: several of `shapes`' ten objects per image, their boxes
known by construction, written as real JPEG files plus COCO instances JSON, so `task=detection` trains
and evaluates with no download through exactly the COCO reader (coco.py):

    root/train/*.jpg  root/val/*.jpg  root/annotations/instances_{train,val}.json  root/manifest.json

Deterministic from its keys (`data.shapes_det.*`), and atomic: a complete directory or none.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from PIL import Image

from .shapes import CLASSES, _background, _far_colour, _shape_mask, generate_once

FORMAT_VERSION = 1
MAX_OVERLAP = 0.0  # objects never overlap, so every box is the whole visible object (a few tries, then fewer)


def default_root(seed: int, image_size: int, train_images: int, val_images: int, max_objects: int,
                 categories: int = len(CLASSES)) -> Path:
    cache = Path(os.environ.get("MOBILENET_TRAIN_CACHE", "~/.cache/mobilenet-train")).expanduser()
    return cache / (f"shapes_det-v{FORMAT_VERSION}-s{seed}-{image_size}px-{train_images}x{val_images}-o{max_objects}"
                    f"-c{categories}")


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area if area > 0 else 0.0


def _place(size: int, boxes: list, rng: random.Random) -> tuple[int, int, int] | None:
    """(x, y, side) of a square patch overlapping the placed objects little, or None."""
    for _ in range(10):
        side = int(size * rng.uniform(0.22, 0.5))
        x, y = rng.randrange(0, size - side + 1), rng.randrange(0, size - side + 1)
        if all(_iou((x, y, x + side, y + side), b) <= MAX_OVERLAP for b in boxes):
            return x, y, side
    return None


def draw_image(size: int, max_objects: int, rng: random.Random, categories: int = len(CLASSES)
               ) -> tuple[Image.Image, list[dict]]:
    """One image and its objects: [{label (0-based class index), box [x1, y1, x2, y2]}], each box the
    exact extent of the drawn object's pixels."""
    img, bg_mean = _background(size, rng)
    objects, patches = [], []
    for _ in range(rng.randint(1, max_objects)):
        spot = _place(size, patches, rng)
        if spot is None:
            continue
        x, y, side = spot
        label = rng.randrange(categories)
        mask = Image.new("L", (size, size), 0)
        mask.paste(_shape_mask(CLASSES[label], side, rng), (x, y))
        extent = mask.point(lambda v: 255 if v >= 128 else 0).getbbox()  # where the object is more than half
        if extent is None:
            continue
        img = Image.composite(Image.new("RGB", (size, size), _far_colour(rng, bg_mean)), img, mask)
        patches.append((x, y, x + side, y + side))
        objects.append({"label": label, "box": list(extent)})
    return img, objects


def _coco(split_images: list[tuple[str, list[dict]]], size: int, categories: int) -> dict:
    images, annotations = [], []
    for image_id, (name, objects) in enumerate(split_images, start=1):
        images.append({"id": image_id, "file_name": name, "width": size, "height": size})
        for obj in objects:
            x1, y1, x2, y2 = obj["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": obj["label"] + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES[:categories])]
    return {"images": images, "annotations": annotations, "categories": cats}


def _write_split(tmp: Path, split: str, count: int, seed: int, size: int, max_objects: int, categories: int) -> None:
    (tmp / split).mkdir(parents=True)
    written = []
    for i in range(count):
        rng = random.Random(f"shapes_det-{seed}-{split}-{i}")  # one RNG per image
        img, objects = draw_image(size, max_objects, rng, categories)
        name = f"{split}_{i:06d}.jpg"
        img.save(tmp / split / name, quality=90)
        written.append((name, objects))
    (tmp / "annotations").mkdir(exist_ok=True)
    (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(_coco(written, size, categories)))


def generate(root: Path, seed: int = 0, image_size: int = 160, train_images: int = 1200, val_images: int = 100,
             max_objects: int = 3, categories: int = len(CLASSES)) -> Path:
    """Write the dataset into `root` unless a complete copy is already there."""

    def write(tmp: Path) -> dict:
        for split, count in (("train", train_images), ("val", val_images)):
            _write_split(tmp, split, count, seed, image_size, max_objects, categories)
        return {"format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size,
                "classes": list(CLASSES[:categories]), "train_images": train_images, "val_images": val_images,
                "max_objects": max_objects}

    return generate_once(Path(root), "shapes_det", write)
