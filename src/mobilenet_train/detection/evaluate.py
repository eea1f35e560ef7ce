"""Detection metrics with pycocotools' COCOeval: mAP@[.5:.95], mAP@.5, mAP@.75 and AP of small, medium
and large objects, in percent (COCOeval's -1, "no such objects in the split", stays -1).

Every rank detects on its share of the val split; rank 0 scores all detections against the split's
annotations and every rank gets the numbers.
"""

from __future__ import annotations

import contextlib
import io
import time

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed

# COCOeval.stats indices -> our metric names (COCOeval.summarize prints them in this order).
STATS = (("map", 0), ("map_50", 1), ("map_75", 2), ("map_small", 3), ("map_medium", 4), ("map_large", 5))


def coco_results(dets: list[dict], targets: list[dict], resolution: int, cat_ids: list[int]) -> list[dict]:
    """The model's detections (in input pixels) as COCO results in the original image's pixels."""
    out = []
    for det, t in zip(dets, targets):
        if t["image_id"] < 0:
            continue  # a blank stand-in for an image that could not be read
        h, w = t["orig_size"]
        boxes = det["boxes"].float().cpu() * torch.tensor([w, h, w, h]) / resolution
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
            out.append({"image_id": int(t["image_id"]), "category_id": cat_ids[label - 1],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def coco_map(coco_gt, results: list[dict], image_ids: list[int]) -> dict:
    """COCOeval (bbox) of `results` on `image_ids` of `coco_gt`; percent, -1 where no objects."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name, _ in STATS}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: (100 * float(ev.stats[i]) if ev.stats[i] >= 0 else -1.0) for name, i in STATS}


@torch.no_grad()
def evaluate_detection(model: nn.Module, loader, prep, amp: torch.dtype | None = None, desc: str = "eval",
                       progress: bool = False, category_ids: list[int] | None = None) -> dict:
    """COCO metrics of `model` on the loader's split (a CocoDetection), plus num_images, detections kept per
    image and images_per_sec. Label k is COCO category `category_ids[k - 1]` (default: the dataset's ids in
    sorted order, as training numbers them); detections of categories the split lacks score nothing."""
    model.eval()
    dataset = loader.dataset
    category_ids = category_ids or dataset.cat_ids
    resolution = int(model.args.resolution)
    results, image_ids = [], []
    start = time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        with torch.autocast(prep.device.type, dtype=amp, enabled=amp is not None):
            dets = model(prep(images))
        results += coco_results(dets, targets, resolution, category_ids)
        image_ids += [int(t["image_id"]) for t in targets if t["image_id"] >= 0]
    elapsed = time.perf_counter() - start
    gathered = distributed.gather_objects((results, image_ids))
    metrics = None
    if not distributed.is_initialized() or torch.distributed.get_rank() == 0:
        all_results = [r for rs, _ in gathered for r in rs]
        all_ids = sorted({i for _, ids in gathered for i in ids})
        metrics = {**coco_map(dataset.coco, all_results, all_ids), "num_images": len(all_ids),
                   "num_detections": len(all_results),
                   "detections_per_image": len(all_results) / max(1, len(all_ids))}
    metrics = distributed.broadcast_object(metrics)
    return {**metrics, "images_per_sec": metrics["num_images"] / max(elapsed, 1e-9)}
