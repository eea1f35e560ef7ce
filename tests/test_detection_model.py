"""The SSD detector on MobileNet v1: Table 13's counts, the feature maps, starting from a classifier,
the heads, and the outputs the export holds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mobilenet_train.checkpoint import model_payload
from mobilenet_train.detection.info import describe_detector, format_detector
from mobilenet_train.detection.model import DetArgs, DetectorOutputs, SSDMobileNetV1
from mobilenet_train.errors import UserError
from mobilenet_train.model import MobileNetV1, ModelArgs


def test_table13_counts_measured_from_the_built_module():
    info = describe_detector(DetArgs(alpha=1.0, resolution=300, num_classes=90))
    assert info["params_weights"] == 6_791_360
    assert info["mult_adds"] == 1_237_129_408
    # TF's ssd_mobilenet_v1 has 1917 anchors: 19x19x3 (reduce_boxes_in_lowest_layer) + (100+25+9+4+1)x6.
    assert info["anchors"] == 1917
    assert sum(p["mult_adds"] for p in info["parts"].values()) == info["mult_adds"]
    verdicts = {e["quantity"]: e["agreement"] for e in info["paper"]}
    assert verdicts == {"params": "rounds", "mult_adds": "rounds"}  # 6.79M -> 6.8M; 1.237B -> 1.2B
    text = format_detector(info)
    assert "Table 13 SSD 300 MobileNet: 1.2B mult-adds; measured 1.237B" in text
    other = describe_detector(DetArgs(alpha=0.25, resolution=128, num_classes=10))
    assert other["paper"] == [] and "data.num_classes=90 compares" in format_detector(other)


@pytest.mark.parametrize("alpha", [0.25, 0.5])
def test_six_feature_maps_from_block_11_and_13_down_to_1x1(alpha):
    model = SSDMobileNetV1(DetArgs(alpha=alpha, resolution=300, num_classes=3)).eval()
    with torch.no_grad():
        maps = list(model.backbone(torch.zeros(1, 3, 300, 300)).values())
    assert [m.shape[-1] for m in maps] == [19, 10, 5, 3, 2, 1]
    assert [m.shape[1] for m in maps] == [int(alpha * c) for c in (512, 1024, 512, 256, 256, 128)]
    assert (model.backbone.tap16, model.backbone.tap32) == (10, 12)  # blocks 11 and 13 of Table 1


def test_backbone_starts_from_a_classification_checkpoint():
    classifier = MobileNetV1(ModelArgs(alpha=0.25, resolution=128, num_classes=7))
    for p in classifier.parameters():
        nn.init.normal_(p)
    init = model_payload(classifier, classifier.args, {}, None, {})
    detector = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=128, num_classes=3))
    fresh = detector.init_from_checkpoint(init, "cls.pt")
    assert torch.equal(detector.backbone.blocks[12].pw.conv.weight, classifier.blocks[12].pw.conv.weight)
    assert torch.equal(detector.backbone.stem.bn.running_var, classifier.stem.bn.running_var)
    assert fresh and all(k.startswith(("backbone.extras.", "head.")) for k in fresh)
    # A detector checkpoint with another category count: all but the class predictors.
    other = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=128, num_classes=5))
    fresh = other.init_from_checkpoint(model_payload(detector, detector.args, {}, None, {}), "det.pt")
    assert fresh and all(k.startswith("head.classification_head") for k in fresh)
    wide = SSDMobileNetV1(DetArgs(alpha=0.5, resolution=128, num_classes=3))
    with pytest.raises(UserError, match="does not fit the detector's backbone"):
        wide.init_from_checkpoint(init, "cls.pt")


@pytest.mark.parametrize("head", ["ssd", "ssd3x3", "ssdlite"])
def test_heads(head):
    model = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=4, head=head))
    convs = [m for m in model.head.modules() if isinstance(m, nn.Conv2d)]
    kernels = {m.kernel_size[0] for m in convs}
    depthwise = any(m.groups > 1 for m in convs)
    assert (kernels, depthwise) == {"ssd": ({1}, False), "ssd3x3": ({3}, False), "ssdlite": ({1, 3}, True)}[head]
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(torch.randn(2, 3, 96, 96), targets)
    assert set(losses) == {"bbox_regression", "classification"} and all(v.isfinite() for v in losses.values())


def test_outputs_and_postprocess_give_the_detectors_detections():
    torch.manual_seed(0)
    model = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=4)).eval()
    outputs = DetectorOutputs(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
        boxes, scores = outputs(x)
    assert boxes.shape == (2, outputs.anchors.shape[0], 4) and scores.shape == (2, outputs.anchors.shape[0], 5)
    assert torch.allclose(scores.sum(-1), torch.ones(2, outputs.anchors.shape[0]))
    for ours, ref in zip(outputs.postprocess(boxes, scores), expected):
        assert torch.equal(ours["labels"], ref["labels"])
        assert torch.allclose(ours["boxes"], ref["boxes"], atol=1e-3)
        assert torch.allclose(ours["scores"], ref["scores"], atol=1e-6)


def test_bad_detection_settings_are_one_line_errors():
    with pytest.raises(UserError, match="detection.min_ratio=0.9 must be below"):
        DetArgs(resolution=300, num_classes=3, min_ratio=0.9, max_ratio=0.5).validate()
    with pytest.raises(UserError, match="too small"):
        DetArgs(resolution=48, num_classes=3).validate()


def test_class_rows_kept_by_category_name():
    """A detector init with other categories: background and same-name rows kept per anchor, the rest new;
    the box regressors and everything else kept."""
    init_model = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=3))
    for p in init_model.parameters():
        nn.init.normal_(p)
    init = model_payload(init_model, init_model.args, {}, ["person", "dog", "cat"], {})
    model = SSDMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.init_from_checkpoint(init, "det.pt", ["Dog", "widget"])
    assert model.kept_categories == {"Dog": 1, "widget": None}
    for m, conv in enumerate(model.head.classification_head.module_list):
        old = init_model.head.classification_head.module_list[m]
        name = f"head.classification_head.module_list.{m}.weight"
        for a in range(conv.out_channels // 3):
            assert torch.equal(conv.weight[3 * a], old.weight[4 * a])          # background
            assert torch.equal(conv.weight[3 * a + 1], old.weight[4 * a + 2])  # dog
            assert torch.equal(conv.bias[3 * a + 1], old.bias[4 * a + 2])
            assert torch.equal(conv.weight[3 * a + 2], before[name][3 * a + 2])  # widget: as initialised
    assert torch.equal(model.head.regression_head.module_list[2].weight,
                       init_model.head.regression_head.module_list[2].weight)
    assert torch.equal(model.backbone.extras[1][1].conv.weight, init_model.backbone.extras[1][1].conv.weight)


def test_tf_variants_sigmoid_best_class_and_box_scales():
    """TF's SSD: sigmoid scores and loss, one NMS over each anchor's best class, its box-coder scales."""
    args = DetArgs(alpha=0.25, resolution=96, num_classes=4, score_fn="sigmoid", nms_mode="best_class",
                   box_scales=(10.0, 10.0, 5.0, 5.0), clip_anchors=False, score_thresh=0.0, detections_per_img=7)
    model = SSDMobileNetV1(args)
    assert model.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert SSDMobileNetV1(DetArgs(alpha=0.25, resolution=96, num_classes=4, box_scales=[8, 9, 3, 4])
                          ).box_coder.weights == (9.0, 8.0, 4.0, 3.0)  # TF's y, x, h, w -> torchvision's x, y, w, h
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[5.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([4])}]
    losses = model(torch.randn(2, 3, 96, 96), targets)
    assert torch.isfinite(losses["classification"]) and losses["classification"] > 0
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        det = model(torch.randn(2, 3, 96, 96))[0]
    assert len(det["boxes"]) == 7 and det["labels"].min() >= 1 and det["labels"].max() <= 4
    assert float(det["scores"].max()) < 1 and bool((det["scores"][:-1] >= det["scores"][1:]).all())
    from torchvision.ops import box_iou
    iou = box_iou(det["boxes"], det["boxes"]).fill_diagonal_(0)
    assert float(iou.max()) <= args.nms_thresh + 1e-6  # one NMS across classes
    outputs = DetectorOutputs(model)
    boxes, scores = outputs(torch.randn(1, 3, 96, 96))
    assert float(scores.max()) <= 1 and not torch.allclose(scores.sum(-1), torch.ones(1))  # sigmoid, not softmax
    again = outputs.postprocess(boxes, scores)[0]
    assert len(again["boxes"]) == 7
