"""`mobilenet-info [key=value ...] [--json] [--grid]`: Tables 1-2 of the paper for any composed model."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError, fail

PROG = "mobilenet-info"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Table 1 (layers) and Table 2 (resources per layer type) of the MobileNet paper for the model "
                    "the config composes to, or the 4x4 alpha x resolution grid of mult-adds and params.",
        epilog="examples: mobilenet-info; mobilenet-info model.alpha=0.75 model.resolution=160; "
               "mobilenet-info model=mobilenet_v1_conv --json; mobilenet-info --grid; "
               "mobilenet-info task=detection +experiment=ssd_coco (SSD 300 against Table 13); "
               "mobilenet-info +experiment=frcnn300_coco data.num_classes=90 (Faster R-CNN 300 against Table 13)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, as for mobilenet-train (model=..., model.alpha=..., +experiment=...)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--grid", action="store_true", help="the paper's 16 alpha x resolution models instead of one")
    ns = parser.parse_args(argv)
    from ..info import describe, format_grid, format_info, grid, model_args

    try:
        detection = _detection(ns.overrides)
        if detection is not None:
            _print_detector(detection, ns.json)
            return
        args = model_args(ns.overrides)
        result = grid(args) if ns.grid else describe(args)
    except UserError as e:
        fail(PROG, e)
    if ns.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_grid(result) if ns.grid else format_info(result))


def _detection(overrides: list[str]):
    """DetArgs when the config composes to task=detection, else None."""
    from ..config import compose

    cfg = compose(overrides)
    if cfg.task != "detection":
        return None
    from ..detection.model import DetArgs

    return DetArgs.from_config(cfg)


def _print_detector(args, as_json: bool) -> None:
    from ..detection.info import describe_detector, describe_frcnn, format_detector, format_frcnn

    frcnn = args.arch == "faster_rcnn"
    info = (describe_frcnn if frcnn else describe_detector)(args)
    if as_json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        print((format_frcnn if frcnn else format_detector)(info))


if __name__ == "__main__":
    main()
