#!/usr/bin/env python
"""Input-pipeline benchmark: images/s per worker (one core) of the toolkit's train and eval
pipelines against the plain torchvision baseline, measured interleaved in the same run.

    python scripts/bench_data.py ../shared/data/imagenet-samples [--shards SHARDS | --pack]

DIR is an ImageFolder root (DIR/<split>/<class>/<image>, the split picked by --split, or
DIR/<class>/<image>). Each pipeline is a DataLoader with num_workers=0 (decode, augment and
collate on this process's one core: what one loader worker does), batch --batch, over the
first --images images. Baseline: ImageFolder + PIL (full decode, convert RGB) + transforms.v2
RandomResizedCrop / RandomHorizontalFlip (eval: Resize / CenterCrop) + ToImage / ToDtype(float)
/ Normalize, default collate. Toolkit: mobilenet_train.data's transforms and collate (draft
decode, crop before resize, uint8 NHWC). With --auto-augment STR both train pipelines add that
augmentation, and the baseline is timm's own `create_transform(..., auto_augment=STR)`.
Shards (with --shards or --pack): the same toolkit transforms reading `mobilenet-data pack`
shards. Runs go B T [S] [S] T B ...; the printed ratio is the median of the per-chunk ratios
(--chunk images per timed run, the order reversed every other chunk), so a changing machine
load hits both sides alike. Set OMP_NUM_THREADS=1 and check the load first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Subset
from torchvision import datasets
from torchvision.transforms import v2

from mobilenet_train.config.schema import DataConfig
from mobilenet_train.data import NORMALIZATION, collate, eval_resize_size, eval_transform, image_folder, train_transform


def data_cfg(min_crop_area: float, auto_augment: str | None = None):
    # the schema's defaults otherwise
    return OmegaConf.structured(DataConfig(min_crop_area=min_crop_area, auto_augment=auto_augment))


def baseline_transform(train: bool, resolution: int, min_crop_area: float, auto_augment: str | None = None):
    mean, std = NORMALIZATION["inception"]
    if train and auto_augment:
        # timm's own training pipeline: PIL decode, RandomResizedCrop, flip, the augmentation, float + normalise.
        from timm.data import create_transform

        return create_transform(resolution, is_training=True, scale=(min_crop_area, 1.0), hflip=0.5,
                                auto_augment=auto_augment, interpolation="bilinear", mean=mean, std=std)
    if train:
        geometry = [v2.RandomResizedCrop(resolution, scale=(min_crop_area, 1.0), antialias=True),
                    v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(eval_resize_size(resolution, 0.875), antialias=True), v2.CenterCrop(resolution)]
    return v2.Compose([*geometry, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def split_root(root: Path, split: str | None) -> tuple[Path, str]:
    for name in ([split] if split else ["train", "val"]):
        if (root / name).is_dir():
            return root, name
    return root.parent, root.name  # DIR itself holds the class directories


def time_loader(loader) -> tuple[float, int]:
    start = time.perf_counter()
    n = 0
    for _images, targets in loader:
        n += len(targets)
    return time.perf_counter() - start, n


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="ImageFolder root, e.g. ../shared/data/imagenet-samples")
    parser.add_argument("--split", default=None, help="subdirectory of DIR to read (default: train, else val)")
    parser.add_argument("--images", type=int, default=0, help="first N images only (default: all)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[224, 128])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the images")
    parser.add_argument("--chunk", type=int, default=100, help="images per timed run: pipelines alternate every chunk")
    parser.add_argument("--min-crop-area", type=float, default=0.25, help="RandomResizedCrop scale (both pipelines)")
    parser.add_argument("--shards", type=Path, default=None, help="shards written by mobilenet-data pack of DIR")
    parser.add_argument("--pack", action="store_true",
                        help="pack DIR into temporary shards first (--max-side 320 --quality 90)")
    parser.add_argument("--auto-augment", default=None,
                        help="train with this data.auto_augment (e.g. rand-m9-mstd0.5); the baseline is then timm's "
                             "create_transform(..., auto_augment=...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    ns = parser.parse_args(argv)
    torch.set_num_threads(1)
    root, split = split_root(ns.dir, ns.split)

    shards_root = ns.shards
    tmp = None
    if ns.pack and shards_root is None:
        from mobilenet_train.data.pack import pack

        tmp = tempfile.TemporaryDirectory(prefix="bench-shards-")
        shards_root = Path(tmp.name)
        pack(root, shards_root, max_side=320, quality=90, splits=[split], shard_size=1000, workers=1, progress=False)
    shard_info = None
    if shards_root is not None:
        from mobilenet_train.data import read_index

        index = read_index(shards_root)
        shard_info = {"bytes": sum(s["bytes"] for s in index["splits"][split]["shards"]),
                      "images": index["splits"][split]["count"]}
    folder_bytes = sum(p.stat().st_size for p in (root / split).rglob("*") if p.is_file())

    results = []
    if ns.auto_augment:
        print(f"train with auto_augment={ns.auto_augment}: baseline = timm create_transform")
    print(f"images/s per worker (num_workers=0, one core), {root / split}, batch {ns.batch}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}")
    header = f"{'pipeline':<8}{'px':>5}{'images':>8}{'baseline':>10}{'toolkit':>10}{'ratio':>8}"
    if shard_info:
        header += f"{'shards':>10}{'ratio':>8}"
    print(header)
    for train in (True, False):
        for res in ns.resolutions:
            cfg = data_cfg(ns.min_crop_area, ns.auto_augment)
            base_set = datasets.ImageFolder(str(root / split),
                                            transform=baseline_transform(train, res, ns.min_crop_area,
                                                                         ns.auto_augment))
            kit_set = image_folder(root, split, train_transform(cfg, res) if train else eval_transform(cfg, res))
            n = min(ns.images or len(base_set), len(base_set))
            chunks = [range(i, min(i + ns.chunk, n)) for i in range(0, n, ns.chunk)]
            transform = train_transform(cfg, res) if train else eval_transform(cfg, res)

            def loaders(c: int, chunk: range) -> dict:
                out = {"baseline": DataLoader(Subset(base_set, chunk), batch_size=ns.batch, num_workers=0),
                       "toolkit": DataLoader(Subset(kit_set, chunk), batch_size=ns.batch, num_workers=0,
                                             collate_fn=collate)}
                if shard_info and train:
                    stream = ShardStream(shards_root, split, transform, buffer_size=256)
                    stream.configure(batch_size=1, num_workers=0, seed=0, limit=len(chunk))
                    stream.set_epoch(c)  # another part of the stream for every chunk
                    out["shards"] = DataLoader(stream, batch_size=ns.batch, num_workers=0, collate_fn=collate)
                elif shard_info:
                    out["shards"] = DataLoader(Subset(shard_files,
                                                      range(chunk.start, min(chunk.stop, len(shard_files)))),
                                               batch_size=ns.batch, num_workers=0, collate_fn=collate)
                return out

            if shard_info:
                from mobilenet_train.data import ShardFiles, ShardStream

                shard_files = None if train else ShardFiles(shards_root, split, transform)
            times, counts, ratios = {}, {}, {}
            for r in range(ns.repeats):
                for c, chunk in enumerate(chunks):
                    round_speed = {}
                    items = list(loaders(c, chunk).items())
                    for name, loader in (items if (r + c) % 2 == 0 else items[::-1]):  # B T S, then S T B
                        torch.manual_seed(c)
                        elapsed, count = time_loader(loader)
                        times[name] = times.get(name, 0.0) + elapsed
                        counts[name] = counts.get(name, 0) + count
                        round_speed[name] = count / elapsed
                    for name in round_speed:
                        ratios.setdefault(name, []).append(round_speed[name] / round_speed["baseline"])
            speeds = {k: counts[k] / times[k] for k in times}
            row = {"pipeline": "train" if train else "eval", "resolution": res, "images": n,
                   **{f"{k}_images_per_sec": v for k, v in speeds.items()},
                   "ratio": statistics.median(ratios["toolkit"])}
            line = (f"{row['pipeline']:<8}{res:>5}{n:>8}{row['baseline_images_per_sec']:>10.0f}"
                    f"{row['toolkit_images_per_sec']:>10.0f}{row['ratio']:>7.2f}x")
            if "shards" in speeds:
                row["shards_ratio"] = statistics.median(ratios["shards"])
                line += f"{row['shards_images_per_sec']:>10.0f}{row['shards_ratio']:>7.2f}x"
            print(line, flush=True)
            results.append(row)
    out = {"dir": str(root / split), "batch": ns.batch, "repeats": ns.repeats, "load": os.getloadavg()[0],
           "auto_augment": ns.auto_augment,
           "folder_bytes": folder_bytes, "results": results}
    if shard_info:
        out["shard_bytes"] = shard_info["bytes"]
        print(f"size: folder {folder_bytes / 1e6:.1f} MB, shards {shard_info['bytes'] / 1e6:.1f} MB "
              f"({shard_info['bytes'] / folder_bytes:.2f}x) for {shard_info['images']} images")
    if ns.json:
        ns.json.write_text(json.dumps(out, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
