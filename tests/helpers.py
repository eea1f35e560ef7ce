"""Helpers shared by the data tests: photo-like images, odd datasets, ILSVRC2012-shaped archives."""

from __future__ import annotations

import io
import tarfile

import numpy as np
from PIL import Image

from conftest import TINY

TINY_FOLDER = [o for o in TINY if not o.startswith("data.generate.")]  # TINY for a dataset on disk
WNIDS = ["n00000001", "n00000002", "n00000003"]
SMALL = {"train": 16, "val": 6, "classes": 3}


def photo(width=1200, height=900, seed=0) -> Image.Image:
    """A smooth photo-like RGB image (gradients + a few shapes): JPEG-friendly, not flat."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 100 * np.sin(x / (60 + 20 * c) + rng.uniform(0, 6)) * np.cos(y / (80 + 10 * c)) for c in range(3)], -1)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def save_jpeg(path, img=None, **kw):
    (img or photo()).save(path, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return path


def odd_dataset(root, truncated=True):
    """3 classes in ImageFolder layout with the odd files real datasets hold."""
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01", "n02", "n03"]):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(4):
                save_jpeg(d / f"{wnid}_{i}.JPEG", photo(160, 120, seed=c * 10 + i))
        d = root / split / "n01"
        photo(150, 100, seed=7).convert("CMYK").save(d / "cmyk.JPEG", format="JPEG")
        photo(150, 100, seed=8).convert("L").save(d / "grey.JPEG", format="JPEG")
        photo(150, 100, seed=9).save(d / "png_named.JPEG", format="PNG")
        (d / ".DS_Store").write_bytes(b"\0junk")
        (d / "._n01_0.JPEG").write_bytes(b"\0\5\26\7appledouble")
        (d / "notes.txt").write_text("not an image")
        (root / split / ".ipynb_checkpoints").mkdir()
    (root / "train" / "n02" / "empty_sub").mkdir()  # a stray directory inside a class
    if truncated:
        good = (root / "train" / "n02" / "n02_0.JPEG").read_bytes()
        (root / "train" / "n02" / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root


def data_config(compose, root, *extra):
    return compose(*TINY_FOLDER, "data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
                   "data.eval_batch_size=8", "data.num_workers=0", *extra)


def jpeg_bytes(img, fmt="JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_ilsvrc(src):
    """ILSVRC2012 layout in miniature: a train tar of per-class tars, a flat val tar, a label list."""
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(4):
                    add(tar, f"{wnid}_{i}.JPEG", jpeg_bytes(photo(160, 120, seed=10 * c + i), quality=90))
                if c == 0:
                    add(tar, f"{wnid}_cmyk.JPEG", jpeg_bytes(photo(130, 100, seed=91).convert("CMYK")))
                    add(tar, f"{wnid}_grey.JPEG", jpeg_bytes(photo(130, 100, seed=92).convert("L")))
                    add(tar, f"{wnid}_png.JPEG", jpeg_bytes(photo(130, 100, seed=93), fmt="PNG"))
                if c == 1:
                    good = jpeg_bytes(photo(160, 120, seed=94))
                    add(tar, f"{wnid}_truncated.JPEG", good[: len(good) // 3])
            add(outer, f"{wnid}.tar", inner.getvalue())
    labels = []
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
        for n in range(1, 7):
            add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", jpeg_bytes(photo(140, 110, seed=100 + n)))
            labels.append(f"ILSVRC2012_val_{n:08d}.JPEG {n % 3}")
    (src / "ILSVRC2012_val_labels.txt").write_text("\n".join(labels) + "\n")
    return src


def prepared_imagenet(tmp_path):
    """(SRC, DEST): the miniature archives and the ImageFolder tree `prepare` made of them."""
    from mobilenet_train.data.prepare import prepare

    src = make_ilsvrc(tmp_path / "src")
    dest = tmp_path / "imagenet"
    r = prepare(src, dest, expect=SMALL, progress=False)
    assert r["problems"] == [] and (r["train"], r["val"], r["classes"]) == (16, 6, 3)
    return src, dest
