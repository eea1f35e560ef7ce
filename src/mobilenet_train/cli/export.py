"""`mobilenet-export CKPT --format onnx|executorch|tflite|safetensors [--quantize int8] [key=value ...]`: ship a
checkpoint (the library side is mobilenet_train.deploy)."""

from __future__ import annotations

import argparse
import logging

from .. import config
from ..config.help import options_help
from ..config.schema import ExportOptions, leaf_fields
from ..deploy.export import PROG, ExportResult, export_with
from ..deploy.formats import FORMATS, RUNTIMES
from ..deploy.hub import HUB_FORMAT
from ..errors import UserError, fail
from ..faults import os_fault

log = logging.getLogger("mobilenet_train")


def parse_options(items: list[str]) -> tuple[ExportOptions, list[str]]:
    """key=value items -> (the options, the data.* overrides of the checkpoint's config)."""
    opts, rest = config.parse_options(ExportOptions, items, others=True)
    bad = [i for i in rest if not i.startswith("data")]
    if bad:
        raise UserError(f"'{bad[0]}' is not an option of {PROG}: use "
                        f"{', '.join(f'{k}=' for k, _ in leaf_fields(ExportOptions))} "
                        f"or data.*= (a key of the checkpoint's data config)")
    return opts, rest


def report(r: ExportResult) -> None:
    v = r.verification
    if r.format == HUB_FORMAT:
        timm_check = (f", timm.create_model('local-dir:{r.out}') {v['timm_max_rel_error']:.2g}"
                      if v["timm_architecture"] else " (timm has no MobileNet v1 of these widths)")
        print(f"exported    {HUB_FORMAT} in timm's Hub layout ({v['timm_architecture'] or 'toolkit-only widths'}): "
              f"{r.out}/model.safetensors + config.json ({r.size_bytes / 1e6:.2f} MB)")
        print(f"checked     read back on {r.inputs}: max relative logit error, this toolkit's reader "
              f"{v['toolkit_max_rel_error']:.2g}{timm_check}")
        return
    if "detections_found" in v:  # Faster R-CNN: the whole detector, NMS inside
        print(f"exported    Faster R-CNN detector, {r.format} {r.precision} for {RUNTIMES[r.format]}: {r.out} "
              f"({r.size_bytes / 1e6:.2f} MB); outputs boxes, labels and scores after NMS (docs/deploy.md)")
        print(f"checked     in its runtime on {r.inputs}: max score error {v['max_abs_score_error']:.2g}, "
              f"{100 * v['detections_found']:.0f}% of PyTorch's detections found again (same label, IoU >= 0.9)")
        return
    if "max_abs_box_error" in v:  # a detector: boxes and scores out, NMS as post-processing
        print(f"exported    SSD detector, {r.format} {r.precision} for {RUNTIMES[r.format]}: {r.out} "
              f"({r.size_bytes / 1e6:.2f} MB); outputs boxes and scores, NMS is post-processing (docs/deploy.md)")
        print(f"checked     in its runtime on {r.inputs}: max box error {v['max_abs_box_error']:.2g} px, max score "
              f"error {v['max_abs_score_error']:.2g}, top-10 detections agree on {100 * v['top10_labels_agree']:.0f}% "
              f"of the images" + (f"; {100 * v['confident_detections_found']:.0f}% of PyTorch's detections "
                                  f"scored >= 0.5 found again" if "confident_detections_found" in v else ""))
        if r.calibration:
            print(f"calibrated  on {r.calibration}")
        return
    print(f"exported    {r.format} {r.precision} for {RUNTIMES[r.format]}, BN folded: "
          f"{r.out} ({r.size_bytes / 1e6:.2f} MB)")
    if r.calibration:
        print(f"calibrated  on {r.calibration}")
    against = " against the fake-quantized QAT model" if v.get("reference") == "fake-quantized" else ""
    print(f"checked     in its runtime{against} on {r.inputs}: max relative logit error {v['max_rel_error']:.2g}, "
          f"min cosine {v['min_cosine']:.4f}, top-1 agreement {100 * v['top1_agreement']:.0f}%")
    if r.accuracy:
        a = r.accuracy
        print(f"accuracy    {a['num_images']} images of {a['eval_dir']}: "
              f"PyTorch {'fake-quantized' if against else 'fp32'} top-1 {a['pytorch_fp32_top1']:.2f}%, "
              f"exported {a['exported_top1']:.2f}% ({a['top1_change']:+.2f} points)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a mobilenet-train checkpoint to ONNX, ExecuTorch (XNNPACK) or TF-Lite, fp32 or int8, "
                    "BN folded, preprocessing in the file's metadata; "
                    "the file is checked against PyTorch in its runtime. --format safetensors: the float weights in "
                    "timm's Hugging Face Hub layout, checked by loading them back in timm.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: mobilenet-export checkpoints/best.pt --format onnx --quantize int8 "
               "calibration=/data/imagenet/train eval=/data/imagenet/val\ndata.*=VALUE: the checkpoint's data config "
               "(e.g. data.eval_preset=tf), as for mobilenet-eval; and\n" + options_help(PROG),
    )
    parser.add_argument("checkpoint", help="a checkpoint written by mobilenet-train or mobilenet-import")
    parser.add_argument("options", nargs="*", metavar="key=value")
    parser.add_argument("--format", required=True, metavar="|".join([*FORMATS, HUB_FORMAT]),
                        help="onnx, executorch or tflite; safetensors: a folder in timm's Hub layout "
                             "(model.safetensors + config.json)")
    parser.add_argument("--quantize", default=None, metavar="int8", help="post-training static int8 quantisation")
    ns = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # ours, not the exporters' chatter
    try:
        opts, data_items = parse_options(ns.options)
        r = export_with(ns.checkpoint, ns.format, ns.quantize, opts, data_items)
    except UserError as e:
        fail(PROG, e)
    except OSError as e:  # one the write sites did not translate (a directory made)
        fail(PROG, os_fault(e))
    report(r)
