"""`mobilenet-data pack`: an ImageFolder tree -> WebDataset tar shards (the format: shards.py).

Images are re-encoded as RGB JPEGs with the shorter side capped (small RGB JPEGs are copied),
shuffled across shards, and written one shard at a time to a temporary name that is renamed
when complete, so an interrupted run resumes by keeping the shards it finished. Images that
cannot be read are left out and listed in index.json ("skipped"); SHARDS/skipped.json keeps
that list per shard, so a resumed run still lists what the shards it kept left out.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from contextlib import contextmanager
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from ..errors import UserError
from .folders import ImageFiles
from .samples import describe_error
from .shards import INDEX

SKIPPED = "skipped.json"  # {shard name: [{"path", "reason"}, ...]}


def write_shard(path: Path, records) -> int:
    """(key, jpeg bytes, class) records -> one tar, written to a temp file and renamed."""
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, target in records:
            for ext, payload in (("jpg", data), ("cls", str(target).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(payload), 0o644, 0
                tar.addfile(info, io.BytesIO(payload))
            count += 1
    os.replace(tmp, path)
    return count


def reencode(path: str, max_side: int, quality: int) -> bytes:
    """JPEG bytes of `path` with the shorter side capped at `max_side`, RGB; small RGB JPEGs are kept as they are."""
    with Image.open(path) as img:
        width, height = img.size
        short = min(width, height)
        if img.format == "JPEG" and img.mode == "RGB" and short <= max_side:
            img.load()  # must decode: a truncated file fails here, not in training
            with open(path, "rb") as f:
                return f.read()
        scale = min(1.0, max_side / short)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if img.format == "JPEG":
            # DCT-domain pre-shrink, still >= size
            img.draft(img.mode if img.mode in ("RGB", "L", "CMYK") else None, size)
        img = img.convert("RGB")
        if img.size != size:
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=quality)
        return out.getvalue()


def _encode_job(job):
    path, target, key, max_side, quality = job
    try:
        return key, reencode(path, max_side, quality), target, None
    except Exception as e:  # noqa: BLE001 - reported and skipped
        return key, None, target, (path, describe_error(e))


def count_records(path: Path) -> int:
    with tarfile.open(path, mode="r:") as tar:
        return sum(1 for m in tar if m.isfile() and m.name.endswith(".cls"))


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def _read_skipped(dest: Path) -> dict:
    try:
        return json.loads((dest / SKIPPED).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@contextmanager
def _encoder(workers: int):
    """A map of `_encode_job` over jobs: in this process, or in a pool of `workers` processes."""
    if workers <= 1:
        yield lambda jobs: map(_encode_job, jobs)
        return
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield lambda jobs: pool.imap(_encode_job, jobs, chunksize=16)
    finally:
        pool.close()
        pool.join()


def _check_args(src: Path, splits, shard_size: int, max_side: int, quality: int) -> list[str]:
    if not src.is_dir():
        raise UserError(f"{src} is not a directory: pass the DEST of mobilenet-data prepare (with train/ and val/)")
    splits = list(splits) if splits else [s for s in ("train", "val") if (src / s).is_dir()]
    if not splits:
        raise UserError(f"{src} has no train/ or val/ directory: pass the DEST of mobilenet-data prepare")
    if shard_size < 1 or not 16 <= max_side <= 4096 or not 1 <= quality <= 100:
        raise UserError("need --shard-size >= 1, 16 <= --max-side <= 4096 and 1 <= --quality <= 100")
    return splits


def _split_samples(src: Path, split: str, index: dict, seed: int) -> list:
    """The (path, class) samples of one split, shuffled across shards; the classes go to `index`."""
    try:
        folder = ImageFiles(str(src / split), transform=None)
    except FileNotFoundError as e:
        raise UserError(f"{src / split} holds no class directories ({e})") from None
    if index["classes"] is None:
        index["classes"] = folder.classes
    elif folder.classes != index["classes"]:
        raise UserError(f"{src}: train/ and {split}/ hold different class directories; both need the same classes")
    samples = list(folder.samples)
    random.Random(f"pack/{seed}/{split}").shuffle(samples)
    return samples


def _encode_shard(jobs, encode, bar) -> tuple[list, list]:
    """(records, skipped) of one shard's jobs."""
    records, skipped = [], []
    for key, data, target, problem in encode(jobs):
        if problem:
            skipped.append({"path": problem[0], "reason": problem[1]})
            bar.write(f"skipped {problem[0]}: {problem[1]}")
        else:
            records.append((key, data, target))
        bar.update(1)
    return records, skipped


def pack(src: Path, dest: Path, max_side: int = 320, quality: int = 90, splits=None, shard_size: int = 1000,
         seed: int = 0, workers: int | None = None, progress: bool = True) -> dict:
    """ImageFolder tree `src` (train/, val/) -> shards in `dest`; resumable (finished shards are kept)."""
    src, dest = Path(src), Path(dest)
    splits = _check_args(src, splits, shard_size, max_side, quality)
    dest.mkdir(parents=True, exist_ok=True)
    index = {"format": "webdataset", "keys": ["jpg", "cls"], "max_side": max_side, "quality": quality, "seed": seed,
             "classes": None, "splits": {}, "skipped": []}
    skipped = _read_skipped(dest)
    with _encoder(workers or os.cpu_count() or 1) as encode:
        for split in splits:
            samples = _split_samples(src, split, index, seed)
            shards = []
            bar = tqdm(total=len(samples), desc=f"pack {split}", unit="img", disable=not progress, dynamic_ncols=True)
            for k in range(0, len(samples), shard_size):
                name = f"{split}-{k // shard_size:06d}.tar"
                chunk = samples[k:k + shard_size]
                if (dest / name).is_file():  # finished by an interrupted run: kept
                    bar.update(len(chunk))
                else:
                    jobs = [(p, t, f"{split}_{k + i:08d}", max_side, quality) for i, (p, t) in enumerate(chunk)]
                    records, skipped[name] = _encode_shard(jobs, encode, bar)
                    _write_json(dest / SKIPPED, skipped)  # before the shard appears: a kept shard has its entry
                    write_shard(dest / name, records)
                index["skipped"] += skipped.get(name, [])
                shards.append({"name": name, "count": count_records(dest / name),
                               "bytes": (dest / name).stat().st_size})
            bar.close()
            index["splits"][split] = {"count": sum(s["count"] for s in shards), "shards": shards}
    _write_json(dest / INDEX, index)
    return index
