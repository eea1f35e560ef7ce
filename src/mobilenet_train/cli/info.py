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
               "mobilenet-info model=mobilenet_v1_conv --json; mobilenet-info --grid",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, as for mobilenet-train (model=..., model.alpha=..., +experiment=...)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--grid", action="store_true", help="the paper's 16 alpha x resolution models instead of one")
    ns = parser.parse_args(argv)
    from ..info import describe, format_grid, format_info, grid, model_args

    try:
        args = model_args(ns.overrides)
        result = grid(args) if ns.grid else describe(args)
    except UserError as e:
        fail(PROG, e)
    if ns.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_grid(result) if ns.grid else format_info(result))


if __name__ == "__main__":
    main()
