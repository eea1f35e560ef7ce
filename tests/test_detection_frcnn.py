"""Faster R-CNN on MobileNet v1 (detection.arch=faster_rcnn): Table 13's counts, torchvision's model on the
toolkit's backbone split at block 11, starting from a classifier, and (slow) train, eval and ONNX export."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_DET, run_main
from torch import nn

from mobilenet_train.checkpoint import model_payload
from mobilenet_train.detection.frcnn import FasterRCNNMobileNetV1
from mobilenet_train.detection.info import describe_frcnn, format_frcnn
from mobilenet_train.detection.model import DetArgs
from mobilenet_train.errors import UserError
from mobilenet_train.model import MobileNetV1, ModelArgs


def test_table13_counts_with_300_proposals():
    at300 = describe_frcnn(DetArgs(alpha=1.0, resolution=300, num_classes=90, arch="faster_rcnn"))
    # Per RoI: block 12 (3x3 depthwise stride 2 on 14x14x512, 1x1 512->1024 at 7x7), block 13 (7x7x1024), the
    # predictor (1024 -> 91 classes + 91 x 4 boxes), by hand.
    by_hand = 7 * 7 * 9 * 512 + 49 * 512 * 1024 + 7 * 7 * 9 * 1024 + 49 * 1024 * 1024 + 1024 * 91 * 5
    assert at300["per_roi"] == by_hand and at300["proposals"] == 300
    assert at300["mult_adds"] == at300["trunk"] + at300["rpn"] + 300 * by_hand == 25_223_422_912
    at600 = describe_frcnn(DetArgs(alpha=1.0, resolution=600, num_classes=90, arch="faster_rcnn"))
    assert at600["per_roi"] == by_hand and at600["trunk"] > 3.9 * at300["trunk"]
    verdicts = {(e["model"], e["quantity"]): e["agreement"] for e in at300["paper"] + at600["paper"]}
    assert verdicts[("Faster-RCNN 300 MobileNet", "mult_adds")] == "rounds"       # 25.22B -> 25.2B
    assert verdicts[("Faster-RCNN 600 MobileNet", "mult_adds")] == "rounds"       # 30.49B -> 30.5B
    assert verdicts[("Faster-RCNN 300 MobileNet", "params (all)")] == "rounds"    # 6.06M -> 6.1M
    assert verdicts[("Faster-RCNN 300 MobileNet", "params (conv and fc weights)")] is None  # 6.04M
    assert "per RoI x 300" in format_frcnn(at300)


def test_torchvision_faster_rcnn_on_the_backbone():
    classifier = MobileNetV1(ModelArgs(alpha=0.25, resolution=96, num_classes=7))
    for p in classifier.parameters():
        nn.init.normal_(p, std=0.1)
    model = FasterRCNNMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=3, arch="faster_rcnn",
                                          proposals=50))
    assert model.split == 11 and len(model.roi_heads.box_head.blocks) == 2
    fresh = model.init_from_checkpoint(model_payload(classifier, classifier.args, {}, None, {}), "cls.pt")
    assert torch.equal(model.backbone.blocks[10].pw.conv.weight, classifier.blocks[10].pw.conv.weight)
    assert torch.equal(model.roi_heads.box_head.blocks[1].pw.conv.weight, classifier.blocks[12].pw.conv.weight)
    assert fresh and all(k.startswith(("rpn.", "roi_heads.box_predictor.")) for k in fresh)
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[5.0, 30.0, 80.0, 90.0]]), "labels": torch.tensor([1])}]
    losses = model(torch.randn(2, 3, 96, 96), targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        det = model(torch.randn(1, 3, 96, 96))[0]
    assert len(det["boxes"]) <= 100 and (det["boxes"][:, 2:] <= 96).all()
    ssd = model_payload(classifier, DetArgs(alpha=0.25, resolution=96, num_classes=3), {}, None, {})
    with pytest.raises(UserError, match="SSD detector"):
        model.init_from_checkpoint(ssd, "ssd.pt")


@pytest.mark.slow
def test_train_eval_export(tmp_path):
    run = tmp_path / "run"
    proc = run_main("mobilenet-train", *TINY_DET, "detection.arch=faster_rcnn", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    best = run / "checkpoints" / "best.pt"
    proc = run_main("mobilenet-eval", str(best), cwd=tmp_path)
    assert proc.returncode == 0 and "Faster R-CNN" in proc.stdout
    assert json.loads((run / "checkpoints" / "eval.json").read_text())["model_args"]["arch"] == "faster_rcnn"
    proc = run_main("mobilenet-export", str(best), "--format", "onnx", "num_verify=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "after NMS" in proc.stdout and (run / "checkpoints" / "best.onnx").is_file()
