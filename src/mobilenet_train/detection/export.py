"""Export of a detection checkpoint (mobilenet-export CKPT --format onnx | --format tflite [--quantize int8]).

The file holds the detector up to the box decoding (`DetectorOutputs`): input a normalised float
NCHW batch at the model's resolution (TF-Lite: one image), outputs `boxes` [N, anchors, 4] (x1, y1,
x2, y2 in input pixels) and `scores` [N, anchors, 1 + categories] (softmax or sigmoid as
detection.score_fn, background first). The score threshold, the top-k and NMS stay post-processing
(the metadata lists their settings and the anchors; `DetectorOutputs.postprocess` is the toolkit's
code for it), as in TF's exported SSD graphs, whose NMS is a custom op too. The file is checked in
its runtime (ONNX Runtime, LiteRT) against PyTorch on real images of the checkpoint's validation
split before it is moved into place: fp32 output by output; int8 (TF-Lite, litert-torch's PT2E
quantizer calibrated on the train split) by its final detections.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch

from ..data import normalized
from ..errors import UserError
from .model import DetectorOutputs, detector_from_args

METADATA_KEY = "mobilenet_train.detection"
BOX_TOLERANCE = 1e-2   # pixels
SCORE_TOLERANCE = 1e-4
INT8_CONFIDENT = 0.5          # int8: PyTorch's detections at least this sure must be found again ...
INT8_MATCH_IOU = 0.5          # ... with the same category and this overlap,
INT8_MIN_FOUND = 0.5          # at least this share of them, or the file is refused
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}


def detector_outputs(ckpt: dict) -> DetectorOutputs:
    model, _ = detector_from_args(dict(ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return DetectorOutputs(model.eval()).eval()


def real_images(ckpt: dict, count: int, split: str = "val") -> tuple[torch.Tensor, str]:
    """`count` images of the checkpoint's val (or train) split, framed as mobilenet-eval frames them (uint8
    NCHW)."""
    from ..config import typed_config
    from ..data.coco import CocoDetection, detection_transform, resolve_det_root

    cfg = typed_config(ckpt["config"])
    root = resolve_det_root(cfg.data)
    name = cfg.data.val_split if split == "val" else cfg.data.train_split
    dataset = CocoDetection(root, name, detection_transform("flip", int(cfg.model.resolution), 0, False))
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist()
    images = torch.stack([dataset.load(i)[0] for i in picks])
    return images, f"{len(picks)} images of {root / name}"


def metadata(ckpt: dict, model: DetectorOutputs | None = None) -> dict:
    a = ckpt["model_args"]
    return {"task": "detection", "input_size": a["resolution"], "input_layout": "NCHW",
            "resize": f"whole image to {a['resolution']}x{a['resolution']}",
            "normalization": ckpt["config"]["data"]["normalization"],
            "outputs": {"boxes": "x1, y1, x2, y2 in input pixels", "scores": "softmax, index 0 the background"},
            "categories": ckpt.get("classes"),
            "postprocess": {"score_fn": a.get("score_fn", "softmax"), "score_thresh": a["score_thresh"],
                            "topk_candidates": a["topk_candidates"], "nms_thresh": a["nms_thresh"],
                            "detections_per_img": a["detections_per_img"],
                            "nms": NMS_WORDS[a.get("nms_mode", "per_class")]},
            "anchors": anchors_record(a, model) if model is not None else None}


NMS_WORDS = {"per_class": "per class (torchvision.ops.batched_nms)",
             "best_class": "each anchor's best category, one NMS over all (torchvision.ops.nms), as "
                           "TFLite_Detection_PostProcess"}


def anchors_record(args: dict, model: DetectorOutputs) -> dict:
    """The anchors the boxes were decoded with (x1, y1, x2, y2 in input pixels), with how they were made."""
    return {"generator": f"TFAnchors min_ratio={args['min_ratio']} max_ratio={args['max_ratio']} "
                         f"clip={args.get('clip_anchors', True)}",
            "box_scales_yxhw": list(args.get("box_scales", (10.0, 10.0, 5.0, 5.0))),
            "xyxy": np.round(model.anchors.numpy(), 3).tolist()}


def write_onnx(model: DetectorOutputs, path: Path, example: torch.Tensor, meta: dict) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes={"x": {0: batch}},
                                    input_names=["input"], output_names=["boxes", "scores"], optimize=True,
                                    verbose=False)
    program.save(str(path))
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    proto.doc_string = "SSD on MobileNet v1 exported by mobilenet-export; NMS is post-processing (see metadata)"
    onnx.save(proto, str(path))


def compare_outputs(model: DetectorOutputs, x: torch.Tensor, boxes, scores) -> tuple[dict, list, list]:
    """A runtime's raw boxes and scores for `x` against PyTorch's: the errors, top-10 label agreement, and both
    sides' final detections (the model's own post-processing)."""
    with torch.no_grad():
        ref_boxes, ref_scores = model(x)
    ours = model.postprocess(torch.from_numpy(boxes), torch.from_numpy(scores))
    ref = model.postprocess(ref_boxes, ref_scores)
    top = [bool(torch.equal(a["labels"][:10], b["labels"][:10])) for a, b in zip(ours, ref)]
    return ({"max_abs_box_error": float(np.abs(boxes - ref_boxes.numpy()).max()),
             "max_abs_score_error": float(np.abs(scores - ref_scores.numpy()).max()),
             "top10_labels_agree": sum(top) / len(top)}, ours, ref)


def _check_fp32(result: dict, what: str) -> None:
    box_err, score_err = result["max_abs_box_error"], result["max_abs_score_error"]
    if box_err > BOX_TOLERANCE or score_err > SCORE_TOLERANCE:
        raise UserError(f"the {what} file disagrees with PyTorch (box error {box_err:.3g} px, score error "
                        f"{score_err:.3g}): not written")


def verify_onnx(path: Path, model: DetectorOutputs, x: torch.Tensor) -> dict:
    """ONNX Runtime against PyTorch: box and score errors, and whether the final detections agree."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    result, _, _ = compare_outputs(model, x, boxes, scores)
    _check_fp32(result, "ONNX")
    return result


def _same_detections(ours: list[dict], ref: list[dict]) -> float:
    """The share of `ref`'s confident detections that `ours` has too (same category, IoU >= INT8_MATCH_IOU)."""
    from torchvision.ops import box_iou

    found = total = 0
    for a, b in zip(ours, ref):
        for box, score, label in zip(b["boxes"], b["scores"], b["labels"]):
            if score < INT8_CONFIDENT:
                continue
            total += 1
            same = a["labels"] == label
            found += bool(same.any() and box_iou(box[None], a["boxes"][same]).max() >= INT8_MATCH_IOU)
    return found / total if total else 1.0


def verify_tflite(path: Path, model: DetectorOutputs, x: torch.Tensor, int8: bool) -> dict:
    """LiteRT against PyTorch: fp32 output by output (as the ONNX check), int8 by its final detections."""
    from ..deploy.tflite import outputs_runner

    boxes, scores = outputs_runner(path, threads=2)(x.numpy())
    result, ours, ref = compare_outputs(model, x, boxes, scores)
    found = result["confident_detections_found"] = _same_detections(ours, ref)
    if int8 and found < INT8_MIN_FOUND:
        raise UserError(f"the int8 TF-Lite file finds {found:.0%} of PyTorch's detections scored >= {INT8_CONFIDENT} "
                        f"(same category, IoU >= {INT8_MATCH_IOU}): not written")
    if not int8:
        _check_fp32(result, "TF-Lite")
    return result


def frcnn_onnx(ckpt: dict, path: Path, x: torch.Tensor, meta: dict) -> dict:
    """Faster R-CNN whole, NMS inside (torchvision's RPN and RoI heads trace with the TorchScript-based
    exporter, opset 17): input one normalised CHW image, outputs boxes (x1, y1, x2, y2 in input pixels), labels,
    scores. Checked in ONNX Runtime: the scores (sorted: equal scores may swap places) within SCORE_TOLERANCE,
    and the share of PyTorch's detections found again (same label, IoU >= 0.9) reported."""
    import onnxruntime as ort
    from torchvision.ops import box_iou

    model, _ = detector_from_args(dict(ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    with torch.no_grad():
        torch.onnx.export(model, ([x[0]],), str(path), opset_version=17, dynamo=False, input_names=["image"],
                          output_names=["boxes", "labels", "scores"])
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(proto, str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score_err, found, total = 0.0, 0, 0
    for image in x:
        boxes, labels, scores = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            ref = model([image])[0]
        if len(scores) != len(ref["scores"]):
            raise UserError(f"the ONNX file keeps {len(scores)} detections where PyTorch keeps {len(ref['scores'])}: "
                            f"not written")
        score_err = max(score_err, float(np.abs(np.sort(scores) - np.sort(ref["scores"].numpy())).max(initial=0)))
        for box, label in zip(ref["boxes"], ref["labels"]):
            same = torch.from_numpy(labels) == label
            total += 1
            found += bool(same.any() and box_iou(box[None], torch.from_numpy(boxes)[same]).max() >= 0.9)
    if score_err > SCORE_TOLERANCE:
        raise UserError(f"the ONNX file's scores disagree with PyTorch's (error {score_err:.3g}): not written")
    return {"max_abs_score_error": score_err, "detections_found": found / total if total else 1.0}


def export_detector(ckpt_path: Path, ckpt: dict, fmt: str, quantize: str | None, out: str | None,
                    num_verify: int, num_calibration: int = 100) -> dict:
    """Write and check the ONNX or TF-Lite file of a detection checkpoint; returns what mobilenet-export
    reports."""
    if ckpt["model_args"].get("arch", "ssd") == "faster_rcnn" and (fmt != "onnx" or quantize):
        raise UserError(f"Faster R-CNN checkpoints export to ONNX fp32 only (asked: --format {fmt}"
                        f"{' --quantize ' + quantize if quantize else ''}): use --format onnx")
    if fmt not in SUFFIX or (quantize and fmt != "tflite"):
        raise UserError(f"detection checkpoints export to ONNX fp32 or TF-Lite fp32 / int8 (asked: --format {fmt}"
                        f"{' --quantize ' + quantize if quantize else ''}): use --format onnx or --format tflite")
    stem = ckpt_path.stem + (f".{quantize}" if quantize else "")
    out_path = Path(out) if out else ckpt_path.with_name(stem + SUFFIX[fmt])
    frcnn = ckpt["model_args"].get("arch", "ssd") == "faster_rcnn"
    model = None if frcnn else detector_outputs(ckpt)
    norm = ckpt["config"]["data"]["normalization"]
    images, described = real_images(ckpt, num_verify)
    x = normalized(images, norm)
    calib, calib_from = None, None
    if quantize:
        calib_images, calib_from = real_images(ckpt, num_calibration, split="train")
        calib = normalized(calib_images, norm)
    meta = {**metadata(ckpt, model), "precision": quantize or "fp32", "format": fmt,
            "checkpoint": str(ckpt_path.resolve())}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}{out_path.suffix}")
    try:
        if frcnn:
            check = frcnn_onnx(ckpt, tmp, x, {**meta, "outputs": {
                "boxes": "x1, y1, x2, y2 in input pixels", "labels": "1..categories", "scores": "softmax"},
                "input_layout": "CHW, one image", "postprocess": "inside the graph (torchvision's)"})
        elif fmt == "onnx":
            write_onnx(model, tmp, x[:2], meta)
            check = verify_onnx(tmp, model, x)
        else:
            from ..deploy import formats

            formats.load("tflite").write(model, tmp, {**meta, "input_layout": "NCHW", "batch": 1}, x[:1], calib, 1)
            check = verify_tflite(tmp, model, x, quantize is not None)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"out": str(out_path), "verification": check, "inputs": described, "calibration": calib_from,
            "precision": quantize or "fp32", "size_bytes": out_path.stat().st_size}
