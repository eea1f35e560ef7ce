"""mobilenet-data prepare / pack on small ILSVRC2012-shaped tars, and training from the shards."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mobilenet_train.datatools import prepare
from mobilenet_train.errors import UserError
from mobilenet_train.shards import ShardFiles, ShardStream, pack, read_index
from test_data import TINY_FOLDER, photo

WNIDS = ["n00000001", "n00000002", "n00000003"]
SMALL = {"train": 16, "val": 6, "classes": 3}


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


@pytest.fixture
def prepared(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    dest = tmp_path / "imagenet"
    r = prepare(src, dest, expect=SMALL, progress=False)
    assert r["problems"] == [] and (r["train"], r["val"], r["classes"]) == (16, 6, 3)
    return src, dest


def test_prepare_cli_writes_imagefolder_layout_and_checks_counts(cli, tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    dest = tmp_path / "imagenet"
    proc = cli("mobilenet-data", "prepare", str(src), str(dest), "--expect-train", "16", "--expect-val", "6",
               "--expect-classes", "3", "--no-progress", cwd=tmp_path)
    assert "16 train and 6 val images, 3 classes" in proc.stdout and "complete" in proc.stdout
    assert sorted(p.name for p in (dest / "train").iterdir()) == WNIDS
    assert len(list((dest / "train" / WNIDS[0]).glob("*.JPEG"))) == 7
    assert (dest / "val" / WNIDS[1] / "ILSVRC2012_val_00000001.JPEG").is_file()  # label 1 % 3
    with Image.open(dest / "train" / WNIDS[0] / f"{WNIDS[0]}_png.JPEG") as im:
        assert im.format == "PNG"  # bytes copied as they are; the loader and pack handle it
    # The official counts are the default: a small set is reported as incomplete, exit status 1.
    proc = cli("mobilenet-data", "prepare", str(src), str(dest), "--no-progress", cwd=tmp_path, check=False)
    assert proc.returncode == 1
    assert "missing: train: 16 images, expected 1,281,167" in proc.stdout
    assert "incomplete" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_prepare_resumes_and_reports_what_is_missing(prepared, tmp_path):
    src, dest = prepared
    kept = dest / "train" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG"
    before = kept.stat().st_mtime_ns
    (dest / "val" / WNIDS[0] / "ILSVRC2012_val_00000003.JPEG").unlink()
    lost = dest / "train" / WNIDS[0] / f"{WNIDS[0]}_1.JPEG"
    lost.write_bytes(lost.read_bytes()[:100])  # interrupted mid-file, marker not yet written
    (dest / "train" / WNIDS[0] / ".complete").unlink()
    r = prepare(src, dest, expect=SMALL, progress=False)
    assert r["problems"] == [] and r["train"] == 16 and r["val"] == 6
    assert lost.stat().st_size > 100 and kept.stat().st_mtime_ns == before  # finished classes were skipped
    # A label for an image the tar lacks: reported by name.
    labels = tmp_path / "labels.txt"
    labels.write_text((src / "ILSVRC2012_val_labels.txt").read_text() + "ILSVRC2012_val_00000007.JPEG 2\n")
    r = prepare(src, dest, val_labels=labels, expect=SMALL, progress=False)
    assert any("ILSVRC2012_val_00000007.JPEG" in p and "not in DEST" in p for p in r["problems"])
    r = prepare(src, dest, expect={"train": 20, "val": 6, "classes": 4}, progress=False)
    assert "train: 16 images, expected 20" in r["problems"] and "3 classes, expected 4" in r["problems"]


def test_prepare_with_devkit_ground_truth(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    (src / "ILSVRC2012_val_labels.txt").unlink()
    id_order = [WNIDS[2], WNIDS[0], WNIDS[1]]  # ILSVRC2012_IDs are not in sorted-wnid order
    truth = "\n".join(str(1 + n % 3) for n in range(1, 7)) + "\n"
    with tarfile.open(src / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        add(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", truth.encode())
    (tmp_path / "ids.txt").write_text("\n".join(id_order))
    dest = tmp_path / "imagenet"
    r = prepare(src, dest, id_wnids=tmp_path / "ids.txt", expect=SMALL, progress=False)
    assert r["problems"] == []
    assert (dest / "val" / id_order[1 + 1 % 3 - 1] / "ILSVRC2012_val_00000001.JPEG").is_file()
    with pytest.raises(UserError, match="no validation labels"):
        (src / "ILSVRC2012_devkit_t12.tar.gz").unlink()
        prepare(src, tmp_path / "other", expect=SMALL, progress=False)


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
    proc = cli("mobilenet-train", *TINY_FOLDER, "data=imagenet_shards", f"data.root={tmp_path}", "data.num_classes=3",
               f"hydra.run.dir={tmp_path / 'bad'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "has no index.json" in proc.stderr
