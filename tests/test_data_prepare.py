"""mobilenet-data prepare on small ILSVRC2012-shaped tars."""

from __future__ import annotations

import tarfile

import pytest
from helpers import SMALL, WNIDS, add, make_ilsvrc, prepared_imagenet
from PIL import Image

from mobilenet_train.data.prepare import prepare
from mobilenet_train.errors import UserError


@pytest.fixture
def prepared(tmp_path):
    return prepared_imagenet(tmp_path)


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
