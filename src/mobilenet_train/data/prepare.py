"""`mobilenet-data prepare SRC DEST`: ILSVRC2012 tars in SRC -> DEST/train/<wnid>/, DEST/val/<wnid>/.

prepare streams from the tars (nothing is extracted to a temporary directory), writes each
file to a temporary name and renames it, and marks a finished class with DEST/train/<wnid>/.complete,
so an interrupted run resumes where it stopped (finished classes are skipped by seeking past
them in the outer tar). Image bytes are copied as they are: odd images (CMYK, greyscale, the
PNG named .JPEG) are handled by the loader and re-encoded by `pack`; unreadable ones are
reported by both.

Validation labels, first found of:
  --val-labels LIST      lines "ILSVRC2012_val_00000001.JPEG 65" (index into the sorted wnids;
                         SRC/ILSVRC2012_val_labels.txt is picked up by itself)
  --devkit TAR.GZ        ILSVRC2012_devkit_t12.tar.gz (SRC/ picked up by itself): its ground truth
                         holds ILSVRC2012_IDs whose wnids are in data/meta.mat, a MATLAB file read with
                         scipy when installed; without scipy pass --id-wnids FILE (the 1000 wnids in
                         ILSVRC2012_ID order, one a line) instead.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path

from ..errors import UserError
from .folders import is_image_file

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_LABELS = "ILSVRC2012_val_labels.txt"
OFFICIAL = {"train": 1_281_167, "val": 50_000, "classes": 1000}
COMPLETE = ".complete"
WNID = re.compile(r"^n\d{8}$")


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, out: Path) -> bool:
    """Write one member to `out` via a temp file; False when `out` is already complete."""
    if out.is_file() and out.stat().st_size == member.size:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tar.extractfile(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)
    return True


def _is_image_member(member: tarfile.TarInfo) -> bool:
    name = Path(member.name).name
    return member.isfile() and not name.startswith(".") and name.lower().endswith((".jpeg", ".jpg", ".png"))


def prepare_train(train_tar: Path, dest: Path, bar) -> list[str]:
    """The train tar (one tar per class) -> dest/train/<wnid>/; returns the wnids found."""
    wnids = []
    with tarfile.open(train_tar, mode="r:*") as outer:
        for member in outer:
            name = Path(member.name).name
            if not (member.isfile() and name.endswith(".tar")):
                continue
            wnid = name[: -len(".tar")]
            wnids.append(wnid)
            class_dir = dest / "train" / wnid
            marker = class_dir / COMPLETE
            if marker.is_file():  # finished in an earlier run: seek past it
                bar.update(int(marker.read_text() or 0))
                continue
            count = 0
            with tarfile.open(fileobj=outer.extractfile(member), mode="r:*") as inner:
                for image in inner:
                    if _is_image_member(image):
                        _copy_member(inner, image, class_dir / Path(image.name).name)
                        count += 1
                        bar.update(1)
            class_dir.mkdir(parents=True, exist_ok=True)
            tmp = class_dir / (COMPLETE + ".tmp")
            tmp.write_text(str(count))
            os.replace(tmp, marker)
    return wnids


def read_val_labels(path: Path, wnids: list[str]) -> dict[str, str]:
    """'ILSVRC2012_val_00000001.JPEG 65' lines -> {file name: wnid}."""
    labels = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            name, index = line.split()
            labels[name] = wnids[int(index)]
        except (ValueError, IndexError):
            raise UserError(f"{path} line {n} is not '<ILSVRC2012_val_%08d.JPEG> <class index 0..{len(wnids) - 1}>': "
                            f"{line.strip()[:60]!r}") from None
    return labels


def read_devkit_labels(devkit: Path, id_wnids: Path | None) -> dict[str, str]:
    """The devkit's ground truth (ILSVRC2012_IDs in val image order) -> {file name: wnid}."""
    with tarfile.open(devkit, mode="r:*") as tar:
        members = {Path(m.name).name: m for m in tar if m.isfile()}
        if "ILSVRC2012_validation_ground_truth.txt" not in members:
            raise UserError(f"{devkit} has no data/ILSVRC2012_validation_ground_truth.txt: pass the ILSVRC2012 devkit "
                            f"(ILSVRC2012_devkit_t12.tar.gz) or --val-labels LIST")
        truth = tar.extractfile(members["ILSVRC2012_validation_ground_truth.txt"]).read().decode().split()
        if id_wnids is not None:
            order = [w.strip() for w in id_wnids.read_text().split() if w.strip()]
        else:
            try:
                from scipy.io import loadmat
            except ImportError:
                raise UserError("reading the devkit's meta.mat needs scipy (pip install scipy); "
                                "or pass --id-wnids FILE "
                                "(the wnids in ILSVRC2012_ID order) or --val-labels LIST") from None
            import io

            meta = loadmat(io.BytesIO(tar.extractfile(members["meta.mat"]).read()), squeeze_me=True)["synsets"]
            by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in meta}
            order = [by_id[i] for i in range(1, len(by_id) + 1) if i in by_id]
    try:
        return {f"ILSVRC2012_val_{n:08d}.JPEG": order[int(i) - 1] for n, i in enumerate(truth, 1)}
    except (ValueError, IndexError):
        raise UserError(f"{devkit}: a ground-truth ID is outside the {len(order)} known wnids") from None


def prepare_val(val_tar: Path, dest: Path, labels: dict[str, str], bar) -> list[str]:
    """The flat val tar -> dest/val/<wnid>/; returns the member names that have no label."""
    unlabelled = []
    with tarfile.open(val_tar, mode="r:*") as tar:
        for member in tar:
            if not _is_image_member(member):
                continue
            name = Path(member.name).name
            wnid = labels.get(name)
            if wnid is None:
                unlabelled.append(name)
                continue
            _copy_member(tar, member, dest / "val" / wnid / name)
            bar.update(1)
    return unlabelled


def count_images(split_dir: Path) -> dict[str, int]:
    if not split_dir.is_dir():
        return {}
    return {d.name: sum(1 for f in d.iterdir() if f.is_file() and is_image_file(f.name))
            for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def check_dest(dest: Path, expect: dict, wnids: list[str], labels: dict[str, str] | None) -> list[str]:
    """What DEST lacks against the expected counts (and the archive's classes and val labels)."""
    problems = []
    train, val = count_images(dest / "train"), count_images(dest / "val")
    classes = sorted(set(wnids) or set(train) | set(val))
    for split, counts in (("train", train), ("val", val)):
        total = sum(counts.values())
        if expect.get(split) and total != expect[split]:
            problems.append(f"{split}: {total:,} images, expected {expect[split]:,}")
        empty = [w for w in classes if not counts.get(w)]
        if expect.get(split) and empty:
            problems.append(f"{split}: {len(empty)} classes without images ({', '.join(empty[:5])}"
                            f"{', ...' if len(empty) > 5 else ''})")
    if expect.get("classes") and len(classes) != expect["classes"]:
        problems.append(f"{len(classes)} classes, expected {expect['classes']}")
    if labels and expect.get("val"):
        missing = [n for n, w in labels.items() if not (dest / "val" / w / n).is_file()]
        if missing:
            problems.append(f"val: {len(missing):,} labelled images not in DEST ({', '.join(sorted(missing)[:3])}"
                            f"{', ...' if len(missing) > 3 else ''})")
    return problems


def _pick(src: Path, given, default_name: str) -> Path | None:
    """An archive given on the command line (it must exist), else SRC/default_name when it is there."""
    if given is not None:
        if not Path(given).is_file():
            raise UserError(f"{given} does not exist")
        return Path(given)
    path = src / default_name
    return path if path.is_file() else None


def _find_archives(src: Path, train_tar, val_tar, val_labels, devkit) -> tuple[Path | None, ...]:
    """The train tar, val tar, val labels and devkit to use; fails before anything is written when they fall short."""
    if not src.is_dir():
        raise UserError(f"SRC={src} is not a directory: pass the directory holding {TRAIN_TAR} and {VAL_TAR}")
    train_tar, val_tar = _pick(src, train_tar, TRAIN_TAR), _pick(src, val_tar, VAL_TAR)
    val_labels, devkit = _pick(src, val_labels, VAL_LABELS), _pick(src, devkit, DEVKIT)
    if train_tar is None and val_tar is None:
        raise UserError(f"{src} holds neither {TRAIN_TAR} nor {VAL_TAR}: pass the directory with the ILSVRC2012 "
                        f"archives (or --train-tar / --val-tar)")
    if val_tar is not None and val_labels is None and devkit is None:
        raise UserError(f"no validation labels: put {VAL_LABELS} ('ILSVRC2012_val_%08d.JPEG <index>' lines) "
                        f"or {DEVKIT} in {src}, or pass --val-labels / --devkit")
    return train_tar, val_tar, val_labels, devkit


def _labels(val_labels: Path | None, devkit: Path | None, id_wnids: Path | None, wnids: list[str],
            expect: dict) -> dict[str, str]:
    """{val file name: wnid} from the label list (needs the wnids) or else from the devkit."""
    if val_labels is None:
        return read_devkit_labels(devkit, id_wnids)
    if not wnids:
        raise UserError(f"--val-labels holds class indices; name the classes: prepare the train tar too, or "
                        f"pass --wnids FILE (the {expect.get('classes') or 1000} wnids in sorted order)")
    return read_val_labels(val_labels, wnids)


def prepare(src: Path, dest: Path, train_tar: Path | None = None, val_tar: Path | None = None,
            val_labels: Path | None = None, devkit: Path | None = None, id_wnids: Path | None = None,
            wnids_file: Path | None = None, expect: dict | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    src, dest = Path(src), Path(dest)
    expect = dict(OFFICIAL if expect is None else expect)
    train_tar, val_tar, val_labels, devkit = _find_archives(src, train_tar, val_tar, val_labels, devkit)
    labels = None
    dest.mkdir(parents=True, exist_ok=True)
    wnids: list[str] = []
    if train_tar is not None:
        bar = tqdm(total=expect.get("train") or None, desc="train", unit="img", disable=not progress,
                   dynamic_ncols=True)
        wnids = sorted(prepare_train(train_tar, dest, bar))
        bar.close()
    if wnids_file is not None:
        wnids = [w for w in Path(wnids_file).read_text().split() if w]
    unlabelled = []
    if val_tar is not None:
        labels = _labels(val_labels, devkit, id_wnids, wnids, expect)
        bar = tqdm(total=expect.get("val") or None, desc="val", unit="img", disable=not progress, dynamic_ncols=True)
        unlabelled = prepare_val(val_tar, dest, labels, bar)
        bar.close()
    problems = check_dest(dest, expect, wnids, labels)
    if unlabelled:
        problems.append(f"val: {len(unlabelled)} images in the tar have no label (e.g. {unlabelled[0]})")
    return {"dest": str(dest), "train": sum(count_images(dest / "train").values()),
            "val": sum(count_images(dest / "val").values()),
            "classes": len(wnids) or len(count_images(dest / "train")), "problems": problems}
