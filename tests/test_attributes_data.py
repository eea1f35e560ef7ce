"""Multi-label data: the CSV and CelebA label tables, bad rows, header problems, unlabelled training
folders, float targets through collate, and the embedded shapes_attr set."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from helpers import TINY_FOLDER, photo, save_jpeg
from PIL import Image

from mobilenet_train.config import compose as compose_config
from mobilenet_train.data import (
    AttributeImages,
    build_multilabel_data,
    collate,
    eval_transform,
    read_table,
    shapes_attr,
)
from mobilenet_train.data.attributes import check_rows
from mobilenet_train.errors import UserError

NAN = math.nan


def images(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        save_jpeg(folder / name, photo(40, 30, seed=i))
    return folder


MULTILABEL = ["task=multilabel", "optim.loss=bce", "distill.target=attributes"]


def attributes_config(compose, root, *extra):
    return compose(*TINY_FOLDER, *MULTILABEL, "data=attributes", f"data.root={root}", "data.num_classes=3",
                   "data.batch_size=2",
                   "data.eval_batch_size=4", "data.num_workers=0", *extra)


def csv_dataset(root, train_rows=None, val_rows=None):
    """ROOT/{train,val}/ with images a..d.jpg and a labels.csv over attributes x, y, z."""
    default = ["a.jpg,1,0,", "b.jpg,,1,0", "c.jpg,0,0,1", "d.jpg,1,1,1"]
    for split, rows in (("train", train_rows or default), ("val", val_rows or default)):
        images(root / split, "a.jpg", "b.jpg", "c.jpg", "d.jpg")
        (root / split / "labels.csv").write_text("\n".join(["file,x,y,z", *rows]) + "\n")
    return root


EXPECTED = torch.tensor([[1, 0, NAN], [NAN, 1, 0], [0, 0, 1], [1, 1, 1]])


def test_csv_table_reads_ones_zeros_and_empty_cells_as_nan(tmp_path):
    root = csv_dataset(tmp_path / "ds")
    table = read_table(root / "train" / "labels.csv", root / "train")
    assert table.names == ["x", "y", "z"] and table.rows == 4 and not table.bad
    assert [p.rsplit("/", 1)[-1] for p in table.files] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    torch.testing.assert_close(table.targets, EXPECTED, equal_nan=True)


def test_celeba_table_and_partition_split_the_rows(compose, tmp_path):
    root = tmp_path / "celeba"
    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    images(root / "img_align_celeba", *names)
    rows = ["1 -1  0", "-1  1 1", "1 1 -1", "0 0 0", "-1 -1 -1", "1 0 1"]
    (root / "list_attr_celeba.txt").write_text("6\nSmiling Young  Male\n"
                                               + "".join(f"{n}  {r}\n" for n, r in zip(names, rows)))
    (root / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(names, [0, 0, 0, 0, 1, 1])))
    cfg = attributes_config(compose, root, "data.labels=list_attr_celeba.txt", "data.partition=list_eval_partition.txt",
                            "data.image_dir=img_align_celeba")
    data = build_multilabel_data(cfg, 32)
    assert data.classes == ["Smiling", "Young", "Male"]
    assert len(data.train_loader.dataset) == 4 and data.train_loader.dataset.files[3].endswith("000004.jpg")
    torch.testing.assert_close(data.train_loader.dataset.targets,
                               torch.tensor([[1, 0, NAN], [0, 1, 1], [1, 1, 0], [NAN, NAN, NAN]]), equal_nan=True)
    images_, targets = next(iter(data.val_loader))
    assert images_.shape == (2, 3, 32, 32) and targets.dtype == torch.float32
    torch.testing.assert_close(targets, torch.tensor([[0.0, 0, 0], [1, NAN, 1]]), equal_nan=True)


def test_each_bad_row_is_skipped_counted_and_logged_once(compose, tmp_path, caplog):
    rows = ["a.jpg,1,0,", "b.jpg,1,0", "c.jpg,0,2,1", "a.jpg,0,0,0", "gone.jpg,1,1,1", "d.jpg,1,1,1"]
    root = csv_dataset(tmp_path / "ds", train_rows=rows)
    table = read_table(root / "train" / "labels.csv", root / "train")
    assert [number for number, _ in table.bad] == [3, 4, 5, 6] and table.rows == 6
    reasons = [reason for _, reason in table.bad]
    assert "3 fields, expected 4" in reasons[0] and "y='2' is not one of" in reasons[1]
    assert "a.jpg is listed again (first on line 2)" in reasons[2] and "gone.jpg does not exist" in reasons[3]
    torch.testing.assert_close(table.targets, EXPECTED[[0, 3]], equal_nan=True)
    caplog.set_level(logging.WARNING, logger="mobilenet_train")
    data = build_multilabel_data(attributes_config(compose, root, "data.max_bad_share=0.7"), 32)
    assert len(data.train_loader.dataset) == 2
    skipped = [r.getMessage() for r in caplog.records if "label row skipped" in r.getMessage()]
    assert len(skipped) == 4 and "line 6: gone.jpg does not exist" in skipped[3]
    with pytest.raises(UserError, match=r"train/labels.csv: 4 of its 6 label rows are bad, more than "
                                        r"data.max_bad_share=0.5 \(first: line 3: .*\); repair the table or raise "
                                        r"data.max_bad_share") as e:
        build_multilabel_data(attributes_config(compose, root, "data.max_bad_share=0.5"), 32)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("name,x,y\na.jpg,1,0\n", "the first column is 'name', not the image file: start the header with file"),
    ("file\na.jpg\n", "has no attribute columns"),
    ("file,x,x,y\na.jpg,1,0,1\n", "attribute names appear twice in the header (x)"),
    ("file,x,,y\na.jpg,1,0,1\n", "attribute 2 of the header has no name"),
    ("six\nx y\na.jpg 1 -1\n", "neither a CSV header (file,attr1,...) nor CelebA's image count (an integer)"),
    ("2\n\na.jpg 1 -1\n", "has no attribute columns"),
    ("", "is empty"),
])
def test_header_problems_are_refused(tmp_path, text, message):
    images(tmp_path, "a.jpg")
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(UserError) as e:
        read_table(tmp_path / "labels.csv", tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_an_attribute_without_labels_is_kept_and_logged(tmp_path, caplog):
    root = csv_dataset(tmp_path / "ds", val_rows=["a.jpg,1,0,", "b.jpg,0,1,"])
    table = read_table(root / "val" / "labels.csv", root / "val")
    caplog.set_level(logging.WARNING, logger="mobilenet_train")
    check_rows(table, 0.0)
    assert table.targets[:, 2].isnan().all()
    assert any("no labelled rows for z" in r.getMessage() for r in caplog.records)


def test_attribute_count_must_match_num_classes(compose, tmp_path):
    root = csv_dataset(tmp_path / "ds")
    with pytest.raises(UserError, match=r"val/labels.csv has 3 attributes but the model has 5: set data.num_classes=3"):
        build_multilabel_data(attributes_config(compose, root, "data.num_classes=5"), 32)


def test_train_and_val_headers_must_agree(compose, tmp_path):
    root = csv_dataset(tmp_path / "ds")
    (root / "val" / "labels.csv").write_text("file,x,z,y\na.jpg,1,0,1\n")
    with pytest.raises(UserError, match="name different attributes"):
        build_multilabel_data(attributes_config(compose, root), 32)


def test_unlabelled_training_folder_needs_a_teacher_at_alpha_one(compose, tmp_path):
    root = csv_dataset(tmp_path / "ds")
    images(root / "pool" / "sub", "u1.jpg", "u2.png")
    images(root / "pool", "u0.jpg")
    (root / "pool" / ".DS_Store").write_bytes(b"\0")
    data = build_multilabel_data(attributes_config(compose, root, "data.train_split=pool", "distill.teacher=t.pt",
                                                   "distill.alpha=1"), 32)
    assert data.classes == ["x", "y", "z"] and len(data.train_loader.dataset) == 3
    for _, targets in data.train_loader:
        assert targets.shape == (2, 3) and targets.isnan().all()
    for extra in ([], ["distill.teacher=t.pt", "distill.alpha=0.5"]):
        with pytest.raises(UserError, match=r"pool/labels.csv does not exist: put the training split's label table "
                                            r"there .* or train on its unlabelled images by pure distillation: "
                                            r"distill.teacher=CKPT distill.alpha=1"):
            build_multilabel_data(attributes_config(compose, root, "data.train_split=pool", *extra), 32)
    (root / "val" / "labels.csv").unlink()
    with pytest.raises(UserError, match="val/labels.csv does not exist: the val split must be labelled"):
        build_multilabel_data(attributes_config(compose, root, "data.train_split=pool", "distill.teacher=t.pt",
                                                "distill.alpha=1"), 32, train=False)


def test_collate_stacks_float_targets_and_keeps_class_indices_int64():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    batch = collate([(image, torch.tensor([1.0, NAN])), (image, torch.tensor([0.0, 1.0]))])
    assert batch.targets.dtype == torch.float32
    torch.testing.assert_close(batch.targets, torch.tensor([[1.0, NAN], [0.0, 1.0]]), equal_nan=True)
    assert collate([(image, 3), (image, 1)]).targets.dtype == torch.int64
    if torch.cuda.is_available():
        assert batch.pin_memory().targets.is_pinned()


def test_a_bad_image_is_replaced_with_its_replacements_labels(tmp_path):
    folder = images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    (folder / "b.jpg").write_bytes((folder / "b.jpg").read_bytes()[:100])
    files = [str(folder / n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    targets = torch.tensor([[1.0, 0.0], [NAN, 1.0], [0.0, 0.0]])
    dataset = AttributeImages(files, targets, ["p", "q"], eval_transform(compose_config([]).data, 32))
    sample = dataset[1]
    assert sample.bad and sample.bad[0][0].endswith("b.jpg") and sample.path != files[1]
    torch.testing.assert_close(sample[1], targets[files.index(sample.path)])


def test_shapes_attr_is_deterministic_and_labelled_by_construction(tmp_path):
    kw = dict(seed=3, image_size=48, train_images=30, unlabelled_images=4, val_images=20)
    root = shapes_attr.generate(tmp_path / "a", **kw)
    again = shapes_attr.generate(tmp_path / "b", **kw)
    for split in ("train", "unlabelled", "val"):
        files = sorted(p.name for p in (root / split).iterdir())
        assert files == sorted(p.name for p in (again / split).iterdir())
        assert all((root / split / f).read_bytes() == (again / split / f).read_bytes() for f in files)
    assert not (root / "unlabelled" / "labels.csv").exists() and len(list((root / "unlabelled").iterdir())) == 4
    other = shapes_attr.generate(tmp_path / "c", **{**kw, "seed": 4})
    assert (other / "val" / "labels.csv").read_text() != (root / "val" / "labels.csv").read_text()
    assert len(shapes_attr.ATTRIBUTES) == 16

    val = list(csv.reader((root / "val" / "labels.csv").open()))
    train = list(csv.reader((root / "train" / "labels.csv").open()))
    assert val[0] == train[0] == ["file", *shapes_attr.ATTRIBUTES] and len(val) == 21 and len(train) == 31
    assert all(cell in ("0", "1") for row in val[1:] for cell in row[1:])  # val is complete
    cells = [cell for row in train[1:] for cell in row[1:]]
    assert 0 < cells.count("") < 0.1 * len(cells)  # a few missing labels in train
    counts = set()
    for i, row in enumerate(val[1:]):
        img, objects = shapes_attr.sample(3, "val", i, 48)
        assert row[1:] == [str(v) for v in shapes_attr.attributes(objects, 48)]
        flagged = sum(int(v) for v in row[1:11])  # has_<shape>: 1 to 3 per image, at most one per object
        assert 1 <= flagged <= len(objects) <= 3 and (row[16] == "1") == (len(objects) == 3)
        counts.add(len(objects))
        for obj in objects:  # each object is drawn in its colour (the dominant channel at its centre)
            if obj["shape"] not in ("ring", "crescent"):
                pixel = img.getpixel(tuple(int(c) for c in obj["centre"]))
                assert max(range(3), key=pixel.__getitem__) == obj["channel"], (i, obj, pixel)
        saved = np.asarray(Image.open(root / "val" / row[0]), dtype=np.float32)
        assert np.abs(saved - np.asarray(img, dtype=np.float32)).mean() < 12  # the JPEG of that image
    assert counts == {1, 2, 3}


def test_shapes_attr_trains_through_the_loaders(compose):
    sizes = ["data.shapes_attr.image_size=40", "data.shapes_attr.train_images=12",
             "data.shapes_attr.unlabelled_images=10", "data.shapes_attr.val_images=6"]
    cfg = compose(*TINY_FOLDER, *MULTILABEL, "data=shapes_attr", *sizes, "data.batch_size=4", "data.num_workers=1")
    data = build_multilabel_data(cfg, 32)
    assert data.classes == list(shapes_attr.ATTRIBUTES) and cfg.model.num_classes == 16
    nans = 0
    for images_, targets in data.train_loader:
        assert images_.shape == (4, 3, 32, 32) and targets.shape == (4, 16) and targets.dtype == torch.float32
        nans += int(targets.isnan().sum())
    assert nans == int(data.train_loader.dataset.targets.isnan().sum())  # every sample once
    cfg = compose(*TINY_FOLDER, *MULTILABEL, "data=shapes_attr", *sizes, "data.batch_size=5",
                  "data.train_split=unlabelled",
                  "distill.teacher=t.pt", "distill.alpha=1")
    data = build_multilabel_data(cfg, 32)
    assert len(data.train_loader.dataset) == 10 and data.train_loader.dataset.targets.isnan().all()


def test_encoded_files_for_gpu_decode_keep_their_labels(tmp_path):
    """data.decode=gpu: workers read the files only; GpuDecode (here with the CPU decoder) decodes the batch."""
    from mobilenet_train.data import FastRandomResizedCrop, GpuDecode, build_loader

    folder = images(tmp_path, "a.jpg", "b.jpg", "c.jpg")
    targets = torch.tensor([[1.0, 0.0], [NAN, 1.0], [0.0, 0.0]])
    dataset = AttributeImages([str(folder / n) for n in ("a.jpg", "b.jpg", "c.jpg")], targets, ["p", "q"],
                              FastRandomResizedCrop(32, (0.5, 1.0)), encoded=True)
    loader = build_loader(dataset, 3, False, 0, 0, gpu_decode=GpuDecode(dataset.transform, torch.device("cpu")))
    (images_, got), = list(loader)
    assert images_.shape == (3, 3, 32, 32) and images_.dtype == torch.uint8
    torch.testing.assert_close(got, targets, equal_nan=True)
