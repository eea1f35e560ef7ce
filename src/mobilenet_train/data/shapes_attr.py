"""The embedded multi-label dataset `shapes_attr`: one to three of `shapes`' ten objects per image, each
with its own colour and size, over `shapes`' cluttered backgrounds, and sixteen binary attributes per
image known by construction (ATTRIBUTES):

    has_<shape>   an object of that shape is in the image (one per shape of shapes.CLASSES)
    has_red, has_green, has_blue
                  an object's colour has that dominant channel (object colours are saturated: the
                  dominant channel is at least 170, the others below 110)
    has_large     an object's radius is above LARGE_RADIUS of the image side
    has_small     an object's radius is below SMALL_RADIUS of the image side
    many_objects  the image holds three objects

Written as real JPEG files on first use, deterministic from its keys (`data.shapes_attr.*`), atomic:

    root/train/*.jpg + labels.csv       labelled (CSV layout, see attributes.py); a deterministic
                                        MISSING_SHARE of its cells is left empty (missing labels)
    root/unlabelled/*.jpg               no labels: for distillation from a teacher (distill.alpha=1)
    root/val/*.jpg + labels.csv         labelled, complete
    root/manifest.json
"""

from __future__ import annotations

import csv
import math
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from .shapes import CLASSES, SUPERSAMPLE, _background, draw_shape, generate_once

FORMAT_VERSION = 2  # 2: larger objects (RADIUS)
COLOURS = ("red", "green", "blue")
ATTRIBUTES = (*(f"has_{c}" for c in CLASSES), *(f"has_{c}" for c in COLOURS), "has_large", "has_small",
              "many_objects")
MAX_OBJECTS = 3
RADIUS = (0.12, 0.26)  # object radius range, as a fraction of the image side
SMALL_RADIUS = 0.16    # has_small: below this; has_large: above LARGE_RADIUS; between: neither
LARGE_RADIUS = 0.22
MIN_GAP = 0.9          # centres at least this x (r1 + r2) apart: objects overlap a little at most
MISSING_SHARE = 0.03   # train/labels.csv: share of cells left empty
SPLITS = ("train", "unlabelled", "val")


def default_root(seed: int, image_size: int, train_images: int, unlabelled_images: int, val_images: int) -> Path:
    cache = Path(os.environ.get("MOBILENET_TRAIN_CACHE", "~/.cache/mobilenet-train")).expanduser()
    return cache / (f"shapes_attr-v{FORMAT_VERSION}-s{seed}-{image_size}px-{train_images}x{unlabelled_images}"
                    f"x{val_images}")


def _object_colour(rng: random.Random, avoid: tuple[int, int, int]) -> tuple[tuple[int, int, int], int]:
    """A saturated colour and its dominant channel, far enough from `avoid` (the background) to be seen."""
    for _ in range(100):
        channel = rng.randrange(3)
        colour = [rng.randrange(0, 110) for _ in range(3)]
        colour[channel] = rng.randrange(170, 256)
        if math.dist(colour, avoid) > 120:
            break
    return tuple(colour), channel


def _place(size: int, placed: list[tuple], rng: random.Random) -> tuple[float, float, float] | None:
    """(cx, cy, r) of a new object that keeps clear of the placed ones, or None after a few tries."""
    for _ in range(20):
        r = rng.uniform(*RADIUS) * size
        cx, cy = rng.uniform(r * 0.8, size - r * 0.8), rng.uniform(r * 0.8, size - r * 0.8)
        if all(math.dist((cx, cy), (x, y)) >= MIN_GAP * (r + q) for x, y, q in placed):
            return cx, cy, r
    return None


def draw_image(size: int, rng: random.Random) -> tuple[Image.Image, list[dict]]:
    """One image and its objects: [{shape, colour, channel (dominant: 0 red, 1 green, 2 blue), centre, radius}]
    (centre and radius in pixels)."""
    img, bg_mean = _background(size, rng)
    objects, placed = [], []
    for _ in range(rng.randint(1, MAX_OBJECTS)):
        spot = _place(size, placed, rng)
        if spot is None:
            continue
        cx, cy, r = spot
        shape = CLASSES[rng.randrange(len(CLASSES))]
        colour, channel = _object_colour(rng, bg_mean)
        mask = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
        draw_shape(ImageDraw.Draw(mask), shape, cx * SUPERSAMPLE, cy * SUPERSAMPLE, r * SUPERSAMPLE,
                   rng.uniform(0, 2 * math.pi), rng)
        img = Image.composite(Image.new("RGB", (size, size), colour), img, mask.resize((size, size), Image.BILINEAR))
        placed.append(spot)
        objects.append({"shape": shape, "colour": list(colour), "channel": channel, "centre": [cx, cy], "radius": r})
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.6)))
    return img, objects


def attributes(objects: list[dict], size: int) -> list[int]:
    """The 0/1 value of each of ATTRIBUTES for an image holding `objects`."""
    shapes = {o["shape"] for o in objects}
    channels = {o["channel"] for o in objects}
    radii = [o["radius"] / size for o in objects]
    return ([int(c in shapes) for c in CLASSES] + [int(k in channels) for k in range(len(COLOURS))]
            + [int(any(r > LARGE_RADIUS for r in radii)), int(any(r < SMALL_RADIUS for r in radii)),
               int(len(objects) == MAX_OBJECTS)])


def sample(seed: int, split: str, index: int, size: int) -> tuple[Image.Image, list[dict]]:
    """Image `index` of `split`, regenerated on its own (one RNG per image)."""
    return draw_image(size, random.Random(f"shapes_attr-{seed}-{split}-{index}"))


def _write_split(tmp: Path, split: str, count: int, seed: int, size: int) -> None:
    out = tmp / split
    out.mkdir(parents=True)
    rows = []
    for i in range(count):
        img, objects = sample(seed, split, i, size)
        name = f"{split}_{i:06d}.jpg"
        img.save(out / name, quality=90)
        cells = [str(v) for v in attributes(objects, size)]
        if split == "train":
            hide = random.Random(f"shapes_attr-{seed}-{split}-{i}-missing")
            cells = ["" if hide.random() < MISSING_SHARE else v for v in cells]
        rows.append([name, *cells])
    if split != "unlabelled":
        with open(out / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *ATTRIBUTES])
            writer.writerows(rows)


def generate(root: Path, seed: int = 0, image_size: int = 64, train_images: int = 2000,
             unlabelled_images: int = 6000, val_images: int = 500) -> Path:
    """Write the dataset into `root` unless a complete copy is already there."""

    def write(tmp: Path) -> dict:
        from tqdm import tqdm

        counts = dict(zip(SPLITS, (train_images, unlabelled_images, val_images)))
        for split in tqdm(SPLITS, desc=f"generating shapes_attr into {root}", disable=None, leave=False):
            _write_split(tmp, split, counts[split], seed, image_size)
        return {"format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size,
                "attributes": list(ATTRIBUTES), "train_images": train_images,
                "unlabelled_images": unlabelled_images, "val_images": val_images}

    return generate_once(Path(root), "shapes_attr", write)
