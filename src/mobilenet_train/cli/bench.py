"""`mobilenet-bench latency [CKPT | key=value ...] [--grid]` and `mobilenet-bench profile MODEL.onnx`:
inference latency on this CPU (the library side is mobilenet_train.deploy.latency and .profile)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .. import config
from ..config.help import options_help
from ..config.schema import LatencyOptions, ProfileOptions
from ..deploy.latency import GRID_ALPHAS, GRID_RESOLUTIONS, latency_table, run_latency
from ..deploy.profile import USAGE, check_file, onnx_profile
from ..errors import UserError, fail

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-bench"


def latency_options(items: list[str]) -> tuple[LatencyOptions, list[Path], list[str]]:
    """CKPT | key=value items -> the options, the checkpoints and the model.*/data.* overrides."""
    ckpts = [Path(i) for i in items if "=" not in i]
    for path in ckpts:
        if not path.is_file():
            raise UserError(f"{path} is neither a checkpoint file nor a key=value option")
    opts, overrides = config.parse_options(LatencyOptions, [i for i in items if "=" in i], others=True)
    return opts, ckpts, overrides


def profile_options(items: list[str]) -> tuple[Path, ProfileOptions]:
    """MODEL.onnx key=value items -> the file and the options."""
    files = [i for i in items if "=" not in i]
    if len(files) != 1:
        raise UserError(USAGE)
    opts, _ = config.parse_options(ProfileOptions, [i for i in items if "=" in i])
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
    print(f"cpu         {m['cpu']}, {m['logical_cpus']} logical CPUs, load {m['loadavg_before']} -> "
          f"{m['loadavg_after']}")
    print("\n".join(latency_table(report)))
    print(f"written     {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inference latency of MobileNet v1 on this CPU: eager PyTorch, torch.compile, ONNX Runtime "
                    "fp32/int8, ExecuTorch (XNNPACK) fp32/int8 and LiteRT (TF-Lite) fp32/int8, 1 thread and all "
                    "threads, batch 1 and batch N.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples: mobilenet-bench latency outputs/run/checkpoints/best.pt; "
               "mobilenet-bench latency model.alpha=0.5 model.resolution=160; mobilenet-bench latency --grid runs=20\n"
               "latency " + options_help("mobilenet-bench latency")
               + "\nprofile " + options_help("mobilenet-bench profile"),
    )
    parser.add_argument("command", choices=["latency", "profile"],
                        help="latency: time the backends; profile MODEL.onnx [threads=N runs=N batch=N]: "
                             "ONNX Runtime's per-operator profile of an exported file")
    parser.add_argument("items", nargs="*", metavar="CKPT|key=value")
    parser.add_argument("--grid", action="store_true",
                        help=f"every alpha {GRID_ALPHAS} x resolution {GRID_RESOLUTIONS}")
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
