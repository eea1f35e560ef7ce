"""Accuracy and wall time of the same MobileNet v1 trained by `mobilenet-train` and by timm's train.py.

Both trainers get the same ImageFolder (ROOT/train, ROOT/val), the same network, the same epochs and
one recipe: the toolkit's composed config (its defaults plus the overrides given here) translated key
by key into timm train.py flags by `translate` (a pure function, unit-tested). Whatever the
translation cannot remove is listed in `differences` (printed, and in the JSON).

timm's train.py runs unchanged as a subprocess with this Python (`--timm-train`, default
../shared/peers/timm/train.py); widths other than timm's registered ones go through
scripts/timm_train_width.py, which registers timm's own MobileNet-v1 builder at that channel
multiplier first. Each epoch's wall time is the time, from the trainer's launch, at which its
epoch line appeared (the toolkit's run_dir/metrics.jsonl, timm's summary.csv), polled every 0.2 s
for both; the runs go one after another, never side by side.

Usage:
    python scripts/bench_vs_timm.py --data ../shared/data/imagenette-mini --alpha 0.25 --resolution 128 \\
        --epochs 8 --batch 64 --workers 2 --seeds 0 1 --out bench_vs_timm
    python scripts/bench_vs_timm.py --data DIR --epochs 1 optim=sgd optim.lr=0.1   # any toolkit override
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timm_train_width import model_name  # noqa: E402 - the wrapper beside this script

from mobilenet_train.config import compose as compose_config  # noqa: E402
from mobilenet_train.errors import UserError  # noqa: E402
from mobilenet_train.optim import scaled_lr  # noqa: E402

WRAPPER = Path(__file__).resolve().parent / "timm_train_width.py"
DEFAULT_TIMM_TRAIN = "../shared/peers/timm/train.py"
NORMALIZATION = {"inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                 "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
# MobileNet v1's channels at width 1 (stem, then the 13 separable layers' outputs).
V1_CHANNELS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


# ----------------------------------------------------------------------------- translation


@dataclass
class Translation:
    flags: list[str]  # timm train.py arguments (without the data dir, output and device)
    model: str  # timm model name
    differences: list[str] = field(default_factory=list)  # what the flags cannot make equal


def _num(x: float) -> str:
    return repr(float(x))


def translate(cfg) -> Translation:
    """The toolkit's composed config -> timm train.py flags, and the differences left.

    Pure: reads `cfg` only (model, data, optim, sched, trainer, seed, distill, qat).
    """
    flags, diffs = [], []
    name = _model(cfg.model, flags, diffs)
    _optimizer(cfg, flags, diffs)
    _schedule(cfg, flags, diffs)
    _data(cfg.data, cfg.model, flags, diffs)
    _augment(cfg.data, flags)
    _trainer(cfg, flags, diffs)
    return Translation(flags, name, diffs)


def _model(m, flags: list[str], diffs: list[str]) -> str:
    if m.variant != "separable" or m.norm != "batchnorm":
        raise UserError(f"model.variant={m.variant} model.norm={m.norm}: timm has MobileNet v1 only as the paper's "
                        f"separable network with BatchNorm; use model.variant=separable model.norm=batchnorm")
    flags += ["--model", model_name(float(m.alpha)), "--img-size", str(int(m.resolution)),
              "--num-classes", str(int(m.num_classes)), "--drop", _num(m.dropout),
              "--bn-momentum", _num(m.bn_momentum), "--bn-eps", _num(m.bn_eps)]
    kwargs = [f"act_layer={m.activation}"]  # timm's MobileNet v1 defaults to relu6
    if m.padding == "tf_same":
        kwargs.append("pad_type=same")
    flags += ["--model-kwargs", *kwargs]
    from timm.models._efficientnet_builder import round_channels

    ours = [max(int(m.min_channels), int(float(m.alpha) * c)) if int(m.round_to) == 1
            else round_channels(c, float(m.alpha), int(m.round_to)) for c in V1_CHANNELS]
    theirs = [round_channels(c, float(m.alpha)) for c in V1_CHANNELS]
    if ours != theirs:
        diffs.append(f"channels: the toolkit's {ours} (model.round_to={m.round_to}) vs timm's {theirs} "
                     f"(round_channels to a multiple of 8)")
    diffs.append("weight init: the toolkit's torchvision MobileNet init (conv kaiming-normal fan-out, FC N(0, 0.01)) "
                 "vs timm's _init_weight_goog (conv N(0, sqrt(2 / fan-out per group)), FC uniform +-1/sqrt(classes))")
    return model_name(float(m.alpha))


def _optimizer(cfg, flags: list[str], diffs: list[str]) -> None:
    o, batch = cfg.optim, int(cfg.data.batch_size)
    # timm's train.py scales --lr-base by the batch only when --lr is not given: pass the effective lr.
    flags += ["--lr", _num(scaled_lr(o, batch)), "--weight-decay", _num(o.weight_decay)]
    if o.name == "rmsprop":  # TF semantics on both sides: eps inside the sqrt, ms starts at 1, lr in momentum
        flags += ["--opt", "rmsproptf", "--opt-eps", _num(o.eps), "--momentum", _num(o.momentum),
                  "--opt-kwargs", f"alpha={float(o.decay)!r}"]
    elif o.name == "sgd":
        flags += ["--opt", "sgd" if o.nesterov else "momentum", "--momentum", _num(o.momentum)]
    elif o.name in ("adamw", "lamb"):
        flags += ["--opt", str(o.name), "--opt-eps", _num(o.eps), "--opt-betas", *(_num(b) for b in o.betas)]
    else:
        raise UserError(f"optim.name={o.name} has no timm counterpart here: use rmsprop, sgd, adamw or lamb")
    if o.loss == "bce":
        flags += ["--bce-loss"]
        if o.bce_target_thresh is not None:
            flags += ["--bce-target-thresh", _num(o.bce_target_thresh)]
    flags += ["--smoothing", _num(o.label_smoothing)]
    if float(o.weight_decay) > 0:
        # timm's train.py: create_optimizer_v2(filter_bias_and_bn=True) decays every parameter of 2+ dims.
        if not o.decay_depthwise:
            diffs.append("weight decay on depthwise filters: none in the toolkit (optim.decay_depthwise=false, the "
                         "paper) vs decayed by timm's train.py (filter_bias_and_bn decays every weight of 2+ dims)")
        if o.decay_norm or o.decay_bias:
            diffs.append("weight decay on BN / biases: on in the toolkit (optim.decay_norm / decay_bias) vs never in "
                         "timm's train.py (filter_bias_and_bn)")


def _schedule(cfg, flags: list[str], diffs: list[str]) -> None:
    s, epochs = cfg.sched, int(cfg.trainer.epochs)
    warmup = float(s.warmup_epochs)
    whole = int(round(warmup))
    if abs(warmup - whole) > 1e-9:
        diffs.append(f"warmup: {warmup} epochs in the toolkit vs {whole} in timm (train.py takes whole epochs)")
    # The toolkit's warmup is a prefix inside trainer.epochs: timm's --warmup-prefix adds it to --epochs.
    flags += ["--epochs", str(max(1, epochs - whole)), "--warmup-epochs", str(whole),
              "--warmup-lr", _num(s.warmup_lr_init), "--cooldown-epochs", "0", "--sched-on-updates"]
    if whole:
        flags += ["--warmup-prefix"]
    if s.name == "exponential":  # staircase x decay_rate every decay_epochs, counted in updates as the toolkit
        flags += ["--sched", "step", "--decay-epochs", _num(s.decay_epochs), "--decay-rate", _num(s.decay_rate)]
    elif s.name == "cosine":
        flags += ["--sched", "cosine", "--min-lr", _num(s.min_lr)]
    else:
        raise UserError(f"sched.name={s.name} has no timm counterpart here: use exponential or cosine")


def _data(d, m, flags: list[str], diffs: list[str]) -> None:
    mean, std = NORMALIZATION[str(d.normalization)]
    flags += ["--train-split", str(d.train_split), "--val-split", str(d.val_split),
              "-b", str(int(d.batch_size)), "-vb", str(int(d.eval_batch_size)), "-j", str(int(d.num_workers)),
              "--scale", _num(d.min_crop_area), "1.0", "--ratio", *(_num(r) for r in d.crop_ratio),
              "--hflip", _num(d.hflip), "--vflip", "0.0",
              "--color-jitter", "0.0",  # the toolkit has no colour jitter (timm's default is 0.4)
              "--interpolation", str(d.interpolation), "--train-interpolation", str(d.interpolation),
              "--crop-pct", _num(d.eval_crop_fraction), "--mean", *(_num(v) for v in mean),
              "--std", *(_num(v) for v in std)]
    if d.eval_preset != "default":
        diffs.append(f"eval preprocessing: data.eval_preset={d.eval_preset} vs timm's resize-shorter-side + centre "
                     f"crop (crop_pct {d.eval_crop_fraction})")
    if d.jpeg_draft:
        diffs.append("JPEG decode: the toolkit lets libjpeg downscale 2x/4x/8x in the DCT domain when a crop is at "
                     "least twice the output side (data.jpeg_draft=true), and resizes JPEG crops with torchvision's "
                     "antialiased uint8 resize; timm decodes whole images with PIL and resizes with PIL")
    diffs.append("augmentation random draws: the toolkit seeds each sample from (seed, epoch, index); timm seeds "
                 "each loader worker (same distributions, different draws)")


def _augment(d, flags: list[str]) -> None:
    if d.auto_augment:
        flags += ["--aa", str(d.auto_augment)]
    flags += ["--reprob", _num(d.random_erasing), "--remode", str(d.random_erasing_mode),
              "--recount", str(int(d.random_erasing_count)),
              "--mixup", _num(d.mixup), "--cutmix", _num(d.cutmix), "--mixup-prob", _num(d.mixup_prob),
              "--mixup-switch-prob", _num(d.mixup_switch_prob), "--mixup-mode", str(d.mixup_mode)]


def _trainer(cfg, flags: list[str], diffs: list[str]) -> None:
    t = cfg.trainer
    flags += ["--seed", str(int(cfg.seed)), "--grad-accum-steps", str(int(t.accum_steps))]
    if t.channels_last:
        flags += ["--channels-last"]
    if t.amp != "none":  # off on the CPU by default on both sides
        flags += ["--amp", "--amp-dtype", {"bf16": "bfloat16", "fp16": "float16"}[str(t.amp)]]
    if t.compile:
        flags += ["--torchcompile"]
    if float(t.grad_clip) > 0:
        flags += ["--clip-grad", _num(t.grad_clip), "--clip-mode", "norm"]
    if t.ema.enabled:
        flags += ["--model-ema", "--model-ema-decay", _num(t.ema.decay)] + (["--model-ema-warmup"] if t.ema.warmup
                                                                             else [])
        diffs.append("EMA: timm's summary.csv reports the EMA model's accuracy, the toolkit's val_top1 the raw model's "
                     "(its EMA is val_ema_top1)")
    if int(t.eval_every_epochs) != 1:
        flags += ["--val-interval", str(int(t.eval_every_epochs))]
    if int(t.freeze_backbone_epochs):
        diffs.append(f"trainer.freeze_backbone_epochs={t.freeze_backbone_epochs}: timm's train.py has no counterpart")
    if cfg.get("distill") is not None and cfg.distill.teacher:
        diffs.append("distillation (distill.teacher) is not translated: timm trains without a teacher")
    if cfg.get("qat") is not None and cfg.qat.enabled:
        diffs.append("qat.enabled: timm trains the float model")


# ----------------------------------------------------------------------------- running


def num_classes(root: Path, split: str) -> int:
    return sum(1 for p in (root / split).iterdir() if p.is_dir())


def toolkit_overrides(ns, seed: int, run_dir: Path) -> list[str]:
    classes = num_classes(ns.data, "train")
    return ["data=imagenet", f"data.root={ns.data}", f"data.num_classes={classes}",
            f"model.alpha={ns.alpha}", f"model.resolution={ns.resolution}", f"data.batch_size={ns.batch}",
            f"data.eval_batch_size={ns.batch}", f"data.num_workers={ns.workers}", f"trainer.epochs={ns.epochs}",
            f"trainer.device={ns.device}", "trainer.progress=false", f"seed={seed}", "trainer.resume=none",
            f"hydra.run.dir={run_dir}", *ns.overrides]


def toolkit_command(overrides: list[str]) -> list[str]:
    exe = Path(sys.executable).parent / "mobilenet-train"
    return [str(exe) if exe.exists() else shutil.which("mobilenet-train") or "mobilenet-train", *overrides]


def timm_command(ns, tr: Translation, out_dir: Path, experiment: str) -> list[str]:
    flags = [str(ns.data), *tr.flags, "--device", "cpu" if ns.device in ("cpu", "auto") else ns.device,
             "--output", str(out_dir), "--experiment", experiment, "--checkpoint-hist", "1", "--log-interval", "50"]
    return [sys.executable, str(WRAPPER), "--alpha", repr(float(ns.alpha)), "--train-py", str(ns.timm_train), "--",
            *flags]


def count_toolkit(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def count_timm(exp_dir: Path) -> list[dict]:
    path = exp_dir / "summary.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_stamped(cmd: list[str], env: dict, log_path: Path, read) -> tuple[list[dict], list[float], float, int, float]:
    """Run `cmd`; the wall time (from launch) at which each epoch's line appeared, and the CPU seconds
    of the trainer and its loader workers (less sensitive than wall time to other jobs on a shared machine)."""
    stamps: list[float] = []
    cpu0 = children_cpu_s()
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            done = proc.poll() is not None
            now = time.perf_counter() - t0
            rows = read()
            stamps += [now] * (len(rows) - len(stamps))
            if done:
                break
            time.sleep(0.2)
    return rows, stamps, time.perf_counter() - t0, proc.returncode, children_cpu_s() - cpu0


def toolkit_epochs(rows: list[dict], stamps: list[float]) -> list[dict]:
    return [{"epoch": int(r["epoch"]), "val_top1": float(r["val_top1"]), "val_top5": float(r["val_top5"]),
             "train_loss": float(r["train_loss"]), "wall_s": s} for r, s in zip(rows, stamps) if "val_top1" in r]


def timm_epochs(rows: list[dict], stamps: list[float]) -> list[dict]:
    return [{"epoch": int(r["epoch"]) + 1, "val_top1": float(r["eval_top1"]), "val_top5": float(r["eval_top5"]),
             "train_loss": float(r["train_loss"]), "wall_s": s} for r, s in zip(rows, stamps)]


def run_pair(ns, seed: int, env: dict) -> tuple[list[dict], Translation]:
    out = ns.out / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    overrides = toolkit_overrides(ns, seed, out / "toolkit")
    tr = translate(compose_config(overrides, hydra=False))
    runs = []
    for trainer in ns.trainers:
        if trainer == "toolkit":
            shutil.rmtree(out / "toolkit", ignore_errors=True)
            cmd = toolkit_command(overrides)
            rows, stamps, wall, rc, cpu = run_stamped(cmd, env, out / "toolkit.log",
                                                      lambda: count_toolkit(out / "toolkit"))
            epochs = toolkit_epochs(rows, stamps)
        else:
            shutil.rmtree(out / "timm", ignore_errors=True)
            cmd = timm_command(ns, tr, out, "timm")
            rows, stamps, wall, rc, cpu = run_stamped(cmd, env, out / "timm.log", lambda: count_timm(out / "timm"))
            epochs = timm_epochs(rows, stamps)
        load = os.getloadavg()
        final = epochs[-1] if epochs else {}
        runs.append({"trainer": trainer, "seed": seed, "returncode": rc, "wall_s": wall, "cpu_s": cpu,
                     "load_avg_after": load,
                     "final_val_top1": final.get("val_top1"), "final_val_top5": final.get("val_top5"),
                     "epochs": epochs, "command": " ".join(cmd)})
        print(f"{trainer:8} seed {seed}: rc {rc}, {len(epochs)} epochs, final val top-1 {final.get('val_top1')}, "
              f"wall {wall:.0f} s, CPU {cpu:.0f} s, load {load[0]:.1f}", file=sys.stderr, flush=True)
    return runs, tr


def summarize(runs: list[dict]) -> dict:
    out = {}
    for trainer in {r["trainer"] for r in runs}:
        rs = [r for r in runs if r["trainer"] == trainer and r["final_val_top1"] is not None]
        if rs:
            out[trainer] = {"final_val_top1_mean": statistics.mean(r["final_val_top1"] for r in rs),
                            "final_val_top1": [r["final_val_top1"] for r in rs],
                            "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
                            "cpu_s_mean": statistics.mean(r["cpu_s"] for r in rs), "seeds": [r["seed"] for r in rs]}
    if "toolkit" in out and "timm" in out:
        out["top1_gap_points"] = out["toolkit"]["final_val_top1_mean"] - out["timm"]["final_val_top1_mean"]
        out["wall_ratio"] = out["toolkit"]["wall_s_mean"] / out["timm"]["wall_s_mean"]
        out["cpu_ratio"] = out["toolkit"]["cpu_s_mean"] / out["timm"]["cpu_s_mean"]
    return out


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {"toolkit": "tab:blue", "timm": "tab:orange"}
    for r in runs:
        if not r["epochs"]:
            continue
        e = [x["epoch"] for x in r["epochs"]]
        t = [x["wall_s"] / 60 for x in r["epochs"]]
        top1 = [x["val_top1"] for x in r["epochs"]]
        style = dict(color=colours[r["trainer"]], marker="o", ms=3, label=f"{r['trainer']} seed {r['seed']}",
                     linestyle="-" if r["seed"] == runs[0]["seed"] else "--")
        by_epoch.plot(e, top1, **style)
        by_time.plot(t, top1, **style)
    by_epoch.set(xlabel="epoch", ylabel="val top-1 (%)", title="by epoch")
    by_time.set(xlabel="wall-clock (min, from launch)", ylabel="val top-1 (%)", title="by wall-clock")
    for ax in (by_epoch, by_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Usage:")[1])
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and val/")
    p.add_argument("--timm-train", type=Path, default=Path(DEFAULT_TIMM_TRAIN), help="timm's train.py")
    p.add_argument("--out", type=Path, default=Path("bench_vs_timm"), help="run dirs, JSON and plot")
    p.add_argument("--alpha", type=float, default=0.25)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for both trainers")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--trainers", nargs="+", choices=("toolkit", "timm"), default=["toolkit", "timm"])
    p.add_argument("overrides", nargs="*", metavar="key=value", help="toolkit config overrides (translated for timm)")
    return p.parse_args(argv)


def check_inputs(ns) -> None:
    for split in ("train", "val"):
        if not (ns.data / split).is_dir():
            raise UserError(f"--data {ns.data}: no {split}/ directory; give an ImageFolder root with train/ and val/")
    if "timm" in ns.trainers and not ns.timm_train.is_file():
        raise UserError(f"--timm-train {ns.timm_train}: no such file; point it at timm's train.py "
                        f"(e.g. ../shared/peers/timm/train.py)")


def main(argv=None) -> int:
    ns = parse_args(argv)
    ns.data, ns.timm_train, ns.out = ns.data.resolve(), ns.timm_train.resolve(), ns.out.resolve()
    try:
        check_inputs(ns)
        translate(compose_config(toolkit_overrides(ns, ns.seeds[0], ns.out / "check"), hydra=False))
    except UserError as e:
        print(f"bench_vs_timm: {e}", file=sys.stderr)
        return 2
    env = {**os.environ, "OMP_NUM_THREADS": str(ns.threads), "MKL_NUM_THREADS": str(ns.threads)}
    load_before = os.getloadavg()
    runs, tr = [], None
    for seed in ns.seeds:
        pair, tr = run_pair(ns, seed, env)
        runs += pair
    result = {"machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                          "omp_threads": ns.threads}, "load_avg_before": load_before,
              "load_avg_after": os.getloadavg(),
              "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(ns).items()},
              "timm_flags": tr.flags, "timm_model": tr.model, "differences": tr.differences,
              "summary": summarize(runs), "runs": runs}
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "bench_vs_timm.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, ns.out / "bench_vs_timm.png", f"MobileNet v1 alpha {ns.alpha} @ {ns.resolution}, {ns.data.name}, "
         f"{ns.epochs} epochs, batch {ns.batch}")
    print_report(result)
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


def print_report(result: dict) -> None:
    print("differences the translation cannot remove:")
    for d in result["differences"]:
        print(f"  - {d}")
    for r in result["runs"]:
        print(f"\n{r['trainer']} seed {r['seed']} (wall {r['wall_s']:.0f} s, CPU {r['cpu_s']:.0f} s):")
        print("  epoch | val top-1 | val top-5 | wall s")
        for e in r["epochs"]:
            print(f"  {e['epoch']:5d} | {e['val_top1']:9.2f} | {e['val_top5']:9.2f} | {e['wall_s']:6.0f}")
    s = result["summary"]
    if "wall_ratio" in s:
        print(f"\nfinal val top-1 mean: toolkit {s['toolkit']['final_val_top1_mean']:.2f} vs timm "
              f"{s['timm']['final_val_top1_mean']:.2f} ({s['top1_gap_points']:+.2f} points); wall time "
              f"toolkit / timm {s['wall_ratio']:.2f}x, CPU time {s['cpu_ratio']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
