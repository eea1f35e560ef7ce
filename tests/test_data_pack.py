"""mobilenet-data pack: re-encoding, skipped images, the index, resuming."""

from __future__ import annotations

import pytest
from helpers import WNIDS, prepared_imagenet

from mobilenet_train.data import ShardFiles, read_index
from mobilenet_train.data.pack import pack


@pytest.fixture
def prepared(tmp_path):
    return prepared_imagenet(tmp_path)


def test_pack_reencodes_skips_bad_images_and_writes_an_index(prepared, tmp_path):
    _, dest = prepared
    shards = tmp_path / "shards"
    index = pack(dest, shards, max_side=64, quality=90, shard_size=5, workers=1, progress=False)
    assert index["classes"] == WNIDS
    assert index["splits"]["train"]["count"] == 15 and index["splits"]["val"]["count"] == 6
    assert len(index["splits"]["train"]["shards"]) == 4  # 16 images in shards of 5, the truncated one skipped
    assert [s["path"].endswith("_truncated.JPEG") for s in index["skipped"]] == [True]
    assert read_index(shards) == index
    files = ShardFiles(shards, "train", transform=lambda im: (im.format, im.mode, im.size))
    assert len(files) == 15
    for i in range(len(files)):
        (fmt, mode, size), target = files.load(i)
        assert fmt == "JPEG" and mode == "RGB" and min(size) == 64 and 0 <= target < 3  # CMYK/grey/PNG now RGB JPEG
    # Shuffled across shards: the first shard mixes classes.
    first = ShardFiles(shards, "val", transform=lambda im: 0)
    assert len({first.load(i)[1] for i in range(5)}) > 1
    # Resumable: finished shards are kept as they are.
    mtime = (shards / "train-000000.tar").stat().st_mtime_ns
    (shards / "train-000002.tar").unlink()
    again = pack(dest, shards, max_side=64, quality=90, shard_size=5, workers=1, progress=False)
    assert again["splits"] == index["splits"] and (shards / "train-000000.tar").stat().st_mtime_ns == mtime


def test_resumed_pack_keeps_the_skipped_images_of_finished_shards(prepared, tmp_path):
    """Defect (c) of issue 12: a resumed pack lost the skipped entries of the shards it kept."""
    _, dest = prepared
    shards = tmp_path / "shards"
    index = pack(dest, shards, max_side=64, quality=90, shard_size=5, workers=1, progress=False, splits=["train"])
    assert [s["path"].endswith("_truncated.JPEG") for s in index["skipped"]] == [True]
    # Interrupted before index.json was written, one shard (not the one with the skipped image) unfinished.
    (shards / "index.json").unlink()
    full = [s["name"] for s in index["splits"]["train"]["shards"] if s["count"] == 5]
    (shards / full[0]).unlink()
    again = pack(dest, shards, max_side=64, quality=90, shard_size=5, workers=1, progress=False, splits=["train"])
    assert again["skipped"] == index["skipped"] and again["splits"] == index["splits"]
    assert read_index(shards)["skipped"] == index["skipped"]
    # A run over finished shards only (nothing to encode) lists them too.
    assert pack(dest, shards, max_side=64, quality=90, shard_size=5, workers=1, progress=False,
                splits=["train"])["skipped"] == index["skipped"]
