"""`mobilenet-import SRC [SRC ...] OUT.pt [key=value ...]`: Google's weights as a checkpoint."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config.help import options_help
from ..errors import UserError, fail

PROG = "mobilenet-import"
NORMALIZATION_NOTES = {"inception": "x/127.5 - 1", "imagenet": "ImageNet mean/std"}


def _print_detector(r: dict) -> None:
    a, p, anchors = r["args"], r["postprocess"], r["anchors"]
    print(f"imported    TF-Lite SSD ({r['weight_dtype']} weights, dequantized): {', '.join(r['sources'])}")
    print(f"model       SSD {a.resolution} on MobileNet v1 alpha={a.alpha}, {a.padding} padding, {a.activation}, BN "
          f"folded: {r['complexity']['params'] / 1e6:.2f}M params, {r['complexity']['mult_adds'] / 1e9:.3f}B "
          f"mult-adds")
    names = "label k = COCO category id k" if r["category_ids"] else "no category names"
    print(f"classes     {a.num_classes} + background ({names})")
    print(f"anchors     {anchors['anchors']} equal TFAnchors (clip_anchors=false) within the file's "
          f"{anchors['stored_as']} (max difference {anchors['max_abs_difference']:.2g}); TF's slot order "
          f"{anchors['slot_order']} permuted")
    print(f"postprocess {p['op']}: detection.score_fn={a.score_fn} nms_mode={a.nms_mode} "
          f"score_thresh={a.score_thresh:g} nms_thresh={a.nms_thresh:g} detections_per_img={a.detections_per_img} "
          f"box_scales={list(a.box_scales)}")
    print("input       whole image to 300x300 (no aspect kept), data.normalization=uint8_128 ((x - 128)/128)")
    print(f"written     {r['out']}")


def _print(r: dict) -> None:
    if r.get("task") == "detection":
        _print_detector(r)
        return
    a = r["args"]
    bn = "BN folded into conv biases" if a.norm == "none" else f"BN (eps {a.bn_eps:g})"
    print(f"imported    {r['format']}: {', '.join(r['sources'])}")
    print(f"model       MobileNet v1 alpha={a.alpha} resolution={a.resolution} ({r['resolution_from']}), "
          f"{a.padding} padding, {a.activation}, {bn}: {r['complexity']['params'] / 1e6:.2f}M params, "
          f"{r['complexity']['mult_adds'] / 1e6:.1f}M mult-adds")
    dropped = ", background logit dropped" if r["dropped_background"] else ""
    names = "ImageNet wnids" if r["classes"] else "no class names"
    print(f"classes     {a.num_classes} ({names}{dropped})")
    crop = f" data.eval_crop_fraction={r['eval_crop_fraction']:g}" if r["eval_preset"] != "keras" else ""
    filter_ = f" data.interpolation={r['interpolation']}" if r["eval_preset"] == "default" else ""
    print(f"eval        data.eval_preset={r['eval_preset']}{crop}{filter_} at {a.resolution} px, "
          f"data.normalization={r['normalization']} ({NORMALIZATION_NOTES[r['normalization']]})")
    print(f"written     {r['out']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, usage=f"{PROG} SRC [SRC ...] OUT.pt [key=value ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Import Google's MobileNet v1 weights (Keras HDF5, TF.js layers model, TF-Lite float or 8-bit) "
                    "or timm's (mobilenetv1_100, mobilenetv1_125) as a mobilenet-train checkpoint.",
        epilog="SRC: a Keras .h5 weights file, a TF.js model.json (or its directory), a .tflite file, or a timm "
               "model.safetensors / pytorch_model.bin (or its Hub folder with config.json); a TF-Lite "
               "model split into pieces takes each piece in order.\nOverrides: model.resolution=N, "
               "model.padding=symmetric, model.dropout=P, model.bn_momentum=M, any config key to store "
               "(data.root=..., data.eval_preset=tf|keras|default), and\n" + options_help(PROG),
    )
    parser.add_argument("paths", nargs="+", metavar="SRC|OUT.pt|key=value",
                        help="the source file(s), then the output checkpoint; overrides anywhere")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # key=value items may come anywhere; everything else is a path, the last one the output.
    overrides = [a for a in ns.paths if "=" in a and not Path(a).exists()]
    paths = [a for a in ns.paths if a not in overrides]
    try:
        from ..importer import import_weights

        if len(paths) < 2:
            raise UserError("give at least one source and the output file: mobilenet-import SRC [SRC ...] OUT.pt")
        result = import_weights(paths[:-1], paths[-1], overrides)
    except UserError as e:
        fail(PROG, e)
    _print(result)


if __name__ == "__main__":
    main()
