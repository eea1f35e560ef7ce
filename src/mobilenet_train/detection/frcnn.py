"""Faster R-CNN on the MobileNet v1 backbone (`detection.arch=faster_rcnn`; the paper's Table 13
Faster-RCNN 300 / 600 rows), built from torchvision's `FasterRCNN`.

    trunk      the classifier's stem and blocks up to the last stride-16 block (block 11 of Table 1;
               19x19 at 300 px): run once per image
    RPN        torchvision's RPNHead (a 3x3 conv, then 1x1 objectness and box convs) on that map,
               12 anchors per location (sizes 1/4, 1/2, 1, 2 x 256 px at 600 px input, scaled with
               the input; ratios 1/2, 1, 2: TF's Faster R-CNN grid anchors); `detection.proposals`
               kept after its NMS at test time
    RoI head   torchvision's MultiScaleRoIAlign 14x14 crops; the classifier's blocks 12 and 13 run on
               every crop (block 12's stride 2 makes it 7x7), global average pool, torchvision's
               FastRCNNPredictor (class logits, per-class boxes)

That split (features from block 11, the rest of MobileNet per RoI) is TF's Faster R-CNN MobileNet
(Huang et al. 2017, the paper's source for Table 13). The RPN, the RoI sampling, the losses and the
post-processing are torchvision's, not rewritten. Images come normalised and resized to
`model.resolution` square (the transform neither normalises nor resizes).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

from ..errors import UserError
from ..model import MobileNetV1

ANCHOR_SCALES = (0.25, 0.5, 1.0, 2.0)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
ANCHOR_BASE = 256 / 600  # TF's 256 px base anchor at its 600 px input, as a fraction of the input side
ROI_SIZE = 14


class Trunk(nn.Module):
    """The stem and blocks 1..tap of MobileNet v1 (the classifier's names: weights load)."""

    def __init__(self, stem: nn.Module, blocks: nn.Sequential, out_channels: int):
        super().__init__()
        self.stem, self.blocks, self.out_channels = stem, blocks, out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


class RoIBlocks(nn.Module):
    """The blocks after the trunk, run on every RoI crop, then the global average pool."""

    def __init__(self, blocks: nn.Sequential):
        super().__init__()
        self.blocks = blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))


def split_at_stride16(base: MobileNetV1) -> int:
    """The number of blocks up to and including the last one at output stride 16."""
    stride, count = 2, 0  # after the stem
    for i, block in enumerate(base.blocks):
        stride *= next(m for m in block.modules() if isinstance(m, nn.Conv2d)).stride[0]
        if stride == 16:
            count = i + 1
    return count


class FasterRCNNMobileNetV1(FasterRCNN):
    """torchvision's Faster R-CNN with MobileNet v1 split at block 11. Train: model(images, targets) ->
    losses; eval: model(images) -> [{boxes, scores, labels}] in the input's pixel coordinates."""

    def __init__(self, args):
        args.validate()
        base = MobileNetV1(replace(args.backbone_args(), num_classes=1))
        self.split = split_at_stride16(base)
        trunk_blocks, roi_blocks = base.blocks[:self.split], base.blocks[self.split:]
        trunk = Trunk(base.stem, trunk_blocks, _out_channels(trunk_blocks))
        size = args.resolution * ANCHOR_BASE
        anchors = AnchorGenerator(sizes=(tuple(round(size * s) for s in ANCHOR_SCALES),),
                                  aspect_ratios=(ANCHOR_RATIOS,))
        super().__init__(
            trunk, num_classes=None, min_size=args.resolution, max_size=args.resolution,
            image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], rpn_anchor_generator=anchors,
            rpn_head=RPNHead(trunk.out_channels, anchors.num_anchors_per_location()[0]),
            rpn_pre_nms_top_n_test=max(1000, args.proposals), rpn_post_nms_top_n_test=args.proposals,
            box_roi_pool=MultiScaleRoIAlign(["0"], ROI_SIZE, sampling_ratio=2), box_head=RoIBlocks(roi_blocks),
            box_predictor=FastRCNNPredictor(base.num_features, args.num_classes + 1),
            box_score_thresh=args.score_thresh, box_nms_thresh=args.nms_thresh,
            box_detections_per_img=args.detections_per_img)
        self.args = args

    # The classifier's names, so fine-tuning's freezing (finetune.backbone) finds the trunk.
    @property
    def stem(self) -> nn.Module:
        return self.backbone.stem

    @property
    def blocks(self) -> nn.Module:
        return self.backbone.blocks

    def classifier_names(self, name: str) -> str | None:
        """Where a classifier's parameter `name` goes in this model (None: nowhere)."""
        if name.startswith("stem."):
            return f"backbone.{name}"
        if not name.startswith("blocks."):
            return None
        index = int(name.split(".")[1])  # a slice of a Sequential keeps the classifier's indices
        return f"backbone.{name}" if index < self.split else f"roi_heads.box_head.{name}"

    def init_from_checkpoint(self, init: dict, path: str, classes: list[str] | None = None) -> list[str]:
        """A classifier's stem and blocks become the trunk and the RoI blocks; a Faster R-CNN checkpoint's
        weights are taken where their shapes fit. Returns the names left as initialised."""
        own = self.state_dict()
        detector = init["model_args"].get("task") == "detection"
        if detector and init["model_args"].get("arch", "ssd") != "faster_rcnn":
            raise UserError(f"model.init={path} is an SSD detector: start Faster R-CNN from a classifier or a "
                            f"Faster R-CNN checkpoint")
        mapped = dict(init["model"]) if detector else {
            self.classifier_names(k): v for k, v in init["model"].items() if self.classifier_names(k)}
        wrong = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape
                 and k.startswith(("backbone.", "roi_heads.box_head."))]
        missing = [k for k in own if k.startswith(("backbone.", "roi_heads.box_head.")) and k not in mapped]
        if wrong or missing:
            raise UserError(f"model.init={path} does not fit the detector's backbone: no matching weights for "
                            f"{', '.join((wrong or missing)[:3])}, ...")
        kept = {k: v for k, v in mapped.items() if k in own and own[k].shape == v.shape}
        self.load_state_dict({**own, **kept})
        self.kept_categories = None
        return [k for k in own if k not in kept]


def _out_channels(blocks: nn.Sequential) -> int:
    return [m for m in blocks[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels
