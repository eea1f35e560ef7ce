"""Detection training throughput: this toolkit's SSD step (task=detection) vs torchvision's own
`ssdlite320_mobilenet_v3_large` training step, in one run, at the same batch and input size.

The toolkit side is built from the composed config (`+experiment=ssd_shapes` + the flags) as
`engine.fit` builds it (`build_task_model`, `build_parts`: channels_last, the optimizer and
schedule, DevicePreprocess, the detection loss hook) and timed by calling `engine.train_one_epoch`
on uint8 batches with their targets. The comparison is torchvision's model with weights=None,
weights_backbone=None and `num_classes` = categories + 1, trained in the plain loop
(`loss = sum(model(images, targets).values())`, SGD), its inputs float tensors in [0, 1].

Both see the same batches: random images with 1-3 random boxes each (the cost does not depend on
the content). Measurements are interleaved (T S T S ...), each toolkit measurement's ratio taken
against the mean of the torchvision measurements around it; medians and min - max are printed.

Usage:
    OMP_NUM_THREADS=2 python scripts/bench_det_train.py --alpha 1.0 --resolution 320 --batch 8
    python scripts/bench_det_train.py --alpha 0.25 --resolution 128 --batch 16 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from mobilenet_train.config import compose
from mobilenet_train.distributed import DistInfo
from mobilenet_train.engine import TrainState, train_one_epoch
from mobilenet_train.engine.setup import TrainContext, build_parts
from mobilenet_train.engine.trainer import build_task_model

DISTINCT_BATCHES = 3


def make_batches(batch: int, size: int, categories: int) -> list:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(DISTINCT_BATCHES):
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
        targets = []
        for _ in range(batch):
            n = int(torch.randint(1, 4, (1,), generator=g))
            xy = torch.rand(n, 2, generator=g) * size * 0.6
            wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.1) * size
            targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(
                1, categories + 1, (n,), generator=g), "image_id": 0, "orig_size": (size, size)})
        out.append((images, targets))
    return out


class Toolkit:
    def __init__(self, ns, batches):
        cfg = compose(["+experiment=ssd_shapes", f"model.alpha={ns.alpha}", f"model.resolution={ns.resolution}",
                       f"data.batch_size={ns.batch}", "trainer.device=cpu", *ns.overrides])
        torch.manual_seed(0)
        model, _, _ = build_task_model(cfg)
        ctx = TrainContext(DistInfo(), None, torch.device("cpu"), None, False)
        self.parts = build_parts(cfg, ctx, model, None, None, 0, int(cfg.trainer.epochs), 1000)
        self.tcfg, self.state, self.batches = cfg.trainer, TrainState(), batches

    def run(self, steps: int) -> None:
        train_one_epoch(self.parts, [self.batches[i % len(self.batches)] for i in range(steps)], self.state,
                        self.tcfg, "bench", dist_info=DistInfo())
        self.state.batches_done = 0


class Torchvision:
    def __init__(self, ns, batches, categories: int):
        torch.manual_seed(0)
        self.model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=categories + 1)
        self.model.transform.min_size = (ns.resolution,)  # the same input size as ours
        self.model.transform.max_size = ns.resolution
        self.model.transform.fixed_size = (ns.resolution, ns.resolution)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.batches = [(x.float() / 255.0, [{"boxes": t["boxes"], "labels": t["labels"]} for t in ts])
                        for x, ts in batches]

    def run(self, steps: int) -> None:
        self.model.train()
        for i in range(steps):
            x, targets = self.batches[i % len(self.batches)]
            loss = sum(self.model(list(x), targets).values())
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()


def timed(runner, ns) -> float:
    runner.run(ns.warmup)
    t0 = time.perf_counter()
    runner.run(ns.steps)
    return ns.steps * ns.batch / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=320)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--categories", type=int, default=10, help="object categories (data.num_classes)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="toolkit measurements, each between two torchvision ones")
    p.add_argument("--json", default=None)
    p.add_argument("overrides", nargs="*", help="extra config overrides for the toolkit side")
    ns = p.parse_args(argv)
    ns.overrides = [*ns.overrides, f"data.num_classes={ns.categories}"]
    batches = make_batches(ns.batch, ns.resolution, ns.categories)
    ours, theirs = Toolkit(ns, batches), Torchvision(ns, batches, ns.categories)
    tv = [timed(theirs, ns)]
    rates, ratios = [], []
    for _ in range(ns.rounds):
        rates.append(timed(ours, ns))
        tv.append(timed(theirs, ns))
        ratios.append(rates[-1] / statistics.mean(tv[-2:]))
        print(f"  toolkit {rates[-1]:.2f} img/s, torchvision {tv[-1]:.2f} img/s", file=sys.stderr, flush=True)
    result = {"alpha": ns.alpha, "resolution": ns.resolution, "batch": ns.batch, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "toolkit_img_s": statistics.median(rates), "torchvision_ssdlite_img_s": statistics.median(tv),
              "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
    print(f"SSD MobileNet v1 alpha {ns.alpha} (toolkit, task=detection) vs torchvision ssdlite320_mobilenet_v3_large, "
          f"batch {ns.batch} at {ns.resolution} px, {result['threads']} threads:\n"
          f"  toolkit {result['toolkit_img_s']:.2f} img/s, torchvision {result['torchvision_ssdlite_img_s']:.2f} "
          f"img/s, ratio {result['ratio_median']:.2f} (min {result['ratio_min']:.2f}, max {result['ratio_max']:.2f})")
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
