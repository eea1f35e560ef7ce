"""Score a TF-Lite SSD detector (Google's COCO detect.tflite) in LiteRT: the library side of
`mobilenet-eval detect.tflite data=coco data.root=...`.

The file runs whole, its own TFLite_Detection_PostProcess op included (score conversion, box
decoding with its anchors, NMS, its max_detections); only the images and the scoring are the
toolkit's: mobilenet-eval's loader and eval transform (the whole image resized to the input size,
uint8, what the file's input takes as it is) and the same COCOeval code as a detection checkpoint.
The op's boxes (normalised ymin, xmin, ymax, xmax) are clipped to the image, as the toolkit's
post-processing clips its own; its class index k is label k + 1, i.e. COCO category id k + 1 for
Google's file (categories mapped by COCO id, as for the imported checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from ..checkpoint import atomic_write_json
from ..config import apply_overrides, compose, resolved, typed_config
from ..data.coco import build_detection_data
from ..detection.evaluate import evaluate_detection
from ..detection.imported import coco_categories, config_overrides_of, detector_args, to_detector
from ..detection.train import detector_complexity
from ..engine import progress_enabled
from ..errors import UserError

RUNTIME = "LiteRT (XNNPACK), the file's TFLite_Detection_PostProcess"


class LiteRTDetector(nn.Module):
    """The .tflite detector as `evaluate_detection`'s model: uint8 NCHW batch -> [{boxes, scores, labels}]
    in input pixels."""

    def __init__(self, path: Path, output_names: list[str], resolution: int, threads: int = 0):
        super().__init__()
        from ai_edge_litert.interpreter import Interpreter

        self.args = SimpleNamespace(resolution=resolution)
        self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        by_name = {d["name"]: d["index"] for d in self.interpreter.get_output_details()}
        self.outputs = [by_name[n] for n in output_names]  # boxes, classes, scores, count

    def forward(self, images: torch.Tensor) -> list[dict]:
        dets = []
        for image in images.permute(0, 2, 3, 1).contiguous().numpy():
            self.interpreter.set_tensor(self.input["index"], image[None].astype(self.input["dtype"]))
            self.interpreter.invoke()
            boxes, classes, scores, count = (self.interpreter.get_tensor(i) for i in self.outputs)
            n = int(count.reshape(-1)[0])
            yxyx = np.clip(boxes[0, :n], 0.0, 1.0) * self.args.resolution
            dets.append({"boxes": torch.from_numpy(yxyx[:, [1, 0, 3, 2]].astype(np.float32)),
                         "scores": torch.from_numpy(scores[0, :n].astype(np.float32)),
                         "labels": torch.from_numpy(classes[0, :n].astype(np.int64) + 1)})
        return dets


class Uint8Input:
    """The loader's uint8 images as they are: the file's input is uint8 (its quantization is its own)."""

    device = torch.device("cpu")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images


def score_tflite_detector(path: Path, src, opts, rest: list[str], out: Path) -> dict:
    """Evaluate the detector file `path` (read as `src`, a DetectorSource) on COCO-format data."""
    if src.input.get("dtype") != "uint8":
        raise UserError(f"{path} takes {src.input.get('dtype')} input; the detector scorer feeds uint8 images "
                        f"(Google's quantized detect.tflite)")
    args = detector_args(src)
    for item in rest:
        if item.lstrip("+").startswith(("model.", "detection.")):
            raise UserError(f"'{item}': the file's model and post-processing are fixed by the file; drop it")
    cfg = apply_overrides(typed_config(resolved(compose(config_overrides_of(args)))), rest)
    categories = coco_categories(args.num_classes)
    data = build_detection_data(cfg, args.resolution, train=False, model_categories=categories)
    model = LiteRTDetector(path, src.details["outputs"], args.resolution, int(opts.threads))
    metrics = evaluate_detection(model, data.val_loader, Uint8Input(), desc="eval",
                                 progress=progress_enabled(opts.progress),
                                 category_ids=categories[1] if categories else None)
    imported, _, _ = to_detector(src)
    result = {
        **metrics, **detector_complexity(imported, args.resolution), "task": "detection",
        "file": str(path.resolve()), "format": "tflite", "runtime": RUNTIME,
        "quantization": f"{src.details['weight_dtype']}-google", "checkpoint": None, "alpha": args.alpha,
        "resolution": args.resolution, "variant": args.variant, "head": args.head, "use_ema": False,
        "dataset": cfg.data.name, "data_root": str(cfg.data.root) if cfg.data.root else None,
        "split": cfg.data.val_split, "device": "cpu", "threads": int(opts.threads), "amp": "none",
        "model_args": args.to_dict(), "max_detections_per_image": args.detections_per_img,
        "category_mapping": "by COCO id (label k = COCO category id k)" if categories else "dataset order",
    }
    atomic_write_json(out, result)
    return {**result, "out": str(out)}
