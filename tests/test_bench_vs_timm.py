"""scripts/bench_vs_timm.py: the toolkit config -> timm train.py flags, key by key (checked against
train.py's own argument parser where ../shared has it), the width wrapper, and (slow) one epoch of
both trainers on a tiny real folder."""

import importlib.util
import json
import math
import os
import runpy
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SHARED

from mobilenet_train.config import compose
from mobilenet_train.model import build_model

SCRIPTS = REPO / "scripts"
TIMM_TRAIN = SHARED / "peers" / "timm" / "train.py"
IMAGENETTE = SHARED / "data" / "imagenette-mini"


def _load(name):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _load("bench_vs_timm")
wrapper = _load("timm_train_width")

BASE = ["data=imagenet", "data.root=/nowhere", "data.num_classes=10", "model.alpha=0.25", "model.resolution=128",
        "data.batch_size=64", "data.eval_batch_size=50", "data.num_workers=2", "trainer.epochs=8", "seed=3"]


def translated(*overrides):
    return bench.translate(compose([*BASE, *overrides], hydra=False))


def value(flags, name, n=1):
    i = flags.index(name)
    return flags[i + 1] if n == 1 else flags[i + 1:i + 1 + n]


@pytest.fixture(scope="module")
def timm_parser():
    if not TIMM_TRAIN.is_file():
        pytest.skip(f"no timm train.py at {TIMM_TRAIN}")
    return runpy.run_path(str(TIMM_TRAIN), run_name="timm_train")["parser"]


def test_default_recipe_flags():
    t = translated()
    f = t.flags
    assert t.model == "mobilenetv1_025"
    # RMSProp with TF semantics, eps 1.0, rho 0.9; lr 0.045 x 64 / 256 given as the effective lr.
    assert value(f, "--opt") == "rmsproptf" and float(value(f, "--opt-eps")) == 1.0
    assert value(f, "--opt-kwargs") == "alpha=0.9" and float(value(f, "--momentum")) == 0.9
    assert math.isclose(float(value(f, "--lr")), 0.045 * 64 / 256)
    assert float(value(f, "--weight-decay")) == 4e-5 and float(value(f, "--smoothing")) == 0.0
    # Staircase x0.94 every 2 epochs, counted in updates, no warmup.
    assert value(f, "--sched") == "step" and "--sched-on-updates" in f
    assert float(value(f, "--decay-epochs")) == 2.0 and float(value(f, "--decay-rate")) == 0.94
    assert value(f, "--epochs") == "8" and value(f, "--warmup-epochs") == "0" and "--warmup-prefix" not in f
    # Data: crops, flip, no colour jitter, eval crop, normalisation, batches, workers, seed.
    assert [float(x) for x in value(f, "--scale", 2)] == [0.25, 1.0]
    assert [float(x) for x in value(f, "--ratio", 2)] == pytest.approx([3 / 4, 4 / 3])
    assert float(value(f, "--hflip")) == 0.5 and float(value(f, "--color-jitter")) == 0.0
    assert value(f, "--interpolation") == value(f, "--train-interpolation") == "bilinear"
    assert float(value(f, "--crop-pct")) == 0.875
    assert [float(x) for x in value(f, "--mean", 3)] == [0.5] * 3 == [float(x) for x in value(f, "--std", 3)]
    assert value(f, "-b") == "64" and value(f, "-vb") == "50" and value(f, "-j") == "2"
    assert value(f, "--seed") == "3" and "--channels-last" in f and "--amp" not in f
    assert value(f, "--val-split") == "val" and value(f, "--img-size") == "128" and value(f, "--num-classes") == "10"
    assert value(f, "--model-kwargs") == "act_layer=relu" and float(value(f, "--bn-momentum")) == 0.1
    assert any("depthwise" in d for d in t.differences) and any("weight init" in d for d in t.differences)


def test_warmup_is_a_prefix_and_fractions_are_listed():
    f = translated("sched.warmup_epochs=2", "sched.warmup_lr_init=1e-4").flags
    assert value(f, "--epochs") == "6" and value(f, "--warmup-epochs") == "2" and "--warmup-prefix" in f
    assert float(value(f, "--warmup-lr")) == 1e-4
    t = translated("sched.warmup_epochs=0.5")
    assert value(t.flags, "--warmup-epochs") == "0" and any("warmup: 0.5" in d for d in t.differences)


def test_other_optimizers_schedules_and_lr_scaling():
    f = translated("optim=sgd", "optim.nesterov=false", "sched=cosine", "sched.min_lr=1e-5").flags
    assert value(f, "--opt") == "momentum" and math.isclose(float(value(f, "--lr")), 0.1 * 64 / 256)
    assert value(f, "--sched") == "cosine" and float(value(f, "--min-lr")) == 1e-5
    assert value(translated("optim=sgd").flags, "--opt") == "sgd"
    t = translated("optim=adamw")
    assert value(t.flags, "--opt") == "adamw" and math.isclose(float(value(t.flags, "--lr")), 0.001 * 0.5)  # sqrt
    assert [float(b) for b in value(t.flags, "--opt-betas", 2)] == [0.9, 0.999]
    assert not any("depthwise" in d for d in t.differences)  # adamw decays depthwise filters, as timm
    assert math.isclose(float(value(translated("optim.scale_lr=false").flags, "--lr")), 0.045)


def test_model_and_trainer_keys():
    t = translated("model.alpha=1.0", "model.activation=relu6", "model.padding=tf_same", "model.dropout=0.2",
                   "trainer.amp=bf16", "trainer.channels_last=false", "trainer.ema.enabled=true",
                   "trainer.grad_clip=1.0", "optim.label_smoothing=0.1", "optim.decay_depthwise=true")
    f = t.flags
    assert t.model == "mobilenetv1_100" and value(f, "--model-kwargs", 2) == ["act_layer=relu6", "pad_type=same"]
    assert float(value(f, "--drop")) == 0.2 and value(f, "--amp-dtype") == "bfloat16" and "--channels-last" not in f
    assert "--model-ema" in f and float(value(f, "--clip-grad")) == 1.0 and float(value(f, "--smoothing")) == 0.1
    assert any("EMA" in d for d in t.differences) and not any("depthwise" in d for d in t.differences)
    # int(0.35 x C) is not timm's multiple of 8: listed.
    assert any(d.startswith("channels:") for d in translated("model.alpha=0.35").differences)
    assert not any(d.startswith("channels:") for d in translated().differences)


def test_augmentation_keys():
    f = translated("data.auto_augment=rand-m9-mstd0.5", "data.mixup=0.2", "data.cutmix=1.0",
                   "data.random_erasing=0.25", "data.min_crop_area=0.08", "data.interpolation=bicubic").flags
    assert value(f, "--aa") == "rand-m9-mstd0.5" and float(value(f, "--mixup")) == 0.2
    assert float(value(f, "--cutmix")) == 1.0 and float(value(f, "--reprob")) == 0.25
    assert float(value(f, "--scale")) == 0.08 and value(f, "--train-interpolation") == "bicubic"


def test_flags_mean_the_same_to_timm_train(timm_parser):
    """timm's own parser reads the flags back as the toolkit's values (every flag exists, none misread)."""
    t = translated("sched.warmup_epochs=1", "optim.label_smoothing=0.1")
    args = timm_parser.parse_args(["/data", *t.flags])
    assert args.model == "mobilenetv1_025" and args.opt == "rmsproptf" and args.opt_kwargs == {"alpha": 0.9}
    assert math.isclose(args.lr, 0.01125) and args.opt_eps == 1.0 and args.sched_on_updates
    assert args.epochs == 7 and args.warmup_epochs == 1 and args.warmup_prefix and args.sched == "step"
    assert args.scale == [0.25, 1.0] and args.color_jitter == 0.0 and args.crop_pct == 0.875
    assert args.smoothing == 0.1 and args.channels_last and args.seed == 3 and args.workers == 2
    assert args.model_kwargs == {"act_layer": "relu"} and args.mean == [0.5] * 3 and not args.amp


@pytest.mark.parametrize("alpha", [0.25, 0.5])
def test_wrapper_builds_timms_network_at_the_toolkits_width(alpha):
    import timm

    name = wrapper.register_width(alpha)
    theirs = timm.create_model(name, num_classes=10, act_layer="relu")
    ours, _ = build_model(compose(["model.num_classes=10", f"model.alpha={alpha}"], hydra=False).model)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(theirs) == count(ours)
    x = torch.randn(1, 3, 64, 64)
    assert theirs.eval()(x).shape == ours.eval()(x).shape == (1, 10)
    assert wrapper.register_width(1.0) == "mobilenetv1_100"  # timm's own


def test_bad_data_dir_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_vs_timm.py"), "--data", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no train/ directory" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_one_epoch_both_trainers_on_tiny_real_folder(tmp_path):
    if not (IMAGENETTE.is_dir() and TIMM_TRAIN.is_file()):
        pytest.skip("../shared has no imagenette-mini or timm train.py")
    data = tmp_path / "tiny"
    for split, n in (("train", 2), ("val", 1)):  # 30 images: 2 train and 1 val per class
        for cls in sorted((IMAGENETTE / split).iterdir()):
            (data / split / cls.name).mkdir(parents=True)
            for img in sorted(cls.iterdir())[:n]:
                (data / split / cls.name / img.name).symlink_to(img)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "bench_vs_timm.py"), "--data", str(data), "--timm-train",
                           str(TIMM_TRAIN), "--epochs", "1", "--batch", "4", "--workers", "0", "--threads", "1",
                           "--resolution", "64", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench_vs_timm.json").read_text())
    assert [r["trainer"] for r in result["runs"]] == ["toolkit", "timm"]
    for r in result["runs"]:
        assert len(r["epochs"]) == 1 and 0 <= r["final_val_top1"] <= 100 and r["epochs"][0]["wall_s"] > 0
        assert 0 < r["cpu_s"] < 4 * r["wall_s"]
    assert result["timm_model"] == "mobilenetv1_025" and result["differences"]
    assert result["summary"]["wall_ratio"] > 0 and result["summary"]["cpu_ratio"] > 0
    assert (out / "bench_vs_timm.png").stat().st_size > 1000
    assert "differences the translation cannot remove" in proc.stdout


@pytest.mark.parametrize("sched", [["sched.warmup_epochs=1"], ["sched=cosine", "sched.warmup_epochs=2",
                                                               "sched.min_lr=1e-4"]])
def test_timm_schedule_from_the_flags_is_the_toolkits_per_update(timm_parser, sched):
    """The lr of every update: timm's create_scheduler_v2 from the parsed flags == the toolkit's scheduler."""
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    from mobilenet_train.optim import build_scheduler

    cfg = compose([*BASE, *sched], hydra=False)
    args = timm_parser.parse_args(["/data", *bench.translate(cfg).flags])
    steps = 7  # updates per epoch
    ours_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    theirs_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=args.lr)
    ours = build_scheduler(ours_opt, cfg.sched, int(cfg.trainer.epochs), steps)
    theirs, epochs = create_scheduler_v2(theirs_opt, **scheduler_kwargs(args), updates_per_epoch=steps)
    assert epochs == 8 and not theirs.t_in_epochs
    lrs = []
    for update in range(epochs * steps):  # as both loops: step_update after each optimizer step
        ours.step_update(num_updates=update)
        theirs.step_update(num_updates=update)
        lrs.append(ours_opt.param_groups[0]["lr"])
        assert math.isclose(ours_opt.param_groups[0]["lr"], theirs_opt.param_groups[0]["lr"], rel_tol=1e-12), update
    assert max(lrs) == pytest.approx(args.lr) and lrs[0] < args.lr / 2 and lrs[-1] < args.lr  # warmup, then decay


def test_epoch_lines_are_stamped_as_they_appear(tmp_path):
    """run_stamped: each line gets the wall time it appeared at, and the child's CPU seconds are counted."""
    lines = tmp_path / "lines.txt"
    code = ("import time\nfor i in range(3):\n    t = time.process_time()\n"
            "    while time.process_time() - t < 0.3: pass\n"  # burn CPU, then write one line
            f"    open({str(lines)!r}, 'a').write(f'{{i}}\\n')\n")
    read = lambda: lines.read_text().splitlines() if lines.exists() else []  # noqa: E731
    rows, stamps, wall, rc, cpu = bench.run_stamped([sys.executable, "-c", code], dict(os.environ),
                                                    tmp_path / "log.txt", read)
    assert rc == 0 and rows == ["0", "1", "2"] and len(stamps) == 3
    assert stamps[0] < stamps[1] < stamps[2] <= wall
    assert 0.9 <= cpu <= wall + 0.5
