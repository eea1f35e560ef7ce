"""`mobilenet-bench latency [CKPT | key=value ...] [--grid]` and `mobilenet-bench profile MODEL.onnx`:
inference latency on this CPU (the library side is mobilenet_train.deploy.latency and .profile)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields
from pathlib import Path

from ..deploy.latency import GRID_ALPHAS, GRID_RESOLUTIONS, LatencyOptions, latency_table, run_latency
from ..deploy.profile import USAGE, ProfileOptions, check_file, onnx_profile
from ..errors import UserError, fail

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-bench"
INTEGER_OPTIONS = ("batch", "runs", "warmup", "num_calibration")


def latency_options(items: list[str]) -> tuple[LatencyOptions, list[Path], list[str]]:
    """CKPT | key=value items -> the options, the checkpoints and the model.*/data.* overrides."""
    opts, ckpts, overrides = LatencyOptions(), [], []
    names = {f.name for f in fields(LatencyOptions)}
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key in INTEGER_OPTIONS:
            if not value.isdigit() or int(value) < (0 if key == "warmup" else 1):
                raise UserError(f"{key}={value} must be a positive integer")
            setattr(opts, key, int(value))
        elif sep and key in names:
            setattr(opts, key, value)
        elif sep:
            overrides.append(item)
        elif Path(item).is_file():
            ckpts.append(Path(item))
        else:
            raise UserError(f"{item} is neither a checkpoint file nor a key=value option")
    return opts, ckpts, overrides


def profile_options(items: list[str]) -> tuple[Path, ProfileOptions]:
    """MODEL.onnx key=value items -> the file and the options."""
    files = [i for i in items if "=" not in i]
    if len(files) != 1:
        raise UserError(USAGE)
    opts = ProfileOptions()
    for key, value in (i.split("=", 1) for i in items if "=" in i):
        if key not in {f.name for f in fields(ProfileOptions)} or not value.isdigit():
            raise UserError(f"{key}={value}: profile takes threads=, runs= and batch=, integers")
        setattr(opts, key, int(value))
    return check_file(files[0]), opts


def profile(items: list[str]) -> None:
    path, opts = profile_options(items)
    p = onnx_profile(path, opts.threads, opts.runs, opts.batch)
    print(f"{p['model']}: batch {opts.batch}, {opts.threads} thread(s), median run {p['run_median_ms']:.2f} ms "
          f"over {opts.runs} runs")
    print("| operator | ms per run | share of node time | nodes |\n|---|---:|---:|---:|")
    for r in p["ops"]:
        print(f"| {r['op']} | {r['ms_per_run']:.3f} | {100 * r['share']:.1f}% | {r['nodes_per_run']:.0f} |")
    for r in p["conv_kinds"]:
        print(f"| of which {r['kind']} | {r['ms_per_run']:.3f} | {100 * r['share']:.1f}% | |")


def latency(items: list[str], grid: bool) -> None:
    opts, ckpts, overrides = latency_options(items)
    report, out = run_latency(ckpts, overrides, grid, opts)
    m = report["machine"]
    print(f"cpu         {m['cpu']}, {m['logical_cpus']} logical CPUs, load {m['loadavg_before']} -> {m['loadavg_after']}")
    print("\n".join(latency_table(report)))
    print(f"written     {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inference latency of MobileNet v1 on this CPU: eager PyTorch, torch.compile, ONNX Runtime "
                    "fp32/int8, ExecuTorch (XNNPACK) fp32/int8 and LiteRT (TF-Lite) fp32/int8, 1 thread and all "
                    "threads, batch 1 and batch N.",
        epilog="latency options: batch=N (8), runs=N (50), warmup=N (10), threads=1,all, backends=all|pytorch,compile,"
               "onnx-fp32,onnx-int8,executorch-fp32,executorch-int8,tflite-fp32,tflite-int8, out=PATH (latency.json), "
               "calibration=DIR, "
               "num_calibration=N. Examples: mobilenet-bench latency outputs/run/checkpoints/best.pt; "
               "mobilenet-bench latency model.alpha=0.5 model.resolution=160; mobilenet-bench latency --grid runs=20",
    )
    parser.add_argument("command", choices=["latency", "profile"],
                        help="latency: time the backends; profile MODEL.onnx [threads=N runs=N batch=N]: "
                             "ONNX Runtime's per-operator profile of an exported file")
    parser.add_argument("items", nargs="*", metavar="CKPT|key=value")
    parser.add_argument("--grid", action="store_true", help=f"every alpha {GRID_ALPHAS} x resolution {GRID_RESOLUTIONS}")
    ns = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    try:
        if ns.command == "profile":
            profile(ns.items)
        else:
            latency(ns.items, ns.grid)
    except UserError as e:
        fail(PROG, e)
