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
    row = next(r for r in ref["rows"] if r["model"] == "MobileNet")
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
