"""WebDataset tar shards: the format and the two readers (the writer is pack.py).

Format (what webdataset and timm's `wds/` reader read): plain tar files SHARDS/<split>-NNNNNN.tar
whose members come in pairs `<key>.jpg` (JPEG bytes, shorter side capped at --max-side) and
`<key>.cls` (the class index as ASCII digits); SHARDS/index.json holds the classes and the
image count and size of every shard. Samples are shuffled across shards when packing.

Readers (plain `tarfile`, no dependency: the format is simple and the resume/epoch logic
below needs control over exactly which records a worker reads):
- `ShardStream` (training): streams whole shards. Epoch e shuffles the shard order and a
  per-worker shuffle buffer with seeds from (seed, e); rank r / worker k of W ranks x K workers
  reads every (W*K)-th shard (or every (W*K)-th record when there are fewer shards than
  that). Each worker yields a fixed number of whole batches, so every rank gets the same
  number (DDP needs that) and `len` is exact; a worker whose shards hold fewer images than its
  share starts over on them, one with more stops early, so an epoch sees each image about once
  (packing writes equal shards, so the difference is at most about one shard per worker);
  `set_epoch(e, start)` skips the first `start` samples of this rank's share as the folder
  sampler does (without decoding them). Resume a run mid-epoch with the same data.num_workers
  and world size.
- `ShardFiles` (evaluation): random access by member offset, so every image is scored exactly
  once with the usual sampler.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from ..errors import UserError
from .samples import EncodedSample, Sample, describe_error, load_with_replacement

INDEX = "index.json"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
MAX_BAD_IN_A_ROW = 1000  # a stream of nothing but bad records is a broken dataset, not bad luck


# ----------------------------------------------------------------------------- index


def read_index(root: Path) -> dict:
    path = Path(root) / INDEX
    if not path.is_file():
        raise UserError(f"data.root={root} has no {INDEX}: point it at a directory written by "
                        f"`mobilenet-data pack DEST SHARDS` (or use data=imagenet for an ImageFolder tree)")
    try:
        index = json.loads(path.read_text())
        index["splits"], index["classes"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path} is not a shard index written by mobilenet-data pack: pack again") from None
    return index


def check_split(root: Path, split: str) -> dict:
    index = read_index(root)
    if split not in index["splits"]:
        raise UserError(f"the shards in {root} hold no '{split}' split "
                        f"(they hold: {', '.join(index['splits']) or 'none'}); "
                        f"pack a DEST with {split}/ in it")
    info = index["splits"][split]
    missing = [s["name"] for s in info["shards"] if not (Path(root) / s["name"]).is_file()]
    if missing:
        raise UserError(f"{len(missing)} shard(s) of {root}/{INDEX} are missing, e.g. {missing[0]}: "
                        f"run mobilenet-data pack again (it resumes)")
    return info


def split_key(name: str) -> tuple[str, str]:
    """'dir/n01_123.jpg' -> ('dir/n01_123', 'jpg'): webdataset's key is the path up to the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def iter_records(path: Path, fileobj=None):
    """(key, {ext: bytes}) for consecutive members of one tar, streamed."""
    key, record = None, {}
    with tarfile.open(path, mode="r|*", fileobj=fileobj) as tar:
        for member in tar:
            if not member.isfile():
                continue
            k, ext = split_key(member.name)
            if k != key:
                if record:
                    yield key, record
                key, record = k, {}
            record[ext] = tar.extractfile(member).read()
    if record:
        yield key, record


def decode_record(record: dict, transform, encoded: bool):
    """(image, class) of a record; raises on a broken one."""
    data = next((record[k] for k in IMAGE_KEYS if k in record), None)
    if data is None or "cls" not in record:
        raise ValueError(f"record has {sorted(record)}, not an image and a .cls")
    target = int(record["cls"])
    if encoded:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), target
    with Image.open(io.BytesIO(data)) as img:
        return transform(img), target


# ----------------------------------------------------------------------------- training stream


class ShardStream(IterableDataset):
    """Training samples streamed from the shards of one split (see the module docstring)."""

    def __init__(self, root: Path, split: str, transform, encoded: bool = False, buffer_size: int = 2000):
        self.root, self.split, self.transform, self.encoded = Path(root), split, transform, encoded
        index = read_index(root)
        info = check_split(root, split)
        self.classes = list(index["classes"])
        self.shards = [(s["name"], int(s["count"])) for s in info["shards"]]
        self.total = int(info["count"])
        self.buffer_size = max(1, buffer_size)
        self.epoch, self.start = 0, 0
        self.configure(batch_size=1, num_workers=0, seed=0)

    def configure(self, batch_size: int, num_workers: int, seed: int, rank: int = 0, world_size: int = 1,
                  limit: int | None = None) -> None:
        """The loader's batch size and worker count fix which records each worker yields."""
        self.batch_size, self.num_workers, self.seed = batch_size, max(num_workers, 1), seed
        self.rank, self.world_size, self.limit = rank, world_size, limit

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def num_batches(self) -> int:
        """Whole batches per rank per epoch (the same for every rank)."""
        return (min(self.limit or self.total, self.total) // self.world_size) // self.batch_size

    def __len__(self) -> int:
        return max(self.num_batches() - self.start // self.batch_size, 0) * self.batch_size

    def _records(self, slot: int, slots: int):
        """This slot's records, forever: its shards in an epoch-shuffled order, through a shuffle buffer."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        order = list(range(len(self.shards)))
        rng.shuffle(order)
        by_shard = len(order) >= slots
        mine = order[slot::slots] if by_shard else order
        buffer_rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")

        def stream():
            cycle = 0
            while True:
                shards = list(mine)
                if cycle:  # a slot whose shards ran out starts over, in another order
                    random.Random(f"{self.seed}/{self.epoch}/{slot}/{cycle}").shuffle(shards)
                count = 0
                for i in shards:
                    name = self.shards[i][0]
                    for j, (key, record) in enumerate(iter_records(self.root / name)):
                        if by_shard or j % slots == slot:
                            count += 1
                            yield f"{name}:{key}", record
                if count == 0:
                    return
                cycle += 1

        buffer = []
        for item in stream():
            if len(buffer) < self.buffer_size:
                buffer.append(item)
                continue
            i = buffer_rng.randrange(len(buffer))
            buffer[i], item = item, buffer[i]
            yield item
        buffer_rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        batch = self.batch_size
        mine = range(worker, self.num_batches(), workers)            # the loader's batches this worker makes
        quota = len(mine) * batch
        skip = len(range(worker, self.start // batch, workers)) * batch  # of those, already trained on
        done, bad = 0, []
        for name, record in self._records(self.rank * workers + worker, self.world_size * workers):
            if done >= quota:
                return
            if done < skip:
                done += 1
                continue
            try:
                image, target = decode_record(record, self.transform, self.encoded)
            except Exception as e:  # noqa: BLE001 - a broken record: the next one replaces it
                bad.append((name, describe_error(e)))
                if len(bad) >= MAX_BAD_IN_A_ROW:
                    raise RuntimeError(f"{len(bad)} broken records in a row in {self.root}, e.g. {bad[0]}") from None
                continue
            sample = (EncodedSample if self.encoded else Sample)(image, target, bad)
            sample.path = name
            yield sample
            done, bad = done + 1, []


# ----------------------------------------------------------------------------- evaluation by offset


class ShardFiles(Dataset):
    """The records of one split, read by offset (for evaluation: each exactly once, in order)."""

    def __init__(self, root: Path, split: str, transform, encoded: bool = False):
        self.root, self.transform, self.encoded = Path(root), transform, encoded
        index = read_index(root)
        info = check_split(root, split)
        self.classes = list(index["classes"])
        self.names = [s["name"] for s in info["shards"]]
        self.items = []  # (shard, key, image offset, image size, class)
        for s, name in enumerate(self.names):
            with tarfile.open(self.root / name, mode="r:") as tar:
                pending = {}
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_key(member.name)
                    entry = pending.setdefault(key, {})
                    if ext == "cls":
                        entry["cls"] = int(tar.extractfile(member).read())
                    elif ext in IMAGE_KEYS:
                        entry["image"] = (member.offset_data, member.size)
                    if "cls" in entry and "image" in entry:
                        self.items.append((s, key, *entry.pop("image"), entry.pop("cls")))
                        del pending[key]
        self.targets = [item[4] for item in self.items]
        self._files = {}

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}  # open files stay in their process

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int):
        s, key, offset, size, target = self.items[index]
        f = self._files.get(s)
        if f is None:
            f = self._files[s] = open(self.root / self.names[s], "rb")
        f.seek(offset)
        image, target = decode_record({"jpg": f.read(size), "cls": str(target).encode()}, self.transform, self.encoded)
        return image, target

    def describe(self, index: int) -> str:
        s, key = self.items[index][:2]
        return f"{self.names[s]}:{key}"

    def __getitem__(self, index: int):
        return load_with_replacement(self, index)
