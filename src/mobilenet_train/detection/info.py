"""`mobilenet-info task=detection`: the detector's mult-adds and parameters, measured from the built
module, per part (backbone, extra layers, head) and against the paper's Table 13.

Counted as for Table 1 (info.py): mult-adds are the multiply-accumulates of the conv layers of one
forward pass of one image (torch.utils.flop_counter's FLOPs / 2), up to the box decoding; anchor
decoding, the score threshold and NMS are not counted (no multiply-accumulates of a layer).
Parameters: every parameter (weights, BN, biases) and, as the paper counts, conv weights only.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import published
from ..complexity import count_params, counted_forward
from .model import DetArgs, DetectorOutputs, SSDMobileNetV1

PARTS = {"backbone": ("detector.backbone.stem", "detector.backbone.blocks"),
         "extras": ("detector.backbone.extras",), "head": ("detector.head",)}


@torch.no_grad()
def describe_detector(args: DetArgs) -> dict:
    model = DetectorOutputs(SSDMobileNetV1(args))
    _, counter = counted_forward(model, args.resolution)
    flops = counter.get_flop_counts()  # per module path, children included in parents
    root = type(model).__name__
    parts = {}
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for part, prefixes in PARTS.items():
        mine = [(name, m) for name, m in convs if name.startswith(prefixes)]
        mult_adds = sum(sum(flops.get(f"{root}.{name}", {}).values()) for name, _ in mine) // 2
        parts[part] = {"mult_adds": mult_adds, "params_weights": sum(m.weight.numel() for _, m in mine)}
    info = {"model": args.to_dict(), "params": count_params(model),
            "params_weights": sum(p["params_weights"] for p in parts.values()),
            "mult_adds": counter.get_total_flops() // 2, "anchors": int(model.anchors.shape[0]), "parts": parts}
    info["paper"] = compare_table13(info)
    return info


def compare_table13(info: dict) -> list[dict]:
    """Our counts against Table 13's MobileNet SSD 300 row, at its printed precision (when the model is the
    paper's: alpha 1.0 at 300 px, 90 COCO categories)."""
    ref = published.table13()
    m, args = ref["model"], info["model"]
    if (args["variant"], args["alpha"], args["resolution"], args["num_classes"]) != (
            m["variant"], m["alpha"], m["resolution"], m["num_classes"]):
        return []
    row = next(r for r in ref["rows"] if r["model"] == "MobileNet" and r["framework"] == "SSD 300")
    out = []
    for quantity, ours, printed, unit in (("mult_adds", info["mult_adds"] / 1e9, row["mult_adds_b"], "B"),
                                          ("params", info["params_weights"] / 1e6, row["params_m"], "M")):
        out.append({"table": "13", "model": f"{row['framework']} {row['model']}", "quantity": quantity,
                    "printed": printed, "measured": ours, "unit": unit,
                    "agreement": published.agreement(ours, printed)})
    return out


def format_detector(info: dict) -> str:
    a = info["model"]
    out = [f"SSD {a['resolution']} on MobileNet v1 ({a['variant']}) alpha={a['alpha']}, head={a['head']}, "
           f"{a['num_classes']} categories + background, {info['anchors']} anchors", ""]
    header = f"{'part':<10} {'mult-adds':>16} {'conv weights':>14}"
    out += [header, "-" * len(header)]
    for name, p in info["parts"].items():
        out.append(f"{name:<10} {p['mult_adds']:>16,} {p['params_weights']:>14,}")
    out += ["-" * len(header),
            f"Total: {info['mult_adds'] / 1e9:.3f}B mult-adds; {info['params'] / 1e6:.2f}M params ({info['params']:,} "
            f"with BN and biases; {info['params_weights']:,} conv weights, the paper's count)",
            "Counted: conv multiply-accumulates of one image up to the box decoding (no NMS), as Table 1."]
    if not info["paper"]:
        m = published.table13()["model"]
        out += ["", f"Table 13's SSD 300 is alpha {m['alpha']} at {m['resolution']} px with {m['num_classes']} "
                    f"categories (TF's COCO label map): model.alpha={m['alpha']} model.resolution={m['resolution']} "
                    f"data.num_classes={m['num_classes']} compares with it."]
    if info["paper"]:
        out += ["", "Against the paper, at its printed precision:"]
        for e in info["paper"]:
            verdict = {"rounds": "matches", "truncates": "matches (the paper truncates)", None: "DIFFERS"}[
                e["agreement"]]
            what = "mult-adds" if e["quantity"] == "mult_adds" else "params (conv weights)"
            out.append(f"  Table 13 {e['model']}: {e['printed']}{e['unit']} {what}; measured "
                       f"{e['measured']:.3f}{e['unit']}: {verdict}")
    return "\n".join(out)


@torch.no_grad()
def frcnn_counts(model, resolution: int) -> dict:
    """Faster R-CNN's mult-adds of one resolution x resolution image, counted in three parts: the trunk (once),
    the RPN head (once, on the trunk's map), and the RoI head (blocks 12-13 on one 14x14 crop, the pool and
    the predictor) times `detection.proposals`, as Table 13 counts 300 proposals. The anchor decoding, NMS
    and RoIAlign are not counted (no multiply-accumulates of a layer)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .frcnn import ROI_SIZE

    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, resolution, resolution)
        with FlopCounterMode(display=False) as trunk:
            features = model.backbone(x)
        with FlopCounterMode(display=False) as rpn:
            model.rpn.head([features])
        crop = torch.zeros(1, features.shape[1], ROI_SIZE, ROI_SIZE)
        with FlopCounterMode(display=False) as roi:
            model.roi_heads.box_predictor(model.roi_heads.box_head(crop))
    finally:
        model.train(was_training)
    parts = {"trunk": trunk.get_total_flops() // 2, "rpn": rpn.get_total_flops() // 2,
             "per_roi": roi.get_total_flops() // 2}
    proposals = int(model.args.proposals)
    return {**parts, "proposals": proposals, "roi_heads": proposals * parts["per_roi"],
            "mult_adds": parts["trunk"] + parts["rpn"] + proposals * parts["per_roi"]}


def describe_frcnn(args: DetArgs) -> dict:
    """`mobilenet-info task=detection detection.arch=faster_rcnn`: mult-adds and parameters (all, and conv and
    fully connected weights, the paper's count) against Table 13's Faster-RCNN row of the same input size."""
    from .frcnn import FasterRCNNMobileNetV1

    model = FasterRCNNMobileNetV1(args)
    counts = frcnn_counts(model, args.resolution)
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    info = {"model": args.to_dict(), "params": count_params(model), "params_weights": weights, **counts,
            "anchors_per_location": len(model.rpn.anchor_generator.sizes[0]) *
            len(model.rpn.anchor_generator.aspect_ratios[0])}
    info["paper"] = compare_frcnn(info)
    return info


def compare_frcnn(info: dict) -> list[dict]:
    """Against Table 13's Faster-RCNN MobileNet row at this input size (300 or 600), alpha 1.0, 90 categories."""
    args = info["model"]
    ref = published.table13()
    m = ref["model"]
    row = next((r for r in ref["rows"] if r["framework"] == f"Faster-RCNN {args['resolution']}"
                and r["model"] == "MobileNet"), None)
    if row is None or (args["variant"], args["alpha"], args["num_classes"]) != (m["variant"], m["alpha"],
                                                                                 m["num_classes"]):
        return []
    # Parameters both ways: the SSD row matches conv weights only; this row matches all parameters.
    return [{"table": "13", "model": f"{row['framework']} {row['model']}", "quantity": quantity, "printed": printed,
             "measured": ours, "unit": unit, "agreement": published.agreement(ours, printed)}
            for quantity, ours, printed, unit in (
                ("mult_adds", info["mult_adds"] / 1e9, row["mult_adds_b"], "B"),
                ("params (all)", info["params"] / 1e6, row["params_m"], "M"),
                ("params (conv and fc weights)", info["params_weights"] / 1e6, row["params_m"], "M"))]


def format_frcnn(info: dict) -> str:
    a = info["model"]
    out = [f"Faster R-CNN {a['resolution']} on MobileNet v1 ({a['variant']}) alpha={a['alpha']}, "
           f"{a['num_classes']} categories + background, {info['anchors_per_location']} anchors per location, "
           f"{info['proposals']} proposals", ""]
    out += [f"trunk (stem, blocks 1-11, once)       {info['trunk']:>16,}",
            f"RPN head (once)                       {info['rpn']:>16,}",
            f"RoI head (blocks 12-13 + predictor)   {info['per_roi']:>16,} per RoI x {info['proposals']} = "
            f"{info['roi_heads']:,}",
            f"Total: {info['mult_adds'] / 1e9:.3f}B mult-adds; {info['params'] / 1e6:.2f}M params "
            f"({info['params_weights']:,} conv and fully connected weights, the paper's count)",
            "Counted: conv and fully connected multiply-accumulates of one image; every proposal runs blocks 12-13 "
            "on its 14x14 crop; anchors, NMS and RoIAlign not counted."]
    if info["paper"]:
        out += ["", "Against the paper, at its printed precision:"]
        for e in info["paper"]:
            verdict = {"rounds": "matches", "truncates": "matches (the paper truncates)", None: "DIFFERS"}[
                e["agreement"]]
            out.append(f"  Table 13 {e['model']}: {e['printed']}{e['unit']} {e['quantity'].replace('_', '-')}; "
                       f"measured {e['measured']:.3f}{e['unit']}: {verdict}")
    return "\n".join(out)
