"""The COCO-format reader: bad annotations counted and skipped, boxes moved with the pixels, bad images
replaced and counted by the loader, the embedded shapes_det set read through it."""

from __future__ import annotations

import pytest
import torch
from helpers import coco_json, save_jpeg
from PIL import Image

from mobilenet_train.data.coco import CocoDetection, build_detection_data, collate_detection, detection_transform
from mobilenet_train.errors import UserError


def _dataset_dir(tmp_path, corrupt: bool = False):
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    for i in (1, 2):
        save_jpeg(root / "val" / f"{i}.jpg", Image.new("RGB", (100, 50), (200, 30, 30)))
    if corrupt:
        (root / "val" / "2.jpg").write_bytes(b"not a jpeg")
    anns = [{"image_id": 1, "category_id": 1, "bbox": [10, 5, 20, 30]},       # good
            {"image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 30]},       # unknown category
            {"image_id": 1, "category_id": 2, "bbox": [10, 5, 0, 30]},        # zero area
            {"image_id": 1, "category_id": 2, "bbox": [90, 5, 40, 30]},       # far outside the image
            {"image_id": 1, "category_id": 2, "bbox": [60, 0, 40.5, 50]},     # half a pixel out: clipped
            {"image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "iscrowd": 1}]  # crowd: COCOeval's
    coco_json(root / "annotations" / "instances_val.json", [(1, 100, 50), (2, 100, 50)], anns)
    return root


def test_bad_annotations_are_counted_and_skipped(tmp_path):
    ds = CocoDetection(_dataset_dir(tmp_path), "val", detection_transform("flip", 64, 0.0, False))
    assert ds.bad_annotations == {"unknown category": 1, "zero area": 1, "box outside the image": 1}
    assert ds.classes == ["cat1", "cat2"]
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 2]
    # Resized 100x50 -> 64x64: x * 0.64, y * 1.28; the second box clipped to the image first.
    assert torch.allclose(target["boxes"], torch.tensor([[6.4, 6.4, 19.2, 44.8], [38.4, 0.0, 64.0, 64.0]]))
    assert target["orig_size"] == (50, 100) and target["image_id"] == 1
    assert ds[1][1]["boxes"].shape == (0, 4)  # only a crowd region: no training target


def test_flip_moves_the_boxes_with_the_pixels(tmp_path):
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    img = Image.new("RGB", (80, 80), (0, 0, 0))
    img.paste((255, 255, 255), (10, 20, 30, 60))  # a white block where the box is
    save_jpeg(root / "val" / "1.jpg", img)
    coco_json(root / "annotations" / "instances_val.json", [(1, 80, 80)],
              [{"image_id": 1, "category_id": 1, "bbox": [10, 20, 20, 40]}])
    ds = CocoDetection(root, "val", detection_transform("flip", 80, 1.0, True))  # always flipped
    image, target = ds[0]
    (x1, y1, x2, y2), = target["boxes"].round().int().tolist()
    assert (x1, y1, x2, y2) == (50, 20, 70, 60)
    inside = image[:, y1 + 2:y2 - 2, x1 + 2:x2 - 2].float().mean()
    outside = image[:, :, :x1 - 2].float().mean()
    assert inside > 200 and outside < 30


def test_ssd_augmentation_keeps_boxes_inside_the_image(tmp_path):
    ds = CocoDetection(_dataset_dir(tmp_path), "val", detection_transform("ssd", 64, 0.5, True))
    for seed in range(10):
        torch.manual_seed(seed)
        _, target = ds[0]
        boxes = target["boxes"]
        assert len(boxes) == len(target["labels"])
        if len(boxes):
            assert boxes.min() >= 0 and boxes.max() <= 64
            assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_a_bad_image_is_replaced_and_counted(tmp_path, compose):
    cfg = compose("+experiment=ssd_shapes", "data=coco", f"data.root={_dataset_dir(tmp_path, corrupt=True)}",
                  "data.num_classes=2", "data.val_split=val", "data.num_workers=0", "data.eval_batch_size=2",
                  "data.max_bad_share=1", "model.resolution=64")
    data = build_detection_data(cfg, 64, train=False)
    (images, targets), = list(data.val_loader)
    assert images.shape == (2, 3, 64, 64)
    assert data.val_loader.bad_images == 1
    assert [t["image_id"] for t in targets] == [1, 1]  # image 2 stood in for by image 1
    assert data.classes == ["cat1", "cat2"]


def test_missing_annotations_and_category_count_are_one_line_errors(tmp_path, compose):
    root = _dataset_dir(tmp_path)
    cfg = compose("+experiment=ssd_shapes", "data=coco", f"data.root={root}", "data.val_split=val2017")
    with pytest.raises(UserError, match="instances_val2017.json"):
        build_detection_data(cfg, 64, train=False)
    cfg = compose("+experiment=ssd_shapes", "data=coco", f"data.root={root}", "data.val_split=val",
                  "data.num_classes=80")
    with pytest.raises(UserError, match="data.num_classes=2"):
        build_detection_data(cfg, 64, train=False)


def test_shapes_det_boxes_are_the_objects(tmp_path):
    from mobilenet_train.data import shapes_det

    root = shapes_det.generate(tmp_path / "sd", seed=1, image_size=96, train_images=4, val_images=6, max_objects=3,
                               categories=4)
    ds = CocoDetection(root, "val", detection_transform("flip", 96, 0.0, False))
    assert len(ds) == 6 and ds.classes == ["arrow", "circle", "crescent", "cross"]
    assert not ds.bad_annotations
    batch = collate_detection([ds[i] for i in range(6)])
    images, targets = batch
    assert images.shape == (6, 3, 96, 96)
    for target in targets:
        boxes = target["boxes"]
        assert 1 <= len(boxes) <= 3 and set(target["labels"].tolist()) <= {1, 2, 3, 4}
        # Objects never overlap, so each box holds exactly one object.
        area = (boxes[:, 2:] - boxes[:, :2]).prod(1)
        assert (area > 8 * 8).all()
    assert (root / "manifest.json").is_file()
    again = shapes_det.generate(tmp_path / "sd2", seed=1, image_size=96, train_images=4, val_images=6,
                                max_objects=3, categories=4)
    assert (again / "val" / "val_000003.jpg").read_bytes() == (root / "val" / "val_000003.jpg").read_bytes()
