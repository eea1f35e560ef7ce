"""Google's TF-Lite COCO detector (../shared/weights/tflite-detect/detect.tflite) imported as a task=detection
checkpoint, checked against the file: its anchors, its detections in LiteRT, its mAP; refusals in one line.

Every test reads ../shared and skips when it is absent.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, run_main, shared_or_skip
from torchvision.ops import box_iou

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.data import normalized
from mobilenet_train.data.coco import CocoDetection, detection_transform
from mobilenet_train.deploy.score_detect import LiteRTDetector
from mobilenet_train.detection.imported import detector_args, match_anchors, toolkit_anchors
from mobilenet_train.detection.model import SSDMobileNetV1, detector_from_args
from mobilenet_train.errors import UserError
from mobilenet_train.evaluation import evaluate_checkpoint, evaluate_file
from mobilenet_train.weights.tflite_detect import read_detect_tflite

DETECT = ("weights", "tflite-detect", "detect.tflite")
COCO128 = ("data", "coco128")
EVAL = ["data.val_split=train2017", "data.num_workers=0", "data.batch_size=8", "progress=false"]


@pytest.fixture(scope="module")
def source():
    return read_detect_tflite(shared_or_skip(*DETECT))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """detect.tflite through mobilenet-import's entry point."""
    src = shared_or_skip(*DETECT)
    out = tmp_path_factory.mktemp("detect") / "detect.pt"
    proc = run_main("mobilenet-import", str(src), str(out), cwd=out.parent)
    assert proc.returncode == 0, proc.stderr
    assert "1917 equal TFAnchors" in proc.stdout and "label k = COCO category id k" in proc.stdout
    return out


def coco_subset(root, count: int, rename: dict | None = None):
    """The first `count` images of coco128 as a COCO-layout dataset under `root` (links to the JPEGs);
    `rename`: {category id: new name}."""
    coco = shared_or_skip(*COCO128)
    ann = json.loads((coco / "annotations" / "instances_train2017.json").read_text())
    images = sorted(ann["images"], key=lambda i: i["id"])[:count]
    ids = {i["id"] for i in images}
    ann = {**ann, "images": images, "annotations": [a for a in ann["annotations"] if a["image_id"] in ids],
           "categories": [{**c, "name": (rename or {}).get(c["id"], c["name"])} for c in ann["categories"]]}
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(ann))
    (root / "train2017").mkdir()
    for image in images:
        (root / "train2017" / image["file_name"]).symlink_to(coco / "train2017" / image["file_name"])
    return root


def test_import_holds_the_files_settings(imported):
    ckpt = load_checkpoint(imported)
    a = ckpt["model_args"]
    assert (a["task"], a["alpha"], a["resolution"], a["num_classes"]) == ("detection", 0.75, 300, 90)
    assert (a["norm"], a["padding"], a["activation"], a["head"]) == ("none", "tf_same", "relu6", "ssd")
    assert (a["score_fn"], a["nms_mode"], a["nms_thresh"], a["detections_per_img"]) == ("sigmoid", "best_class",
                                                                                           0.6, 10)
    assert list(a["box_scales"]) == [10.0, 10.0, 5.0, 5.0] and a["clip_anchors"] is False
    assert a["score_thresh"] == pytest.approx(1e-8)
    cfg = ckpt["config"]
    assert cfg["task"] == "detection" and cfg["data"]["normalization"] == "uint8_128"
    assert cfg["detection"]["score_fn"] == "sigmoid" and cfg["data"]["num_classes"] == 90
    # Label k is COCO id k, named as the file's label map (line k = id k; '???' where COCO has none).
    assert ckpt["category_ids"] == list(range(1, 91))
    labelmap = shared_or_skip(*DETECT).with_name("labelmap.txt").read_text().splitlines()
    for cid, name in zip(ckpt["category_ids"], ckpt["classes"]):
        assert name == (labelmap[cid] if labelmap[cid] != "???" else "N/A"), (cid, name)
    record = ckpt["import"]
    assert record["postprocess"]["max_detections"] == 10 and record["weight_dtype"] == "uint8"


def test_anchors_equal_the_files(source):
    args = detector_args(source)
    ours, sizes = toolkit_anchors(SSDMobileNetV1(args))
    perms, check = match_anchors(source, ours, sizes)
    assert sizes == [19, 10, 5, 3, 2, 1] and len(source.anchors) == 1917
    # TF puts the interpolated ratio-1 anchor last, torchvision second; the lowest map has TF's three.
    assert perms == [[0, 1, 2]] + [[0, 2, 3, 4, 5, 1]] * 5
    # The file stores them as uint8: ours quantized with its step are its values.
    step = source.anchor_step
    assert 0 < check["max_abs_difference"] <= step / 2 + 1e-6
    start, file_codes, our_codes = 0, [], []
    for size, perm in zip(sizes, perms):
        n = size * size * len(perm)
        file_codes.append(np.round(source.anchors[start:start + n] / step))
        our_codes.append(np.round(ours[start:start + n].reshape(size * size, len(perm), 4)[:, perm].reshape(-1, 4)
                                  / step))
        start += n
    agree = (np.concatenate(file_codes) == np.concatenate(our_codes)).mean()
    assert agree > 0.99, agree  # the rest sit on a rounding boundary, one step apart
    # torchvision's clipped anchors are not the file's: one line names where.
    clipped, _ = toolkit_anchors(SSDMobileNetV1(replace(args, clip_anchors=True)))
    with pytest.raises(UserError) as e:
        match_anchors(source, clipped, sizes)
    assert "\n" not in str(e.value) and "differ from TFAnchors" in str(e.value) and "feature map" in str(e.value)


def test_import_detects_as_litert(imported, source):
    """The float import against the int8 file in LiteRT on a handful of coco128 photos: every confident
    LiteRT detection found with the same category and nearly the same box (the int8 file's own box codes
    and anchors are quantized: pixels of difference remain)."""
    pytest.importorskip("ai_edge_litert")
    coco = shared_or_skip(*COCO128)
    ckpt = load_checkpoint(imported)
    model, _ = detector_from_args(dict(ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = CocoDetection(coco, "train2017", detection_transform("flip", 300, 0, False))
    images = torch.stack([data.load(i)[0] for i in range(0, 128, 16)])
    lite = LiteRTDetector(shared_or_skip(*DETECT), source.details["outputs"], 300, threads=2)(images)
    with torch.no_grad():
        ours = model(normalized(images, "uint8_128"))
    diffs, confident = [], 0
    for theirs, mine in zip(lite, ours):
        assert len(theirs["boxes"]) == len(mine["boxes"]) == 10
        for box, score, label in zip(theirs["boxes"], theirs["scores"], theirs["labels"]):
            if score < 0.5:
                continue
            confident += 1
            same = mine["labels"] == label
            iou = box_iou(box[None], mine["boxes"][same])[0]
            j = int(iou.argmax())
            assert iou[j] > 0.9, (label, iou.max())
            assert abs(float(mine["scores"][same][j] - score)) < 0.1
            diffs.append(float((box - mine["boxes"][same][j]).abs().max()))
    assert confident >= 10
    assert np.median(diffs) <= 2.0 and np.percentile(diffs, 90) <= 6.0, diffs


def test_checkpoint_and_file_score_alike(imported, tmp_path):
    pytest.importorskip("ai_edge_litert")
    root = coco_subset(tmp_path / "coco", 8)
    items = [f"data.root={root}", *EVAL]
    ours = evaluate_checkpoint(str(imported), [*items, f"out={tmp_path / 'pt.json'}"])
    theirs = evaluate_file(str(shared_or_skip(*DETECT)), [*items, "threads=2", f"out={tmp_path / 'lite.json'}"])
    for r in (ours, theirs):
        assert r["num_images"] == 8 and r["detections_per_image"] == 10 and r["max_detections_per_image"] == 10
        assert {"map", "map_50", "map_75", "map_small", "map_medium", "map_large"} <= set(r)
        assert r["category_mapping"].startswith("by COCO id")
    assert theirs["runtime"].startswith("LiteRT") and theirs["quantization"] == "uint8-google"
    assert ours["map_50"] > 25 and abs(ours["map"] - theirs["map"]) < 3, (ours["map"], theirs["map"])
    assert json.loads((tmp_path / "lite.json").read_text())["map"] == theirs["map"]


def test_refusals_are_one_line(imported, tmp_path):
    src = shared_or_skip(*DETECT)
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(src.read_bytes()[: 1 << 20])
    out = tmp_path / "out" / "x.pt"
    proc = run_main("mobilenet-import", str(truncated), str(out), cwd=tmp_path, check=False)
    assert_one_line_error(proc, "truncated or corrupt")
    proc = run_main("mobilenet-import", str(src), str(out), "model.resolution=320", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "model.resolution", "read from")
    assert not out.parent.exists()
    # Scored on data whose category ids mean other things: refused, not scored wrong.
    root = coco_subset(tmp_path / "renamed", 2, rename={1: "pedestrian"})
    proc = run_main("mobilenet-eval", str(imported), f"data.root={root}", *EVAL, cwd=tmp_path, check=False)
    assert_one_line_error(proc, "category id 1 is 'pedestrian'", "'person'")
    proc = run_main("mobilenet-eval", str(src), f"data.root={root}", *EVAL, cwd=tmp_path, check=False)
    assert_one_line_error(proc, "category id 1 is 'pedestrian'")


@pytest.mark.slow
def test_finetune_from_the_import_and_export_to_tflite(imported, tmp_path):
    """+experiment=ssd_finetune from the import on data where one COCO category has another name: its
    class rows start fresh, the others are kept (logged); the frozen backbone stays the file's; the result
    exports to TF-Lite and is checked in LiteRT."""
    root = coco_subset(tmp_path / "coco", 8, rename={3: "automobile"})
    run = tmp_path / "run"
    proc = run_main("mobilenet-train", "task=detection", "+experiment=ssd_finetune", f"model.init={imported}",
                    "data=coco", f"data.root={root}", "data.train_split=train2017", "data.val_split=train2017",
                    "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0", "trainer.epochs=1",
                    "trainer.progress=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    log = proc.stdout + proc.stderr
    assert "class-head rows kept for 79 categories" in log and "1 start fresh (automobile)" in log
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    init = load_checkpoint(imported)
    assert "automobile" in ckpt["classes"] and ckpt["model_args"]["score_fn"] == "sigmoid"
    assert ckpt["config"]["data"]["normalization"] == "uint8_128"
    name = "backbone.blocks.12.pw.conv.weight"
    assert torch.equal(ckpt["model"][name], init["model"][name])
    proc = run_main("mobilenet-export", str(run / "checkpoints" / "last.pt"), "--format", "tflite", "num_verify=4",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "checked     in its runtime" in proc.stdout and (run / "checkpoints" / "last.tflite").is_file()
