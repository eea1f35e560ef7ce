"""Run timm's own train.py with MobileNet v1 at any width multiplier.

timm registers MobileNet v1 only at a few widths (`mobilenetv1_100`, `mobilenetv1_125`). This wrapper
registers `mobilenetv1_<alpha x 100, 3 digits>` (e.g. `mobilenetv1_025`) as a call of timm's own builder,
`timm.models.efficientnet._gen_mobilenet_v1(variant, channel_multiplier)`, then runs train.py unchanged
as `__main__` (runpy) with the remaining arguments. Nothing of train.py is copied.

Usage:
    python scripts/timm_train_width.py --alpha 0.25 --train-py ../shared/peers/timm/train.py -- \\
        DATA --model mobilenetv1_025 ...
"""

from __future__ import annotations

import argparse
import runpy
import sys

# The base variant whose pretrained config (input size, mean/std defaults) the new width borrows;
# the bench passes every data setting explicitly, and nothing is downloaded (pretrained=False).
BASE_VARIANT = "mobilenetv1_100"


def model_name(alpha: float) -> str:
    """timm's name for MobileNet v1 at this width: mobilenetv1_100 at 1.0, mobilenetv1_025 at 0.25."""
    return f"mobilenetv1_{round(alpha * 100):03d}"


def register_width(alpha: float) -> str:
    """Register `model_name(alpha)` with timm (if timm has no such model) and return the name."""
    import timm
    from timm.models import register_model
    from timm.models.efficientnet import _gen_mobilenet_v1

    name = model_name(alpha)
    if name in timm.list_models(name):
        return name

    def build(pretrained: bool = False, **kwargs):
        return _gen_mobilenet_v1(BASE_VARIANT, channel_multiplier=alpha, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    register_model(build)
    return name


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--train-py", required=True, help="timm's train.py")
    split = argv.index("--") if "--" in argv else len(argv)
    ns = p.parse_args(argv[:split])
    register_width(ns.alpha)
    sys.argv = [ns.train_py, *argv[split + 1:]]
    runpy.run_path(ns.train_py, run_name="__main__")


if __name__ == "__main__":
    main()
