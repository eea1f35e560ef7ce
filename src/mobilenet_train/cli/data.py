"""`mobilenet-data`: prepare ImageNet from the official archives, and pack it into shards.

    mobilenet-data prepare SRC DEST    ILSVRC2012 tars in SRC -> DEST/train/<wnid>/, DEST/val/<wnid>/
    mobilenet-data pack DEST SHARDS    DEST -> WebDataset shards (see data/shards.py)

The work is done by mobilenet_train.data.prepare and mobilenet_train.data.pack.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..data.pack import pack
from ..data.prepare import DEVKIT, OFFICIAL, TRAIN_TAR, VAL_TAR, prepare
from ..errors import UserError, fail


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mobilenet-data", description="Prepare ImageNet and pack it into shards.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="ILSVRC2012 tars -> DEST/train/<wnid>/, DEST/val/<wnid>/ (resumable)")
    p.add_argument("src", type=Path, help=f"directory holding {TRAIN_TAR}, {VAL_TAR} and the val labels")
    p.add_argument("dest", type=Path)
    p.add_argument("--train-tar", type=Path)
    p.add_argument("--val-tar", type=Path)
    p.add_argument("--val-labels", type=Path,
                   help="'ILSVRC2012_val_%%08d.JPEG <index>' lines (index in sorted-wnid order)")
    p.add_argument("--devkit", type=Path, help=f"{DEVKIT} (its meta.mat is read with scipy, or give --id-wnids)")
    p.add_argument("--id-wnids", type=Path, help="the wnids in ILSVRC2012_ID order, one a line (devkit without scipy)")
    p.add_argument("--wnids", type=Path, help="the wnids in sorted order, one a line (val only, without the train tar)")
    p.add_argument("--expect-train", type=int, default=OFFICIAL["train"], help="0: do not check (default: %(default)s)")
    p.add_argument("--expect-val", type=int, default=OFFICIAL["val"], help="0: do not check (default: %(default)s)")
    p.add_argument("--expect-classes", type=int, default=OFFICIAL["classes"],
                   help="0: do not check (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    k = sub.add_parser("pack", help="DEST (train/, val/) -> WebDataset tar shards + index.json (resumable)")
    k.add_argument("dest", type=Path, help="an ImageFolder tree with train/ and/or val/ (the DEST of prepare)")
    k.add_argument("shards", type=Path, help="output directory")
    k.add_argument("--max-side", type=int, default=320, help="cap on the shorter side, pixels (default: %(default)s)")
    k.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images (default: %(default)s)")
    k.add_argument("--shard-size", type=int, default=2000, help="images per shard (default: %(default)s, ~50 MB)")
    k.add_argument("--splits", nargs="+", default=None, help="default: train and val, those present")
    k.add_argument("--seed", type=int, default=0, help="seed of the shuffle across shards")
    k.add_argument("--workers", type=int, default=0, help="encoding processes (default: all cores)")
    k.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> None:
    ns = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if ns.command == "prepare":
            _run_prepare(ns)
        else:
            _run_pack(ns)
    except UserError as e:
        fail("mobilenet-data", e)


def _run_prepare(ns: argparse.Namespace) -> None:
    expect = {"train": ns.expect_train, "val": ns.expect_val, "classes": ns.expect_classes}
    r = prepare(ns.src, ns.dest, ns.train_tar, ns.val_tar, ns.val_labels, ns.devkit, ns.id_wnids, ns.wnids,
                expect, progress=not ns.no_progress)
    print(f"{r['dest']}: {r['train']:,} train and {r['val']:,} val images, {r['classes']} classes")
    if r["problems"]:
        for problem in r["problems"]:
            print(f"missing: {problem}")
        print(f"mobilenet-data: prepare: {r['dest']} is incomplete ({len(r['problems'])} problems above); "
              f"run prepare again to resume, or check the archives", file=sys.stderr)
        sys.exit(1)
    print("complete: all expected images are in place")


def _run_pack(ns: argparse.Namespace) -> None:
    index = pack(ns.dest, ns.shards, ns.max_side, ns.quality, ns.splits, ns.shard_size, ns.seed,
                 ns.workers or None, progress=not ns.no_progress)
    for split, info in index["splits"].items():
        size = sum(s["bytes"] for s in info["shards"])
        print(f"{split}: {info['count']:,} images in {len(info['shards'])} shards, {size / 1e6:.1f} MB")
    if index["skipped"]:
        print(f"skipped {len(index['skipped'])} unreadable images (listed in {ns.shards / 'index.json'}), "
              f"e.g. {index['skipped'][0]['path']}: {index['skipped'][0]['reason']}")
    print(f"written {ns.shards / 'index.json'}; train with data=imagenet_shards data.root={ns.shards}")
