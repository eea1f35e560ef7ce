"""SSD on the MobileNet v1 backbone (the paper's section 4.6, Table 13), built from torchvision's SSD.

    backbone   the classifier's stem and blocks; feature maps after the last stride-16 block
               (block 11: 19x19 at 300 px) and the last block (block 13: 10x10)
    extras     four 1x1 (depth/2) -> 3x3 stride-2 (depth) layers down to 1x1, depths
               512, 256, 256, 128 times alpha: TensorFlow's ssd_mobilenet_v1 configuration
    head       per feature map a class and a box predictor (detection.head)

Anchors (DefaultBoxGenerator), the box coder, the matcher, hard-negative mining, the losses and
the post-processing (score threshold, per-class NMS) are torchvision's `SSD`, not rewritten. TF's
variants, for Google's imported detector (detection.score_fn=sigmoid, nms_mode=best_class,
clip_anchors=false), replace only the per-anchor class loss and the candidate selection before
torchvision.ops' NMS.
Images come in normalised by the toolkit's DevicePreprocess, already resized to the model's
resolution, so the SSD's own transform neither normalises nor resizes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDHead, SSDScoringHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import boxes as box_ops

from ..errors import UserError
from ..model import ConvBNAct, DepthwiseSeparable, MobileNetV1, ModelArgs
from .frcnn import FasterRCNNMobileNetV1

EXTRA_DEPTHS = (512, 256, 256, 128)
# Anchors per feature map: TF ssd_mobilenet_v1's aspect ratios 1, 2, 1/2, 3, 1/3 and one more of ratio 1
# between this scale and the next; the first map has three (TFAnchors).
ASPECT_RATIOS = ([2],) + ([2, 3],) * 5
LOWEST_LAYER_SCALE = 0.1  # TF's reduce_boxes_in_lowest_layer: its ratio-1 box at scale 0.1


class TFAnchors(DefaultBoxGenerator):
    """torchvision's default boxes with TF's `reduce_boxes_in_lowest_layer` (its ssd_anchor_generator
    default): on the first feature map only (0.1, 1), (s, 2) and (s, 1/2), three boxes where torchvision
    puts four, as TensorFlow's ssd_mobilenet_v1 (the paper's Table 13 detector) has it."""

    def _generate_wh_pairs(self, num_outputs: int, dtype: torch.dtype = torch.float32, device=None) -> list:
        device = torch.device("cpu") if device is None else device
        pairs = super()._generate_wh_pairs(num_outputs, dtype, device)
        s, r = self.scales[0], math.sqrt(2.0)
        pairs[0] = torch.tensor([[LOWEST_LAYER_SCALE] * 2, [s * r, s / r], [s / r, s * r]], dtype=dtype, device=device)
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [len(p) for p in self._wh_pairs]


@dataclass(frozen=True)
class DetArgs(ModelArgs):
    """ModelArgs of the backbone plus the detector's keys (detection.*); num_classes counts object
    categories, the background class comes on top. Stored in every detection checkpoint."""

    task: str = "detection"
    arch: str = "ssd"
    proposals: int = 300
    head: str = "ssd"
    min_ratio: float = 0.2
    max_ratio: float = 0.95
    iou_thresh: float = 0.5
    positive_fraction: float = 0.25
    score_thresh: float = 0.01
    nms_thresh: float = 0.45
    detections_per_img: int = 100
    topk_candidates: int = 400
    score_fn: str = "softmax"
    nms_mode: str = "per_class"
    box_scales: tuple = (10.0, 10.0, 5.0, 5.0)
    clip_anchors: bool = True

    def __post_init__(self):
        # A config or a checkpoint gives a list: one hashable, comparable form.
        object.__setattr__(self, "box_scales", tuple(float(v) for v in self.box_scales))

    @classmethod
    def from_config(cls, cfg) -> DetArgs:
        """From the whole config: the `model` group and the `detection` section."""
        names = cls.__dataclass_fields__.keys()
        merged = {**{k: cfg.model[k] for k in names if k in cfg.model},
                  **{k: cfg.detection[k] for k in names if k in cfg.detection}}
        args = cls(**merged)
        args.validate()
        return args

    def validate(self) -> None:
        super().validate()
        from ..config.schema import DetectionConfig, check

        check(DetectionConfig, {**self.to_dict(), "box_scales": list(self.box_scales)}, "detection.")
        if self.min_ratio >= self.max_ratio:
            raise UserError(f"detection.min_ratio={self.min_ratio} must be below detection.max_ratio="
                            f"{self.max_ratio}, e.g. detection.min_ratio=0.2 detection.max_ratio=0.95")
        if self.resolution < 64:
            raise UserError(f"model.resolution={self.resolution} is too small for SSD's six feature maps: use 64 "
                            f"or more, e.g. model.resolution=300")

    def backbone_args(self) -> ModelArgs:
        base = {k: v for k, v in self.to_dict().items() if k in ModelArgs.__dataclass_fields__}
        return ModelArgs(**base)


def _stride_taps(blocks: nn.Sequential) -> tuple[int, int]:
    """Indices of the last block at output stride 16 and of the last block (stride 32)."""
    stride, last16 = 2, None  # after the stem
    for i, block in enumerate(blocks):
        conv = next(m for m in block.modules() if isinstance(m, nn.Conv2d))
        stride *= conv.stride[0]
        if stride == 16:
            last16 = i
    return last16, len(blocks) - 1


def _out_channels(block: nn.Module) -> int:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


class MobileNetV1Features(nn.Module):
    """The classifier's stem and blocks (same parameter names, so classification weights load) and the
    extra layers; returns the six feature maps SSD predicts from."""

    def __init__(self, args: DetArgs):
        super().__init__()
        base = MobileNetV1(replace(args.backbone_args(), num_classes=1))
        self.stem, self.blocks = base.stem, base.blocks
        self.tap16, self.tap32 = _stride_taps(self.blocks)
        in_ch = base.num_features
        channels = [_out_channels(self.blocks[self.tap16]), in_ch]
        extras = []
        for depth in EXTRA_DEPTHS:
            out_ch, mid = args.channels(depth), args.channels(depth // 2)
            down = (DepthwiseSeparable(mid, out_ch, 2, args) if args.head == "ssdlite"
                    else ConvBNAct(mid, out_ch, 3, 2, groups=1, args=args))
            extras.append(nn.Sequential(ConvBNAct(in_ch, mid, 1, 1, groups=1, args=args), down))
            channels.append(out_ch)
            in_ch = out_ch
        self.extras = nn.ModuleList(extras)
        self.out_channels = channels

    def forward(self, x):
        x = self.stem(x)
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in (self.tap16, self.tap32):
                maps.append(x)
        for layer in self.extras:
            x = layer(x)
            maps.append(x)
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class ConvPredictorHead(SSDHead):
    """TF ssd_mobilenet_v1's box predictor: one 1x1 conv per feature map for the class logits and one
    for the box offsets, in torchvision's SSDScoringHead (which lays the outputs out per anchor)."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int):
        nn.Module.__init__(self)

        def convs(width: int) -> nn.ModuleList:
            layers = nn.ModuleList(nn.Conv2d(c, a * width, 1) for c, a in zip(in_channels, num_anchors))
            for conv in layers:
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
            return layers

        self.classification_head = SSDScoringHead(convs(num_classes), num_classes)
        self.regression_head = SSDScoringHead(convs(4), 4)


def build_head(head: str, channels: list[int], anchors: list[int], num_classes: int) -> nn.Module:
    if head == "ssd":
        return ConvPredictorHead(channels, anchors, num_classes)
    if head == "ssd3x3":
        return SSDHead(channels, anchors, num_classes)
    return SSDLiteHead(channels, anchors, num_classes, partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))


class SSDMobileNetV1(SSD):
    """torchvision's SSD with the MobileNet v1 feature extractor. Train: model(images, targets) -> losses;
    eval: model(images) -> [{boxes, scores, labels}] in the input's pixel coordinates."""

    def __init__(self, args: DetArgs):
        args.validate()
        features = MobileNetV1Features(args)
        anchors = TFAnchors([list(r) for r in ASPECT_RATIOS], min_ratio=args.min_ratio, max_ratio=args.max_ratio,
                            clip=args.clip_anchors)
        head = build_head(args.head, features.out_channels, anchors.num_anchors_per_location(), args.num_classes + 1)
        super().__init__(features, anchors, (args.resolution, args.resolution), args.num_classes + 1,
                         image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], head=head,
                         score_thresh=args.score_thresh, nms_thresh=args.nms_thresh,
                         detections_per_img=args.detections_per_img, iou_thresh=args.iou_thresh,
                         topk_candidates=args.topk_candidates, positive_fraction=args.positive_fraction)
        y, x, h, w = args.box_scales
        self.box_coder = det_utils.BoxCoder(weights=(x, y, w, h))  # torchvision orders them x, y, w, h
        self.args = args

    def class_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Class scores [..., 1 + categories] from the logits (detection.score_fn)."""
        return torch.sigmoid(logits) if self.args.score_fn == "sigmoid" else F.softmax(logits, dim=-1)

    def score_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """The inverse of `class_scores` (up to softmax's constant)."""
        scores = scores.clamp(1e-12, 1 - 1e-7) if self.args.score_fn == "sigmoid" else scores.clamp_min(1e-12)
        return torch.logit(scores) if self.args.score_fn == "sigmoid" else torch.log(scores)

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        """softmax: torchvision's SSD loss. sigmoid: TF's SSD loss, a sigmoid cross-entropy per category
        (one-hot targets; a background anchor has none) in place of the softmax one; box loss and hard-negative
        mining as torchvision's."""
        if self.args.score_fn == "softmax":
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        cls_logits = head_outputs["cls_logits"]
        box_loss, cls_targets, num_foreground = [], [], 0
        for t, codes, anchor, matched in zip(targets, head_outputs["bbox_regression"], anchors, matched_idxs):
            fg = torch.where(matched >= 0)[0]
            num_foreground += fg.numel()
            target_codes = self.box_coder.encode_single(t["boxes"][matched[fg]], anchor[fg])
            box_loss.append(F.smooth_l1_loss(codes[fg], target_codes, reduction="sum"))
            labels = torch.zeros(cls_logits.shape[1], dtype=torch.int64, device=cls_logits.device)
            labels[fg] = t["labels"][matched[fg]]
            cls_targets.append(labels)
        cls_targets = torch.stack(cls_targets)
        # The background is implicit (an anchor with no category), as TF trains its sigmoid SSD: the file's
        # background column is near 0 everywhere and no score reads it.
        one_hot = F.one_hot(cls_targets, cls_logits.shape[-1])[..., 1:].to(cls_logits.dtype)
        cls_loss = F.binary_cross_entropy_with_logits(cls_logits[..., 1:], one_hot, reduction="none").sum(-1)
        foreground = cls_targets > 0
        num_negative = self.neg_to_pos_ratio * foreground.sum(1, keepdim=True)
        negative_loss = cls_loss.detach().clone()
        negative_loss[foreground] = -float("inf")
        order = negative_loss.sort(1, descending=True)[1]
        background = order.sort(1)[1] < num_negative
        n = max(1, num_foreground)
        return {"bbox_regression": torch.stack(box_loss).sum() / n,
                "classification": (cls_loss[foreground].sum() + cls_loss[background].sum()) / n}

    def postprocess_detections(self, head_outputs, image_anchors, image_shapes):
        """torchvision's (softmax, per-class NMS), or detection.score_fn / nms_mode's variants: TF-Lite's
        TFLite_Detection_PostProcess is sigmoid + best_class."""
        a = self.args
        if a.score_fn == "softmax" and a.nms_mode == "per_class":
            return super().postprocess_detections(head_outputs, image_anchors, image_shapes)
        scores_all = self.class_scores(head_outputs["cls_logits"])
        dets = []
        for codes, scores, anchors, shape in zip(head_outputs["bbox_regression"], scores_all, image_anchors,
                                                 image_shapes):
            boxes = box_ops.clip_boxes_to_image(self.box_coder.decode_single(codes, anchors), shape)
            boxes, scores, labels = self._candidates(boxes, scores[:, 1:])
            if a.nms_mode == "best_class":
                keep = box_ops.nms(boxes, scores, a.nms_thresh)
            else:
                keep = box_ops.batched_nms(boxes, scores, labels, a.nms_thresh)
            keep = keep[:a.detections_per_img]
            dets.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return dets

    def _candidates(self, boxes: torch.Tensor, scores: torch.Tensor):
        """(boxes, scores, labels) above the score threshold: best_class one per anchor (its best category),
        per_class up to topk_candidates per category."""
        a = self.args
        if a.nms_mode == "best_class":
            best, labels = scores.max(dim=1)
            keep = torch.where(best > a.score_thresh)[0]
            return boxes[keep], best[keep], labels[keep] + 1
        out_boxes, out_scores, out_labels = [], [], []
        for c in range(scores.shape[1]):
            s = scores[:, c]
            keep = torch.where(s > a.score_thresh)[0]
            s, idx = s[keep].topk(min(a.topk_candidates, keep.numel()))
            out_boxes.append(boxes[keep[idx]])
            out_scores.append(s)
            out_labels.append(torch.full_like(idx, c + 1))
        return torch.cat(out_boxes), torch.cat(out_scores), torch.cat(out_labels)

    # The classifier's names, so fine-tuning's freezing (finetune.backbone) finds the backbone.
    @property
    def stem(self) -> nn.Module:
        return self.backbone.stem

    @property
    def blocks(self) -> nn.Module:
        return self.backbone.blocks

    def init_from_checkpoint(self, init: dict, path: str, classes: list[str] | None = None) -> list[str]:
        """Load `init` (a checkpoint payload) into this detector: a classifier's stem and blocks become the
        backbone, a detector's weights are taken where their shapes fit. A detector's class predictors: where
        both know their category names (`classes`: this detector's) and these differ, the rows of categories
        whose names match (and the background's) are kept and the others stay new (`class_rows`); else kept
        when the shapes fit. Returns the names left as initialised; UserError when the backbone does not fit."""
        own = self.state_dict()
        detector = init["model_args"].get("task") == "detection"
        prefix = "" if detector else "backbone."
        mapped = {f"{prefix}{k}": v for k, v in init["model"].items()
                  if detector or k.startswith(("stem.", "blocks."))}
        missing = [k for k in own if k.startswith(("backbone.stem.", "backbone.blocks.")) and k not in mapped]
        wrong = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape and not k.startswith("head.")]
        if missing or wrong:
            odd = ", ".join((wrong or missing)[:3])
            raise UserError(f"model.init={path} does not fit the detector's backbone: no matching weights for "
                            f"{odd}, ...")
        kept = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
        self.kept_categories = None
        if detector and classes and init.get("classes") and list(init["classes"]) != list(classes):
            kept = {k: v for k, v in kept.items() if not k.startswith(CLASS_HEAD)}
            rows, self.kept_categories = class_rows(mapped, own, list(init["classes"]), list(classes))
            kept.update(rows)
        self.load_state_dict({**own, **kept})
        return [k for k in own if k not in kept]


CLASS_HEAD = "head.classification_head."


def class_rows(init_state: dict, own: dict, init_classes: list[str], classes: list[str]) -> tuple[dict, dict]:
    """The class predictors for `classes` from a detector trained on `init_classes`: per anchor, the background
    row and the rows of categories of the same name (case aside) copied, the others as `own` has them (new).
    Returns ({name: tensor}, {category: its row in the init, or None when new})."""
    index = {name.lower(): i for i, name in enumerate(init_classes)}
    source = {c: index.get(c.lower()) for c in classes}
    new_width, old_width = len(classes) + 1, len(init_classes) + 1
    pairs = [(0, 0)] + [(k + 1, source[c] + 1) for k, c in enumerate(classes) if source[c] is not None]
    rows = {}
    for name, value in own.items():
        if not name.startswith(CLASS_HEAD) or name not in init_state:
            continue
        old = init_state[name]
        anchors = value.shape[0] // new_width
        if old.shape[0] != anchors * old_width or old.shape[1:] != value.shape[1:]:
            continue  # another head layout: stays new
        out = value.clone()
        for a in range(anchors):
            for new, prev in pairs:
                out[a * new_width + new] = old[a * old_width + prev]
        rows[name] = out
    return rows, source


def build_detector(cfg) -> tuple[nn.Module, DetArgs]:
    """Build from the whole config (task=detection): SSD, or Faster R-CNN (detection.arch)."""
    args = DetArgs.from_config(cfg)
    return detector_of(args), args


def detector_from_args(stored: dict) -> tuple[nn.Module, DetArgs]:
    args = DetArgs(**stored)
    return detector_of(args), args


def detector_of(args: DetArgs) -> nn.Module:
    return FasterRCNNMobileNetV1(args) if args.arch == "faster_rcnn" else SSDMobileNetV1(args)


class DetectorOutputs(nn.Module):
    """The detector up to, not including, the score threshold and NMS: (boxes [B, A, 4] as x1, y1, x2, y2
    in input pixels, clipped to the image; scores [B, A, classes + 1], softmax or sigmoid (detection.score_fn),
    background first) for every
    anchor. What the ONNX export holds and what the complexity is counted on; `postprocess` finishes it
    as torchvision's SSD does."""

    def __init__(self, detector: SSDMobileNetV1):
        super().__init__()
        self.detector = detector
        size = detector.args.resolution
        probe = torch.zeros(1, 3, size, size, device=next(detector.parameters()).device)
        was_training = detector.training
        detector.eval()  # the probe only reads the feature-map sizes: no BN statistics change
        with torch.no_grad():
            maps = list(detector.backbone(probe).values())
            anchors = detector.anchor_generator(ImageList(probe, [(size, size)]), maps)[0]
        detector.train(was_training)
        self.register_buffer("anchors", anchors, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.detector
        out = d.head(list(d.backbone(x).values()))
        n = x.shape[0]
        codes = out["bbox_regression"].reshape(-1, 4)
        boxes = d.box_coder.decode_single(codes, self.anchors.repeat(n, 1)).reshape(n, -1, 4)
        boxes = boxes.clamp(min=0.0, max=float(d.args.resolution))
        return boxes, d.class_scores(out["cls_logits"])

    def postprocess(self, boxes: torch.Tensor, scores: torch.Tensor) -> list[dict]:
        """Score threshold, top-k per class and per-class NMS (torchvision's SSD.postprocess_detections,
        the same code) on outputs of `forward`."""
        d = self.detector
        logits = d.score_logits(scores)  # its class_scores gives the scores back
        dets = []
        for b in range(boxes.shape[0]):
            anchors = [d.box_coder.encode_single(boxes[b], self.anchors)]
            head = {"bbox_regression": anchors[0][None], "cls_logits": logits[b][None]}
            dets += d.postprocess_detections(head, [self.anchors], [(d.args.resolution,) * 2])
        return dets
