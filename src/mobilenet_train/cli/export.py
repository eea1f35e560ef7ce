"""`mobilenet-export CKPT --format onnx|executorch|tflite [--quantize int8] [key=value ...]`: ship a checkpoint
(the library side is mobilenet_train.deploy)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..deploy.export import PROG, ExportOptions, ExportResult, export_with
from ..deploy.formats import FORMATS, RUNTIMES
from ..errors import UserError, fail

log = logging.getLogger("mobilenet_train")


def parse_options(items: list[str]) -> ExportOptions:
    """key=value items -> ExportOptions; data.* keys override the checkpoint's config.data."""
    opts = ExportOptions()
    names = [f.name for f in fields(ExportOptions) if f.name != "data"]
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"'{item}' is not a key=value option (e.g. out=model.onnx)")
        try:
            value = OmegaConf.from_dotlist([f"value={text}"]).value if text != "" else None
        except OmegaConfBaseException:
            raise UserError(f"cannot parse the value of '{item}'") from None
        if key.startswith("data."):
            opts.data[key] = value
        elif key in names:
            setattr(opts, key, str(value) if key in ("out", "calibration", "eval") and value is not None else value)
        else:
            raise UserError(f"unknown option '{key}': use {', '.join(f'{k}=' for k in names)} or data.*=")
    return opts


def report(r: ExportResult) -> None:
    v = r.verification
    print(f"exported    {r.format} {r.precision} for {RUNTIMES[r.format]}, BN folded: "
          f"{r.out} ({r.size_bytes / 1e6:.2f} MB)")
    if r.calibration:
        print(f"calibrated  on {r.calibration}")
    print(f"checked     in its runtime on {r.inputs}: max relative logit error {v['max_rel_error']:.2g}, "
          f"min cosine {v['min_cosine']:.4f}, top-1 agreement {100 * v['top1_agreement']:.0f}%")
    if r.accuracy:
        a = r.accuracy
        print(f"accuracy    {a['num_images']} images of {a['eval_dir']}: PyTorch fp32 top-1 {a['pytorch_fp32_top1']:.2f}%, "
              f"exported {a['exported_top1']:.2f}% ({a['top1_change']:+.2f} points)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a mobilenet-train checkpoint to ONNX, ExecuTorch (XNNPACK) or TF-Lite, fp32 or int8, "
                    "BN folded, preprocessing in the file's metadata; the file is checked against PyTorch in its runtime.",
        epilog="options: out=PATH, calibration=DIR num_calibration=N (int8), eval=DIR (labelled ImageFolder: top-1 "
               "of PyTorch fp32 vs the export), num_verify=N, max_batch=N (ExecuTorch), data.*=VALUE (the checkpoint's "
               "data config, e.g. data.eval_preset=tf). Example: mobilenet-export checkpoints/best.pt --format onnx "
               "--quantize int8 calibration=/data/imagenet/train eval=/data/imagenet/val",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by mobilenet-train or mobilenet-import")
    parser.add_argument("options", nargs="*", metavar="key=value")
    parser.add_argument("--format", required=True, metavar="|".join(FORMATS), help="onnx, executorch or tflite")
    parser.add_argument("--quantize", default=None, metavar="int8", help="post-training static int8 quantisation")
    ns = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # ours, not the exporters' chatter
    try:
        r = export_with(ns.checkpoint, ns.format, ns.quantize, parse_options(ns.options))
    except UserError as e:
        fail(PROG, e)
    report(r)
