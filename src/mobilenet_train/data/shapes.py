"""The embedded `shapes` dataset: procedurally drawn objects saved as real JPEG files.

Each image is one of ten shapes with a random colour, size, position and rotation, drawn
over a random gradient background cluttered with lines, dots and outlines. Images are
written in ImageFolder layout (``root/{train,val}/<class>/<name>.jpg``), so training on
them exercises exactly the loading path ImageNet uses. Generation is deterministic from
the seed and atomic: a directory appears complete (with ``manifest.json``) or not at all.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

CLASSES = (
    "arrow",
    "circle",
    "crescent",
    "cross",
    "heart",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)
FORMAT_VERSION = 1
SUPERSAMPLE = 2  # draw at 2x and downscale: anti-aliased edges like a photo


def default_root(seed: int, image_size: int, train_per_class: int, val_per_class: int) -> Path:
    cache = Path(os.environ.get("MOBILENET_TRAIN_CACHE", "~/.cache/mobilenet-train")).expanduser()
    return cache / f"shapes-v{FORMAT_VERSION}-s{seed}-{image_size}px-{train_per_class}x{val_per_class}"


def _regular_polygon(n: int, radius: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _outline(name: str, r: float) -> list[tuple[float, float]] | None:
    """Polygon (centred on 0,0, radius about r) for polygonal shapes; None for round ones."""
    if name == "square":
        return _regular_polygon(4, r, math.pi / 4)
    if name == "triangle":
        return _regular_polygon(3, r, -math.pi / 2)
    if name == "hexagon":
        return _regular_polygon(6, r)
    if name == "star":
        return [
            ((r if k % 2 == 0 else 0.42 * r) * math.cos(-math.pi / 2 + math.pi * k / 5),
             (r if k % 2 == 0 else 0.42 * r) * math.sin(-math.pi / 2 + math.pi * k / 5))
            for k in range(10)
        ]
    if name == "cross":
        a, b = 0.32 * r, r
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
                (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if name == "arrow":
        return [(-r, -0.25 * r), (0.1 * r, -0.25 * r), (0.1 * r, -0.7 * r), (r, 0),
                (0.1 * r, 0.7 * r), (0.1 * r, 0.25 * r), (-r, 0.25 * r)]
    if name == "heart":
        pts = []
        for k in range(48):
            t = 2 * math.pi * k / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x * r / 17, -y * r / 17))
        return pts
    return None


def _shape_mask(name: str, size: int, rng: random.Random) -> Image.Image:
    """A white-on-black mask of the shape at a random scale, rotation and position."""
    big = size * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    r = rng.uniform(0.28, 0.45) * big
    cx = rng.uniform(r * 0.8, big - r * 0.8)
    cy = rng.uniform(r * 0.8, big - r * 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    draw_shape(draw, name, cx, cy, r, angle, rng)
    return mask.resize((size, size), Image.BILINEAR)


def draw_shape(draw: ImageDraw.ImageDraw, name: str, cx: float, cy: float, r: float, angle: float,
               rng: random.Random) -> None:
    """Fill shape `name` of radius about `r` centred on (cx, cy), rotated by `angle`, in white."""
    poly = _outline(name, r)
    if poly is not None:
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in poly], fill=255)
    elif name == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif name == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        inner = r * rng.uniform(0.45, 0.65)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif name == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        off = r * 0.55
        ox, oy = cx + off * math.cos(angle), cy + off * math.sin(angle)
        draw.ellipse((ox - r * 0.9, oy - r * 0.9, ox + r * 0.9, oy + r * 0.9), fill=0)
    else:
        raise ValueError(f"unknown shape {name}")


def _random_colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randrange(256) for _ in range(3))


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _far_colour(rng: random.Random, avoid: tuple[int, int, int]) -> tuple[int, int, int]:
    """A random colour whose brightness differs clearly from `avoid` (the shape stays visible)."""
    for _ in range(100):
        colour = _random_colour(rng)
        if abs(_luma(colour) - _luma(avoid)) > 90:
            return colour
    return (255, 255, 255) if _luma(avoid) < 128 else (0, 0, 0)


def _background(size: int, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int]]:
    c0 = _random_colour(rng)
    c1 = tuple(min(255, max(0, v + rng.randint(-60, 60))) for v in c0)
    # Soft two-colour gradient in a random direction: rotate a larger gradient and crop
    # its centre, so no corner is left unfilled.
    big = math.ceil(size * 1.5)
    grad = Image.linear_gradient("L").resize((big, big)).rotate(rng.uniform(0, 360), Image.BILINEAR)
    lo = (big - size) // 2
    grad = grad.crop((lo, lo, lo + size, lo + size))
    img = Image.composite(Image.new("RGB", (size, size), c1), Image.new("RGB", (size, size), c0), grad)
    draw = ImageDraw.Draw(img)
    # Clutter: thin lines, dots and small outlines that are not the target class.
    for _ in range(rng.randint(1, 3)):
        pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(2)]
        draw.line(pts, fill=_random_colour(rng), width=1)
    for _ in range(rng.randint(2, 6)):
        x, y, d = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.8, 2)
        draw.ellipse((x - d, y - d, x + d, y + d), fill=_random_colour(rng))
    for _ in range(rng.randint(0, 1)):
        x, y, d = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(2, 5)
        draw.rectangle((x - d, y - d, x + d, y + d), outline=_random_colour(rng))
    mean = tuple((a + b) // 2 for a, b in zip(c0, c1))
    return img, mean


def draw_sample(name: str, size: int, rng: random.Random) -> Image.Image:
    img, bg_mean = _background(size, rng)
    fg = Image.new("RGB", (size, size), _far_colour(rng, bg_mean))
    img = Image.composite(fg, img, _shape_mask(name, size, rng))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return img


def generate(root: Path, seed: int = 0, image_size: int = 80, train_per_class: int = 500,
             val_per_class: int = 100) -> Path:
    """Write the dataset into `root` unless a complete copy is already there."""

    def write(tmp: Path) -> dict:
        jobs = [(split, n) for split, n in (("train", train_per_class), ("val", val_per_class))]
        from tqdm import tqdm

        with tqdm(total=len(CLASSES) * sum(n for _, n in jobs), desc=f"generating shapes into {root}", disable=None,
                  leave=False) as bar:
            for split, count in jobs:
                for name in CLASSES:
                    out = tmp / split / name
                    out.mkdir(parents=True)
                    for i in range(count):
                        # One RNG per image: any image can be regenerated on its own.
                        rng = random.Random(f"shapes-{seed}-{split}-{name}-{i}")
                        draw_sample(name, image_size, rng).save(out / f"{name}_{i:05d}.jpg", quality=90)
                    bar.update(count)
        return {"format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size, "classes": list(CLASSES),
                "train_per_class": train_per_class, "val_per_class": val_per_class}

    return generate_once(Path(root), "shapes", write)


def generate_once(root: Path, kind: str, write) -> Path:
    """`root` holding a complete generated dataset of `kind`: `write(tmp)` fills a temporary sibling and
    returns its manifest, then one rename publishes it; a complete copy already there is kept as it is."""
    if (root / "manifest.json").is_file():
        return root
    if root.exists() and any(root.iterdir()):
        from ..errors import UserError

        raise UserError(f"data.root={root} exists but holds no complete {kind} dataset (no manifest.json): "
                        f"remove it or point data.root at an empty or new directory")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    manifest = write(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    try:
        os.replace(tmp, root)
    except OSError:
        # Another process (e.g. another rank) finished first: keep its copy.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "manifest.json").is_file():
            raise
    return root
