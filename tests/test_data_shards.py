"""Reading shards: the training stream's determinism and resume, and training one epoch from shards."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_FOLDER, prepared_imagenet, run_main
from torch.utils.data import DataLoader

from mobilenet_train.data import ShardStream
from mobilenet_train.data.pack import pack


@pytest.fixture
def prepared(tmp_path):
    return prepared_imagenet(tmp_path)


def keys(batch):
    return [s.path for s in batch]


def stream_keys(stream, epoch, start=0, workers=0, batch=2):
    stream.configure(batch_size=batch, num_workers=workers, seed=7)
    stream.set_epoch(epoch, start)
    loader = DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=keys)
    out = [k for b in loader for k in b]
    assert len(out) == len(stream)
    return out


def test_shard_stream_is_deterministic_per_epoch_and_resumes(prepared, tmp_path):
    _, dest = prepared
    shards = tmp_path / "shards"
    pack(dest, shards, max_side=64, quality=90, shard_size=4, workers=1, progress=False, splits=["train"])
    stream = ShardStream(shards, "train", transform=lambda im: torch.zeros(3, 2, 2, dtype=torch.uint8), buffer_size=3)
    e0 = stream_keys(stream, 0)
    assert len(e0) == 14 and len(set(e0)) == 14  # 15 images, whole batches of 2, no repeats
    assert stream_keys(stream, 0) == e0 and stream_keys(stream, 1) != e0
    assert stream_keys(stream, 0, start=4) == e0[4:]  # mid-epoch resume skips what was trained
    # Two loader workers: the same batches whatever the process timing; a resumed epoch yields
    # exactly the batches not yet trained (the loader may interleave its workers differently).
    # Each worker reads its own shards and yields a fixed share: one whose shards hold fewer
    # images than its share starts over on them (here 7 images for 8 places: one repeat).
    w0 = stream_keys(stream, 0, workers=2)
    assert stream_keys(stream, 0, workers=2) == w0 and len(set(w0)) >= 13
    assert sorted(stream_keys(stream, 0, start=6, workers=2)) == sorted(w0[6:])
    # Two ranks: equal shares, disjoint.
    shares = []
    for rank in range(2):
        stream.configure(batch_size=2, num_workers=0, seed=7, rank=rank, world_size=2)
        stream.set_epoch(0)
        shares.append([s.path for s in stream])
    assert len(shares[0]) == len(shares[1]) == 6 and not set(shares[0]) & set(shares[1])


def test_train_one_epoch_from_shards(prepared, cli, tmp_path):
    _, dest = prepared
    shards = tmp_path / "shards"
    cli("mobilenet-data", "pack", str(dest), str(shards), "--max-side", "64", "--shard-size", "4", "--workers", "1",
        "--no-progress", cwd=tmp_path)
    run = tmp_path / "run"
    cli("mobilenet-train", *TINY_FOLDER, "data=imagenet_shards", f"data.root={shards}", "data.num_classes=3",
        "data.batch_size=4", "data.num_workers=1", f"hydra.run.dir={run}", cwd=tmp_path)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["epoch"] == 1 and metrics[-1]["step"] == 3  # 15 images // 4
    assert metrics[-1]["val_num_images"] == 6 and metrics[-1]["bad_images"] == 0
    proc = run_main("mobilenet-train", *TINY_FOLDER, "data=imagenet_shards", f"data.root={tmp_path}",
                    "data.num_classes=3", f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "has no index.json" in proc.stderr
