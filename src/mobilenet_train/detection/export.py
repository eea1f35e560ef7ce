"""ONNX export of a detection checkpoint (mobilenet-export CKPT --format onnx).

The file holds the detector up to the box decoding (`DetectorOutputs`): input a normalised float
NCHW batch at the model's resolution, outputs `boxes` [N, anchors, 4] (x1, y1, x2, y2 in input
pixels) and `scores` [N, anchors, 1 + categories] (softmax, background first). The score
threshold, the per-class top-k and NMS stay post-processing (the metadata lists their settings;
`DetectorOutputs.postprocess` is torchvision's code for it), as in TF's exported SSD graphs,
whose NMS is a custom op too. The file is checked in ONNX Runtime against PyTorch on real images
of the checkpoint's validation split before it is moved into place.
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


def detector_outputs(ckpt: dict) -> DetectorOutputs:
    model, _ = detector_from_args(dict(ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return DetectorOutputs(model.eval()).eval()


def real_images(ckpt: dict, count: int) -> tuple[torch.Tensor, str]:
    """`count` images of the checkpoint's val split, framed as mobilenet-eval frames them (uint8 NCHW)."""
    from ..config import typed_config
    from ..data.coco import CocoDetection, detection_transform, resolve_det_root

    cfg = typed_config(ckpt["config"])
    root = resolve_det_root(cfg.data)
    dataset = CocoDetection(root, cfg.data.val_split, detection_transform("flip", int(cfg.model.resolution), 0, False))
    picks = np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round().astype(int).tolist()
    images = torch.stack([dataset.load(i)[0] for i in picks])
    return images, f"{len(picks)} images of {root / cfg.data.val_split}"


def metadata(ckpt: dict) -> dict:
    a = ckpt["model_args"]
    return {"task": "detection", "input_size": a["resolution"], "input_layout": "NCHW",
            "resize": f"whole image to {a['resolution']}x{a['resolution']}",
            "normalization": ckpt["config"]["data"]["normalization"],
            "outputs": {"boxes": "x1, y1, x2, y2 in input pixels", "scores": "softmax, index 0 the background"},
            "categories": ckpt.get("classes"),
            "postprocess": {"score_thresh": a["score_thresh"], "topk_candidates": a["topk_candidates"],
                            "nms_thresh": a["nms_thresh"], "detections_per_img": a["detections_per_img"],
                            "nms": "per class (torchvision.ops.batched_nms)"}}


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


def verify_onnx(path: Path, model: DetectorOutputs, x: torch.Tensor) -> dict:
    """ONNX Runtime against PyTorch: box and score errors, and whether the final detections agree."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores = model(x)
    box_err = float(np.abs(boxes - ref_boxes.numpy()).max())
    score_err = float(np.abs(scores - ref_scores.numpy()).max())
    ours = model.postprocess(torch.from_numpy(boxes), torch.from_numpy(scores))
    ref = model.postprocess(ref_boxes, ref_scores)
    top = [bool(torch.equal(a["labels"][:10], b["labels"][:10])) for a, b in zip(ours, ref)]
    result = {"max_abs_box_error": box_err, "max_abs_score_error": score_err,
              "top10_labels_agree": sum(top) / len(top)}
    if box_err > BOX_TOLERANCE or score_err > SCORE_TOLERANCE:
        raise UserError(f"the ONNX file disagrees with PyTorch (box error {box_err:.3g} px, score error "
                        f"{score_err:.3g}): not written")
    return result


def export_detector(ckpt_path: Path, ckpt: dict, fmt: str, quantize: str | None, out: str | None,
                    num_verify: int) -> dict:
    """Write and check the ONNX file of a detection checkpoint; returns what mobilenet-export reports."""
    if fmt != "onnx" or quantize:
        raise UserError(f"detection checkpoints export to ONNX fp32 only (asked: --format {fmt}"
                        f"{' --quantize ' + quantize if quantize else ''}): use --format onnx")
    out_path = Path(out) if out else ckpt_path.with_suffix(".onnx")
    model = detector_outputs(ckpt)
    images, described = real_images(ckpt, num_verify)
    x = normalized(images, ckpt["config"]["data"]["normalization"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.tmp{os.getpid()}{out_path.suffix}")
    try:
        write_onnx(model, tmp, x[:2], metadata(ckpt))
        check = verify_onnx(tmp, model, x)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"out": str(out_path), "verification": check, "inputs": described,
            "size_bytes": out_path.stat().st_size}
