"""COCOeval through detection/evaluate.py against an AP computed by hand on a tiny case."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from helpers import coco_json

from mobilenet_train.detection.evaluate import coco_map, coco_results


def _gt(tmp_path):
    from pycocotools.coco import COCO

    # Two images, category 1: two objects in image 1, one in image 2 (all 40x40: "medium" objects).
    anns = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40]},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 40, 40]},
            {"image_id": 2, "category_id": 1, "bbox": [20, 20, 40, 40]}]
    path = coco_json(tmp_path / "gt.json", [(1, 128, 128), (2, 128, 128)], anns, categories=(1,))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def hand_ap(hits: list[bool], num_gt: int) -> float:
    """COCO's AP at one IoU threshold: the precision envelope sampled at 101 recall points."""
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / num_gt
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    samples = []
    for r in np.linspace(0, 1, 101):
        above = np.nonzero(recall >= r - 1e-12)[0]
        samples.append(envelope[above[0]] if len(above) else 0.0)
    return float(np.mean(samples))


def test_coco_map_matches_hand_computed_ap(tmp_path):
    gt = _gt(tmp_path)
    # By score: a hit (exact box), a miss (nowhere near), a hit, then the third object missed entirely.
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [90, 0, 30, 30], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [60, 60, 40, 40], "score": 0.7}]
    m = coco_map(gt, dets, [1, 2])
    expected = 100 * hand_ap([True, False, True], num_gt=3)  # exact boxes: the same at every IoU threshold
    # By hand: precision 1 up to recall 1/3 (34 of the 101 recall points), 2/3 up to recall 2/3 (33 more).
    assert expected == pytest.approx(100 * (34 * 1 + 33 * 2 / 3) / 101)
    assert m["map_50"] == pytest.approx(expected, abs=1e-6)
    assert m["map"] == pytest.approx(expected, abs=1e-6)
    # The 30x30 miss is a small detection: AP of medium objects ignores it (COCO's area ranges).
    assert m["map_medium"] == pytest.approx(100 * hand_ap([True, True], num_gt=3), abs=1e-6)
    assert m["map_small"] == -1.0 and m["map_large"] == -1.0  # no such objects: COCOeval's -1 kept


def test_coco_map_iou_thresholds(tmp_path):
    gt = _gt(tmp_path)
    # Every object found, each box shifted so that its IoU is 0.6: a hit at .50-.60, a miss above.
    shift = 40 * (1 - 0.6) / (1 + 0.6)  # IoU of two 40x40 boxes offset by s along x: (40-s)/(40+s)
    dets = [{"image_id": i, "category_id": 1, "bbox": [x + shift, y, 40, 40], "score": 0.9}
            for i, x, y in ((1, 10, 10), (1, 60, 60), (2, 20, 20))]
    m = coco_map(gt, dets, [1, 2])
    assert m["map_50"] == pytest.approx(100.0)
    assert m["map_75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(100.0 * 3 / 10, abs=1e-6)  # thresholds .50, .55, .60 of ten


def test_coco_results_scale_boxes_back_to_the_original_image():
    det = {"boxes": torch.tensor([[10.0, 20.0, 30.0, 60.0]]), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([2])}
    target = {"image_id": 7, "orig_size": (200, 400)}  # h, w; the model saw 100x100
    (r,) = coco_results([det], [target], 100, cat_ids=[3, 9])
    assert r == {"image_id": 7, "category_id": 9, "bbox": [40.0, 40.0, 80.0, 80.0], "score": 0.5}
    blank = {"image_id": -1, "orig_size": (100, 100)}  # a stand-in for an unreadable image: no results
    assert coco_results([det], [blank], 100, cat_ids=[3, 9]) == []
