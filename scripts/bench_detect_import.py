"""Google's TF-Lite COCO detector three ways on a COCO-format split: a plain LiteRT loop (PIL resize,
the file's own post-processing, pycocotools; no toolkit code), `mobilenet-eval detect.tflite` (LiteRT in
the toolkit's pipeline) and `mobilenet-eval` of its mobilenet-import (PyTorch, float).

    OMP_NUM_THREADS=2 .venv/bin/python scripts/bench_detect_import.py \
        ../shared/weights/tflite-detect/detect.tflite ../shared/data/coco128 --split train2017
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def plain_litert(tflite: Path, root: Path, split: str, threads: int) -> dict:
    """The file as an app runs it: whole image to 300x300 (PIL bilinear), uint8 in, its 10 detections out."""
    from ai_edge_litert.interpreter import Interpreter
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / f"instances_{split}.json"))
    interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    outs = sorted(interpreter.get_output_details(), key=lambda d: d["name"])  # boxes, classes, scores, count
    size = int(inp["shape"][1])
    results, start = [], time.perf_counter()
    for image_id in sorted(gt.imgs):
        info = gt.imgs[image_id]
        with Image.open(root / split / info["file_name"]) as img:
            x = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        boxes, classes, scores, count = (interpreter.get_tensor(d["index"]) for d in outs)
        w, h = info["width"], info["height"]
        for (y1, x1, y2, x2), c, s in zip(boxes[0, :int(count[0])], classes[0], scores[0]):
            y1, x1, y2, x2 = (float(np.clip(v, 0, 1)) for v in (y1, x1, y2, x2))
            results.append({"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
                            "bbox": [x1 * w, y1 * h, (x2 - x1) * w, (y2 - y1) * h]})
    elapsed = time.perf_counter() - start
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": 100 * ev.stats[0], "map_50": 100 * ev.stats[1], "map_75": 100 * ev.stats[2],
            "num_images": len(gt.imgs), "detections_per_image": len(results) / len(gt.imgs),
            "images_per_sec": len(gt.imgs) / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tflite", type=Path)
    parser.add_argument("root", type=Path, help="COCO-format dataset: ROOT/<split>/, ROOT/annotations/")
    parser.add_argument("--split", default="val2017")
    parser.add_argument("--threads", type=int, default=2)
    ns = parser.parse_args()
    from mobilenet_train.evaluation import evaluate_checkpoint, evaluate_file
    from mobilenet_train.importer import import_weights

    data = [f"data.root={ns.root}", f"data.val_split={ns.split}", "data.num_workers=1", "progress=false"]
    rows = {"plain LiteRT loop (PIL resize)": plain_litert(ns.tflite, ns.root, ns.split, ns.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        rows["mobilenet-eval detect.tflite (LiteRT)"] = evaluate_file(
            str(ns.tflite), [*data, f"threads={ns.threads}", f"out={tmp}/lite.json"])
        ckpt = Path(tmp) / "detect.pt"
        import_weights([str(ns.tflite)], str(ckpt))
        rows["mobilenet-eval of the import (PyTorch)"] = evaluate_checkpoint(str(ckpt), [*data, f"out={tmp}/pt.json"])
    print(f"{'':42} {'mAP':>6} {'mAP@.5':>7} {'mAP@.75':>8} {'dets/img':>9} {'img/s':>6}")
    for name, r in rows.items():
        print(f"{name:42} {r['map']:6.2f} {r['map_50']:7.2f} {r['map_75']:8.2f} {r['detections_per_image']:9.1f} "
              f"{r['images_per_sec']:6.1f}")
    print(json.dumps({k: {m: round(float(v[m]), 3) for m in ("map", "map_50", "map_75")} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
