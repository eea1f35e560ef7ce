"""`mobilenet-eval CKPT|FILE.onnx|FILE.pte|FILE.tflite [key=value ...]`: score a checkpoint or an exported
file (in its own runtime), print and write eval.json."""

from __future__ import annotations

import argparse
import logging

from ..config.help import options_help
from ..errors import UserError, fail
from ..faults import os_fault

PROG = "mobilenet-eval"


def _print_detection(r: dict) -> None:
    if "file" in r:
        print(f"file        {r['file']}: {r['format']} {r['quantization']}, run by {r['runtime']}")
    else:
        print(f"checkpoint  {r['checkpoint']}{' (EMA weights)' if r['use_ema'] else ''}")
    arch = ("Faster R-CNN" if r["model_args"].get("arch") == "faster_rcnn" else f"SSD {r['resolution']} "
            f"({r['head']} head)")
    print(f"model       {arch} on MobileNet v1 {r['variant']} alpha={r['alpha']} at {r['resolution']} px: "
          f"{r['params'] / 1e6:.2f}M params, {r['mult_adds'] / 1e9:.3f}B mult-adds")
    print(f"data        {r['dataset']} {r['split']} ({r['num_images']} images, {r['num_detections']} detections: "
          f"{r['detections_per_image']:.1f} kept per image)")
    print(f"mAP         {r['map']:.2f}% (IoU .50:.95)   mAP@.5 {r['map_50']:.2f}%   mAP@.75 {r['map_75']:.2f}%")
    print(f"AP by size  small {r['map_small']:.2f}%   medium {r['map_medium']:.2f}%   large {r['map_large']:.2f}% "
          f"(-1: no objects of that size)")
    print(f"speed       {r['images_per_sec']:.1f} images/s on {r['device']}")
    print(f"written     {r['out']}")


def _print_task(r: dict) -> None:
    """The score lines of a multilabel or embedding evaluation."""
    if r["task"] == "multilabel":
        print(f"mean AP     {r['map']:.2f}% over {r['num_attributes']} attributes (label accuracy "
              f"{r['label_accuracy']:.2f}%)")
        aps = [(name, ap) for name, ap in r["ap_per_attribute"].items() if ap is not None]
        print("AP          " + ", ".join(f"{name} {ap:.1f}" for name, ap in aps[:8])
              + (f", ... ({len(aps)} in {r['out']})" if len(aps) > 8 else ""))
        print(f"loss        {r['loss']:.4f}")
        return
    print(f"retrieval   recall@1 {r['recall_at_1']:.2f}%   recall@5 {r['recall_at_5']:.2f}%   "
          f"({r['embedding_dim']}-d, cosine)")
    print(f"pairs       ROC-AUC {r['roc_auc']:.4f}   TAR@FAR=1e-3 {r['tar_at_far_1e-3']:.2f}%   TAR@FAR=1e-4 "
          f"{r['tar_at_far_1e-4']:.2f}%   accuracy {r['verification_accuracy']:.2f}% "
          f"({r['num_pairs_positive']} same / {r['num_pairs_negative']} different)")


def _print(r: dict) -> None:
    if r.get("task") == "detection":
        _print_detection(r)
        return
    if "file" in r:
        print(f"file        {r['file']}: {r['format']} {r['quantization']}, run by {r['runtime']}")
    else:
        print(f"checkpoint  {r['checkpoint']}{' (EMA weights)' if r['use_ema'] else ''}")
    print(f"model       MobileNet v1 {r['variant']} alpha={r['alpha']} resolution={r['resolution']}: "
          f"{r['params'] / 1e6:.2f}M params, {r['mult_adds'] / 1e6:.1f}M mult-adds")
    print(f"data        {r['dataset']} {r['split']} ({r['num_images']} images, eval preset {r['eval_preset']})")
    if r.get("task") in ("multilabel", "embedding"):
        _print_task(r)
    else:
        print(f"top-1       {r['top1']:.2f}%")
        print(f"top-5       {r['top5']:.2f}%")
        print(f"loss        {r['loss']:.4f}")
    print(f"speed       {r['images_per_sec']:.0f} images/s on {r['device']}")
    print(f"written     {r['out']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Evaluate a mobilenet-train checkpoint on its validation data (rebuilt from the checkpoint), "
                    "or an exported .onnx, .pte or .tflite file in its own runtime (preprocessing from the file; "
                    "Google's .tflite files too).",
        epilog="overrides: any key of the checkpoint's config, as for mobilenet-train (data.root=..., "
               "data=imagenet_shards, data.batch_size=..., data.eval_preset=tf, model.resolution=...), and\n"
               + options_help(PROG),
    )
    parser.add_argument("checkpoint", help="a checkpoint written by mobilenet-train or mobilenet-import, or an "
                                           "exported .onnx, .pte or .tflite file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        from ..deploy.score import is_exported
        from ..evaluation import evaluate_checkpoint, evaluate_file

        score = evaluate_file if is_exported(ns.checkpoint) else evaluate_checkpoint
        result = score(ns.checkpoint, ns.overrides)
    except UserError as e:
        fail(PROG, e)
    except OSError as e:  # one the write sites did not translate (a directory made)
        fail(PROG, os_fault(e))
    _print(result)


if __name__ == "__main__":
    main()
