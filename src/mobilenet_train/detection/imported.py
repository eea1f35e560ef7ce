"""Google's TF-Lite SSD (weights/tflite_detect.py) as the toolkit's `SSDMobileNetV1`.

The weights map one to one (backbone, extra layers, one 1x1 box and class conv per feature map);
two orders differ and are permuted here:
  - anchors within a location: TF lists (scale s) ratios 1, 2, 1/2, 3, 1/3, then the interpolated
    ratio-1 box; torchvision's DefaultBoxGenerator puts the interpolated box second. The permutation
    is found by matching the file's anchors with `TFAnchors`, which also checks them;
  - box codes: TF's ty, tx, th, tw; torchvision's dx, dy, dw, dh.
The class index is the file's: label k (1..90 for Google's COCO file) is COCO category id k, the
background 0 (the file's label map: line k = category id k).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.models._meta import _COCO_CATEGORIES

from ..errors import UserError
from ..model import ModelArgs
from ..weights.common import infer_width
from ..weights.tflite_detect import POSTPROCESS, DetectorSource
from .model import DetArgs, DetectorOutputs, SSDMobileNetV1

BOX_ORDER = (1, 0, 3, 2)  # torchvision's dx, dy, dw, dh from TF's ty, tx, th, tw
FLOAT_ANCHOR_TOLERANCE = 1e-5


def detector_args(src: DetectorSource) -> DetArgs:
    """The toolkit detector of the file: its width, input size, categories and post-processing."""
    widths = [int(c.weight.shape[0]) for i, c in enumerate(src.convs) if i % 2 == 0]
    alpha, round_to = infer_width(src, widths)
    p = src.postprocess
    regular = bool(p.get("use_regular_nms", False))
    return DetArgs(alpha=alpha, resolution=src.resolution, num_classes=src.num_classes, activation="relu6",
                   padding="tf_same", round_to=round_to, norm="none", head="ssd",
                   score_thresh=float(p["nms_score_threshold"]), nms_thresh=round(float(p["nms_iou_threshold"]), 6),
                   detections_per_img=int(p["max_detections"]),
                   topk_candidates=int(p.get("detections_per_class", DetArgs.topk_candidates)),
                   score_fn=src.score_fn, nms_mode="per_class" if regular else "best_class",
                   box_scales=tuple(round(float(p[k]), 6) for k in ("y_scale", "x_scale", "h_scale", "w_scale")),
                   clip_anchors=False)


def toolkit_anchors(model: SSDMobileNetV1) -> tuple[np.ndarray, list[int]]:
    """The model's anchors as (ycenter, xcenter, h, w) fractions of the input, and the feature-map sizes."""
    outputs = DetectorOutputs(model)
    a = outputs.anchors.double() / model.args.resolution
    yxhw = torch.stack([(a[:, 1] + a[:, 3]) / 2, (a[:, 0] + a[:, 2]) / 2, a[:, 3] - a[:, 1], a[:, 2] - a[:, 0]], 1)
    size = model.args.resolution
    with torch.no_grad():
        maps = model.backbone(torch.zeros(1, 3, size, size))
    return yxhw.numpy(), [int(m.shape[-1]) for m in maps.values()]


def match_anchors(src: DetectorSource, ours: np.ndarray, map_sizes: list[int]) -> tuple[list[list[int]], dict]:
    """Per feature map, the permutation p (the file's slot j is our slot p[j]) and the comparison; UserError
    naming the first difference when the file's anchors are not TFAnchors' (then the boxes would move)."""
    theirs = src.anchors.astype(np.float64)
    tolerance = src.anchor_step / 2 + 1e-6 if src.anchor_step else FLOAT_ANCHOR_TOLERANCE
    perms, start, worst = [], 0, 0.0
    counts = [int(c.weight.shape[0]) // 4 for c in src.box_convs]
    if sum(s * s * k for s, k in zip(map_sizes, counts)) != len(theirs):
        raise UserError(f"{src.sources[0]} has {len(theirs)} anchors; TFAnchors on feature maps {map_sizes} with "
                        f"{counts} anchors per location have {sum(s * s * k for s, k in zip(map_sizes, counts))}")
    for m, (size, k) in enumerate(zip(map_sizes, counts)):
        n = size * size * k
        file_block = theirs[start:start + n].reshape(size * size, k, 4)
        our_block = ours[start:start + n].reshape(size * size, k, 4)
        cost = np.abs(file_block[0, :, None, 2:] - our_block[0, None, :, 2:]).sum(-1)  # h, w at location 0
        perm = [int(i) for i in cost.argmin(1)]
        diff = np.abs(file_block - our_block[:, perm]) if len(set(perm)) == k else np.full(1, np.inf)
        if diff.max() > tolerance:
            at = np.unravel_index(int(diff.argmax()), diff.shape) if np.isfinite(diff).all() else (0, 0, 0)
            loc, slot = int(at[0]), int(at[1])
            raise UserError(
                f"the anchors of {src.sources[0]} differ from TFAnchors (min_ratio 0.2, max_ratio 0.95, TF's aspect "
                f"ratios): feature map {m} location {loc} anchor {slot} is (yc, xc, h, w) "
                f"{np.round(file_block[loc, slot], 4).tolist()} in the file, "
                f"{np.round(our_block[loc, perm[slot] if len(set(perm)) == k else slot], 4).tolist()} here "
                f"(tolerance {tolerance:.2g}); the import would move its boxes: not written")
        worst = max(worst, float(diff.max()))
        perms.append(perm)
        start += n
    check = {"anchors": len(theirs), "max_abs_difference": worst, "tolerance": tolerance,
             "stored_as": f"uint8, step {src.anchor_step:.6g}" if src.anchor_step else "float32",
             "slot_order": perms[-1]}
    return perms, check


def _head_values(src: DetectorSource, perms: list[list[int]]) -> dict[str, np.ndarray]:
    """The box and class predictors in the toolkit's anchor and box-code order."""
    values = {}
    for m, (box, cls, perm) in enumerate(zip(src.box_convs, src.class_convs, perms)):
        k, width = len(perm), cls.weight.shape[0] // len(perm)
        box_rows = np.empty(4 * k, np.int64)
        cls_rows = np.empty(width * k, np.int64)
        for j, ours in enumerate(perm):
            box_rows[4 * ours: 4 * ours + 4] = [4 * j + c for c in BOX_ORDER]
            cls_rows[width * ours: width * ours + width] = np.arange(width * j, width * j + width)
        for name, conv, rows in (("regression", box, box_rows), ("classification", cls, cls_rows)):
            values[f"head.{name}_head.module_list.{m}.weight"] = conv.weight[rows]
            values[f"head.{name}_head.module_list.{m}.bias"] = conv.bias[rows]
    return values


def to_detector(src: DetectorSource) -> tuple[SSDMobileNetV1, DetArgs, dict]:
    """The toolkit's detector holding the file's weights; returns it, its args and the anchor comparison."""
    from ..weights.common import MODULES

    args = detector_args(src)
    model = SSDMobileNetV1(args)
    ours, map_sizes = toolkit_anchors(model)
    perms, check = match_anchors(src, ours, map_sizes)
    values = {f"backbone.{module}.conv": conv for module, conv in zip(MODULES, src.convs)}
    values.update({f"backbone.extras.{i // 2}.{i % 2}.conv": conv for i, conv in enumerate(src.extras)})
    arrays = {f"{k}.{part}": getattr(c, part) for k, c in values.items() for part in ("weight", "bias")}
    arrays.update(_head_values(src, perms))
    state = model.state_dict()
    for key, value in arrays.items():
        if key not in state or tuple(value.shape) != tuple(state[key].shape):
            want = tuple(state[key].shape) if key in state else "no such tensor"
            raise UserError(f"{src.sources[0]}: {key} would get an array of shape {tuple(value.shape)}, the "
                            f"detector needs {want}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    unset = [k for k in state if k not in arrays]
    if unset:
        raise UserError(f"{src.sources[0]} holds no weights for {', '.join(unset[:3])}: not TF's ssd_mobilenet_v1")
    model.load_state_dict(state)
    return model, args, check


def coco_categories(num_classes: int) -> tuple[list[str], list[int]] | None:
    """(names, COCO category ids) of labels 1..90 (torchvision's COCO list; 'N/A' for the ten ids COCO left
    unused); None for another count."""
    if num_classes != len(_COCO_CATEGORIES) - 1:
        return None
    return list(_COCO_CATEGORIES[1:]), list(range(1, len(_COCO_CATEGORIES)))


def postprocess_record(src: DetectorSource) -> dict:
    """The op's settings, as read, for the checkpoint's import record."""
    return {"op": POSTPROCESS, **{k: (float(v) if isinstance(v, float) else v) for k, v in src.postprocess.items()}}


# DetArgs keys that live in model.* (the rest are detection.*)
MODEL_KEYS = (*ModelArgs.__dataclass_fields__, "task")  # the backbone's keys (model.*); the rest are detection.*


def config_overrides_of(args: DetArgs) -> list[str]:
    """The overrides whose config builds exactly the imported detector (task, data=coco, its input
    normalisation, model.*, detection.*)."""
    model = {f"model.{k}": v for k, v in args.to_dict().items()
             if k in ("alpha", "resolution", "activation", "padding", "round_to", "norm")}
    detection = {f"detection.{k}": v for k, v in args.to_dict().items() if k not in MODEL_KEYS}
    items = {"task": "detection", "data": "coco", "data.num_classes": args.num_classes,
             "data.normalization": "uint8_128", **model, **detection}
    return [f"{k}={_override_value(v)}" for k, v in items.items()]


def _override_value(value) -> str:
    """A value as a command-line override reads it back."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ",".join(repr(float(v)) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)
