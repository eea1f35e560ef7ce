"""Steady-state training throughput: this toolkit's step vs a plain PyTorch loop, in one run.

The toolkit side is built from the real composed config (`data=fake` + the flags) exactly as
`engine.fit` builds it (model, channels_last, RMSpropTF with its parameter groups, timm
scheduler, GradScaler, DevicePreprocess, loss, optional torch.compile) and is timed by calling
`engine.train_one_epoch` itself on uint8 batches from `FakeImages`. The baseline is the loop
people write: a fresh `mobilenet_v1` with the same args, fp32, contiguous, eager,
`torch.optim.RMSprop`, inputs already normalised float tensors on the device.

Measurements are interleaved: every toolkit measurement sits between two baseline measurements
(B V1 B V2 B ...) and its ratio is taken against their mean; the table gives medians and the
min - max, so a noisy shared machine shows up as spread instead of as a fake speed-up.
On CUDA the baseline's inputs already sit on the GPU (its best case); the toolkit copies
pinned uint8 batches and normalises them inside the timed step, as in real training.

Usage:
    python scripts/bench_train.py --alpha 0.25 --resolution 128 --batch 32 --matrix --no-compile-in-matrix
    python scripts/bench_train.py --alpha 1.0 --resolution 224 --batch 16 --steps 8 --warmup 2
    python scripts/bench_train.py --alpha 0.25 --resolution 128 --batch 32 --compile
    python scripts/bench_train.py --device cuda --amp fp16 --batch 256 --json bench.json
    python scripts/bench_train.py --batch 64 trainer.ema.enabled=true   # extra config overrides
    python scripts/bench_train.py --alpha 0.75 --resolution 224 --batch 16 --qat tflite  # + the QAT step, same run
    python scripts/bench_train.py --alpha 0.25 --resolution 128 --batch 32 --teacher-alpha 1.0   # a teacher's cost
    python scripts/bench_train.py --device cuda --batch 256 --gpu-matrix --timm   # + timm's mobilenetv1_100, same run

--timm adds, for every toolkit variant, timm's MobileNet v1 (`mobilenetv1_100`; other widths through timm's
own builder with the same channel multiplier) trained as timm's train.py trains it: timm's PrefetchLoader
(side-stream copy and normalisation), `create_optimizer_v2(opt='rmsproptf')` with the toolkit's
hyper-parameters, autocast, timm's NativeScaler for fp16, torch.compile of the model when compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilenet_train.config import compose as compose_config
from mobilenet_train.data import NORMALIZATION, DevicePreprocess, FakeImages, build_loader
from mobilenet_train.distributed import DistInfo
from mobilenet_train.engine import TrainParts, TrainState, autocast_dtype, resolve_device, train_one_epoch
from mobilenet_train.engine.distill import build_distiller
from mobilenet_train.errors import UserError
from mobilenet_train.model import ModelArgs, build_model, mobilenet_v1
from mobilenet_train.optim import build_optimizer, build_scheduler, scaled_lr

# Distinct batches kept in memory; steps cycle through them (the data does not change the cost).
DISTINCT_BATCHES = 4


# ----------------------------------------------------------------------------- variants


@dataclass(frozen=True)
class Variant:
    compile: bool
    channels_last: bool
    amp: str  # none | bf16 | fp16
    qat: str | None = None  # a qat.target: the fake-quantized QAT model (qat.prepare) instead of the float one
    peer: str = "toolkit"  # toolkit | timm (timm's model and train.py's loop, same settings)
    compile_mode: str = "default"  # torch.compile's mode (trainer.compile_mode)

    @property
    def name(self) -> str:
        mode = f"({self.compile_mode})" if self.compile and self.compile_mode != "default" else ""
        return (f"{self.peer} {'compile' + mode if self.compile else 'eager'} "
                f"{'channels_last' if self.channels_last else 'contiguous'} "
                f"{'fp32' if self.amp == 'none' else self.amp}{f' QAT ({self.qat})' if self.qat else ''}")


def overrides_for(ns, variant: Variant | None) -> list[str]:
    o = ["data=fake", f"model.alpha={ns.alpha}", f"model.resolution={ns.resolution}",
         f"data.batch_size={ns.batch}", "data.num_workers=0", f"trainer.device={ns.device}"]
    if variant is not None:
        o += [f"trainer.amp={variant.amp}", f"trainer.channels_last={str(variant.channels_last).lower()}",
              f"trainer.compile={str(variant.compile).lower()}", f"trainer.compile_mode={variant.compile_mode}"]
        if variant.qat:
            o += ["qat.enabled=true", f"qat.target={variant.qat}"]
    return o + list(ns.overrides)  # the user's extra overrides win


def choose_variants(ns) -> list[Variant]:
    variants = _toolkit_variants(ns)
    if ns.timm:
        variants += [Variant(v.compile, v.channels_last, v.amp, peer="timm", compile_mode=v.compile_mode)
                     for v in variants if not v.qat]
    return variants


def _toolkit_variants(ns) -> list[Variant]:
    if ns.gpu_matrix:  # channels_last, {eager, compile} x {bf16, fp16}; --compile-amps narrows the compiled ones
        compile_amps = ns.compile_amps.split(",")
        cuda = ns.device.startswith("cuda") or (ns.device == "auto" and torch.cuda.is_available())
        amps = ("bf16", "fp16") if cuda else ("bf16",)  # fp16 needs CUDA's GradScaler: its CPU twin is bf16 alone
        eager = [Variant(False, True, amp) for amp in amps]
        if ns.no_compile_in_matrix:
            return eager
        return eager + [Variant(True, True, amp, compile_mode=mode) for mode in ns.compile_modes.split(",")
                        for amp in amps if amp in compile_amps]
    if ns.matrix:
        compiles = [False] if ns.no_compile_in_matrix else [False, True]
        return [Variant(c, cl, amp) for c in compiles for cl in (True, False) for amp in ("none", "bf16")]
    # A flag left out means "the toolkit's configured default" (trainer/default.yaml).
    tcfg = compose_config(overrides_for(ns, None)).trainer
    float_variant = Variant(
        compile=bool(tcfg.compile) if ns.compile is None else ns.compile,
        channels_last=bool(tcfg.channels_last) if ns.channels_last is None else ns.channels_last,
        amp=str(tcfg.amp) if ns.amp is None else ns.amp,
        compile_mode=str(tcfg.compile_mode),
    )
    if not ns.qat:
        return [float_variant]
    # The QAT step beside the float one, interleaved in the same run (QAT does not compile).
    return [float_variant, Variant(False, float_variant.channels_last, float_variant.amp, qat=ns.qat)]


# ----------------------------------------------------------------------------- data


def make_batches(cfg, args: ModelArgs, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few uint8 batches from the toolkit's own FakeImages loader, materialised up front.

    With num_workers=0 the loader would generate the random images on the training thread,
    and that generation (not a cost of training: fit's workers overlap it) would be timed.
    """
    dataset = FakeImages(DISTINCT_BATCHES * batch, args.num_classes, args.resolution, seed=0)
    loader = build_loader(dataset, batch, train=True, num_workers=0, seed=int(cfg.seed))
    batches = []
    for images, targets in loader:
        if device.type == "cuda":  # as fit's loader (pin_memory=True): async H2D copies
            images, targets = images.pin_memory(), targets.pin_memory()
        batches.append((images, targets))
    return batches


def cycle(batches: list, n: int) -> list:
    return [batches[i % len(batches)] for i in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- runners


class ToolkitRunner:
    """The toolkit's parts, built as in engine.fit; `run` is one train_one_epoch call."""

    def __init__(self, ns, variant: Variant, teacher: Path | None = None):
        self.variant = variant
        cfg = compose_config(overrides_for(ns, variant) + ([f"distill.teacher={teacher}"] if teacher else []))
        tcfg = self.tcfg = cfg.trainer
        if int(tcfg.accum_steps) != 1:
            raise UserError("trainer.accum_steps must be 1 here: the benchmark times optimizer steps of --batch images")
        device = self.device = resolve_device(str(tcfg.device))
        amp = autocast_dtype(tcfg.amp, device)
        torch.manual_seed(int(cfg.seed))
        model, args = build_model(cfg.model)
        self.model_args = args
        if variant.qat:  # as fit builds it: captured and prepared on the CPU, then moved
            from mobilenet_train.qat import prepare

            model = prepare(model, cfg.qat)
        model.to(device)
        if tcfg.channels_last:
            model.to(memory_format=torch.channels_last)
        batch = int(cfg.data.batch_size)
        optimizer = build_optimizer(model, cfg.optim, batch)
        # fit's schedule length: one epoch of the fake train split.
        steps_per_epoch = max(1, int(cfg.data.fake.train_size) // batch)
        scheduler = build_scheduler(optimizer, cfg.sched, int(tcfg.epochs), steps_per_epoch)
        scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
        ema = None
        if tcfg.ema.enabled:
            from timm.utils import ModelEmaV3
            ema = ModelEmaV3(model, decay=float(tcfg.ema.decay), use_warmup=bool(tcfg.ema.warmup))
        scheduler.step_update(num_updates=0)
        mode = None if tcfg.compile_mode == "default" else str(tcfg.compile_mode)
        train_model = torch.compile(model, mode=mode) if tcfg.compile else model
        loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.optim.label_smoothing))
        prep = DevicePreprocess(cfg.data.normalization, device, bool(tcfg.channels_last))
        classes = [str(i) for i in range(args.num_classes)]
        distill = build_distiller(cfg, classes, device, amp)  # the teacher, on the student's batch as in fit
        self.parts = TrainParts(model, train_model, optimizer, scheduler, scaler, loss_fn, prep, amp, ema,
                                distill=distill)
        self.state = TrainState()
        self.batches = make_batches(cfg, args, batch, device)
        self.cfg = cfg

    def run(self, n_steps: int) -> None:
        # fit turns on the cuDNN autotuner (unless deterministic); the baseline runs with the default.
        torch.backends.cudnn.benchmark = self.device.type == "cuda" and not self.tcfg.deterministic
        train_one_epoch(self.parts, cycle(self.batches, n_steps), self.state, self.tcfg, "bench",
                        logger=None, progress=False, dist_info=DistInfo())
        self.state.batches_done = 0  # as fit does between epochs
        torch.backends.cudnn.benchmark = False


class BaselineRunner:
    """The standard loop: fp32, contiguous, eager, torch.optim.RMSprop, float inputs ready on the device."""

    def __init__(self, toolkit: ToolkitRunner):
        cfg, args, device = toolkit.cfg, toolkit.model_args, toolkit.device
        self.device = device
        torch.manual_seed(int(cfg.seed))
        self.model = mobilenet_v1(args).to(device)
        o = cfg.optim  # same hyper-parameters (they do not change the cost, but keep the numbers sane)
        self.optimizer = torch.optim.RMSprop(self.model.parameters(), lr=scaled_lr(o, int(cfg.data.batch_size)),
                                             alpha=float(o.decay), eps=float(o.eps), momentum=float(o.momentum),
                                             weight_decay=float(o.weight_decay))
        self.loss_fn = nn.CrossEntropyLoss()
        mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in NORMALIZATION[cfg.data.normalization])
        # The same images as the toolkit gets, normalised once outside the timing.
        self.batches = [(((x.to(device).float() / 255.0) - mean) / std, y.to(device)) for x, y in toolkit.batches]

    def run(self, n_steps: int) -> None:
        self.model.train()
        for x, y in cycle(self.batches, n_steps):
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()


class TimmRunner:
    """timm's MobileNet v1 trained as timm's train.py does, with the toolkit runner's settings and batches."""

    def __init__(self, toolkit: ToolkitRunner, variant: Variant):
        from timm.data.loader import PrefetchLoader
        from timm.models.efficientnet import _gen_mobilenet_v1
        from timm.optim import create_optimizer_v2
        from timm.utils import NativeScaler

        cfg, args, device = toolkit.cfg, toolkit.model_args, toolkit.device
        self.device, self.variant, self.batches = device, variant, toolkit.batches
        torch.manual_seed(int(cfg.seed))
        name = {1.0: "mobilenetv1_100", 1.25: "mobilenetv1_125"}.get(float(args.alpha), "mobilenetv1_100")
        model = _gen_mobilenet_v1(name, float(args.alpha), pretrained=False, num_classes=args.num_classes)
        model.to(device)
        if variant.channels_last:
            model.to(memory_format=torch.channels_last)
        o = cfg.optim
        self.model = model
        mode = None if variant.compile_mode == "default" else variant.compile_mode
        self.train_model = torch.compile(model, mode=mode) if variant.compile else model  # --torchcompile-mode
        self.optimizer = create_optimizer_v2(model, opt="rmsproptf", lr=scaled_lr(o, int(cfg.data.batch_size)),
                                             weight_decay=float(o.weight_decay), eps=float(o.eps),
                                             momentum=float(o.momentum))
        self.amp = autocast_dtype(variant.amp, device)
        self.scaler = NativeScaler(device=device.type) if self.amp == torch.float16 else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=float(cfg.optim.label_smoothing))
        mean, std = NORMALIZATION[cfg.data.normalization]
        self.prefetch = lambda items: PrefetchLoader(items, mean=mean, std=std, device=device)

    def run(self, n_steps: int) -> None:
        torch.backends.cudnn.benchmark = self.device.type == "cuda"  # as timm's train.py
        self.model.train()
        for x, y in self.prefetch(cycle(self.batches, n_steps)):
            if self.variant.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                loss = self.loss_fn(self.train_model(x), y)
            if self.scaler is not None:
                self.scaler(loss, self.optimizer, parameters=self.model.parameters())
            else:
                loss.backward()
                self.optimizer.step()
            self.optimizer.zero_grad()
        torch.backends.cudnn.benchmark = False


@dataclass
class Result:
    name: str
    runner: object = None
    first_warmup_s: float | None = None  # includes torch.compile for compiled variants
    samples: list[float] = field(default_factory=list)  # images/s, one per measurement
    ratios: list[float] = field(default_factory=list)  # vs the baselines measured just before and after
    error: str | None = None


def _fail(res: Result, e: Exception) -> None:
    text = str(e).strip()
    res.error = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:200]
    res.runner = None
    print(f"  {res.name:<40} ERROR {res.error}", file=sys.stderr, flush=True)


def prime(res: Result, ns, device: torch.device) -> None:
    """First, untimed warm-up: compile, oneDNN/cuDNN plans, allocator growth, optimizer state."""
    try:
        sync(device)
        t0 = time.perf_counter()
        res.runner.run(ns.warmup)
        sync(device)
        res.first_warmup_s = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - report (e.g. a compile failure) and go on with the others
        _fail(res, e)


def measure(res: Result, ns, device: torch.device) -> float | None:
    """Warm-up steps (untimed: caches went cold while other models ran), then `ns.steps` timed steps."""
    if res.error:
        return None
    try:
        res.runner.run(ns.warmup)
        sync(device)
        t0 = time.perf_counter()
        res.runner.run(ns.steps)
        sync(device)
        rate = ns.steps * ns.batch / (time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001
        _fail(res, e)
        return None
    res.samples.append(rate)
    print(f"  {res.name:<40} {rate:9.1f} img/s", file=sys.stderr, flush=True)
    return rate


# ----------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def summarize(res: Result, is_baseline: bool = False) -> dict:
    s, q = res.samples, ([1.0] if is_baseline else res.ratios)
    nan = float("nan")
    return {"name": res.name, "images_per_sec": statistics.median(s) if s else nan,
            "images_per_sec_min": min(s, default=nan), "images_per_sec_max": max(s, default=nan), "samples": s,
            "ratio": statistics.median(q) if q else nan, "ratio_min": min(q, default=nan),
            "ratio_max": max(q, default=nan), "paired_ratios": res.ratios,
            "first_warmup_s": res.first_warmup_s, "error": res.error}


def print_table(rows: list[dict]) -> None:
    head = (f"{'variant':<37} | {'images/s':>8} | {'min - max':>15} | {'ratio vs baseline':>17} | "
            f"{'ratio min - max':>15} | {'1st warm-up s':>13}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if not r["samples"]:
            print(f"{r['name']:<37} | {'failed':>8} | {r['error']}")
            continue
        warm = f"{r['first_warmup_s']:.1f}" if r["first_warmup_s"] is not None else ""
        note = f"  (then failed: {r['error']})" if r["error"] else ""
        print(f"{r['name']:<37} | {r['images_per_sec']:8.1f} | "
              f"{r['images_per_sec_min']:6.1f} - {r['images_per_sec_max']:6.1f} | {r['ratio']:16.2f}x | "
              f"{r['ratio_min']:5.2f} - {r['ratio_max']:5.2f}x | {warm:>13}{note}")


def teacher_checkpoint(ns) -> Path:
    """A teacher of --teacher-alpha at --resolution with random weights (the cost does not depend on them)."""
    import tempfile

    from mobilenet_train.deploy.latency import random_checkpoint

    path = Path(tempfile.mkdtemp(prefix="bench-teacher-")) / f"teacher_{ns.teacher_alpha}.pt"
    return random_checkpoint([f"model.alpha={ns.teacher_alpha}", f"model.resolution={ns.resolution}",
                              "data.num_classes=1000"], path)


def print_teacher_cost(rows: list[dict], teacher_alpha: float) -> None:
    """Each variant with a teacher against itself without: both ratios are to the same baseline."""
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        alone = by_name.get(r["name"].removesuffix(" + teacher"))
        if r["name"].endswith(" + teacher") and alone and r["samples"] and alone["samples"]:
            print(f"teacher cost ({alone['name']}, alpha {teacher_alpha} teacher): step time x "
                  f"{alone['ratio'] / r['ratio']:.2f} (images/s {alone['images_per_sec']:.1f} -> "
                  f"{r['images_per_sec']:.1f})")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Usage:")[1])
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each measurement")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds; each measures every variant once, each between two baseline measurements")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    # None = the toolkit's configured default (trainer/default.yaml).
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default=None)
    p.add_argument("--matrix", action="store_true",
                   help="all of {eager, compile} x {channels_last, contiguous} x {fp32, bf16}")
    p.add_argument("--no-compile-in-matrix", action="store_true", help="leave compile out of --matrix / --gpu-matrix")
    p.add_argument("--gpu-matrix", action="store_true",
                   help="channels_last, {eager, compile} x {bf16, fp16} (fp16 with GradScaler: CUDA only)")
    p.add_argument("--compile-amps", default="bf16,fp16",
                   help="--gpu-matrix: the amp modes that also get a compiled variant (compiling takes a while)")
    p.add_argument("--compile-modes", default="default",
                   help="--gpu-matrix: torch.compile modes of the compiled variants (trainer.compile_mode), e.g. "
                        "default,reduce-overhead")
    p.add_argument("--timm", action="store_true",
                   help="also time timm's MobileNet v1 as timm's train.py trains it, same settings, same run")
    p.add_argument("--teacher-alpha", type=float, default=None,
                   help="also time each variant distilling from a teacher of this alpha (random weights, at "
                        "--resolution): the teacher's step-time cost")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--qat", choices=("tflite", "executorch", "onnx"), default=None,
                   help="also time the QAT step (fake-quantized for this qat.target) in the same run")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra config overrides for the toolkit")
    ns = p.parse_args(argv)
    if ns.steps < 1 or ns.warmup < 1 or ns.repeats < 1 or ns.batch < 1:
        p.error("--steps, --warmup, --repeats and --batch must be >= 1")
    return ns


def main(argv=None) -> int:
    ns = parse_args(argv)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    try:
        variants = choose_variants(ns)
        toolkit = [Result(v.name, ToolkitRunner(ns, v)) for v in variants if v.peer == "toolkit"]
        toolkit += [Result(v.name, TimmRunner(toolkit[0].runner, v)) for v in variants if v.peer == "timm"]
        if ns.teacher_alpha:
            teacher = teacher_checkpoint(ns)
            toolkit += [Result(f"{v.name} + teacher", ToolkitRunner(ns, v, teacher)) for v in variants]
    except UserError as e:
        print(f"bench_train: {e}", file=sys.stderr)
        return 2
    device = toolkit[0].runner.device
    baseline = Result("baseline (eager contiguous fp32)", BaselineRunner(toolkit[0].runner))
    info = machine_info(device)
    load_before = os.getloadavg()
    print(f"MobileNet v1 alpha={ns.alpha} resolution={ns.resolution}, batch {ns.batch}, {ns.steps} timed steps "
          f"after {ns.warmup} warm-up steps, {ns.repeats} round(s)", file=sys.stderr, flush=True)

    # The first steps of each model in the process are much slower (and include torch.compile).
    # The baseline goes last: its priming also absorbs what compiling leaves behind.
    for res in [*toolkit, baseline]:
        prime(res, ns, device)
    # Every toolkit measurement sits between two baseline measurements (B V1 B V2 B ...) and is
    # compared with their mean: load that comes and goes on a shared machine hits both sides.
    before = measure(baseline, ns, device)
    for r in range(ns.repeats):
        print(f"round {r + 1}/{ns.repeats}", file=sys.stderr, flush=True)
        # Alternate the order so a slow drift of the machine does not favour one variant.
        for res in (toolkit if r % 2 == 0 else toolkit[::-1]):
            rate = measure(res, ns, device)
            after = measure(baseline, ns, device)
            if before is None or after is None:
                print(f"bench_train: the baseline failed: {baseline.error}", file=sys.stderr)
                return 1
            if rate is not None:
                res.ratios.append(rate / ((before + after) / 2))
            before = after
        if ns.json:  # after every round: a run stopped by a time limit keeps what it measured
            write_json(ns, info, load_before, [summarize(baseline, is_baseline=True)] + [summarize(t) for t in toolkit])

    rows = [summarize(baseline, is_baseline=True)] + [summarize(t) for t in toolkit]
    load_after = os.getloadavg()
    gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else ""
    print(f"\nmachine: {info['cpu']} ({info['cpu_count']} CPUs, torch threads {info['torch_threads']}){gpu}; "
          f"torch {info['torch']}; device {info['device']}")
    print(f"model: MobileNet v1 alpha={ns.alpha} resolution={ns.resolution}; batch {ns.batch}; "
          f"{ns.steps} timed steps per measurement, {ns.repeats} per variant, {len(baseline.samples)} of the baseline; "
          f"{ns.warmup} untimed warm-up steps before each")
    print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}\n")
    print_table(rows)
    print("\nimages/s: median of the measurements (min - max beside it); ratio: median over measurements of "
          "images/s / mean of the two baseline measurements around it")
    print("baseline measurements, in order: " + ", ".join(f"{v:.1f}" for v in baseline.samples) + " img/s")
    if ns.teacher_alpha:
        print_teacher_cost(rows, ns.teacher_alpha)
    if ns.json:
        write_json(ns, info, load_before, rows, load_after)
        print(f"written {ns.json}")
    return 0 if all(not t.error for t in toolkit) else 1


def write_json(ns, info: dict, load_before, rows: list[dict], load_after=None) -> None:
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = ns.json.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "machine": info, "load_avg_before": load_before, "load_avg_after": load_after,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(ns).items()},
        "results": rows, "complete": load_after is not None}, indent=2) + "\n")
    os.replace(tmp, ns.json)


if __name__ == "__main__":
    sys.exit(main())
