"""`mobilenet-bench latency`: inference latency on this CPU.

For one model (a checkpoint, or an architecture from model.* overrides) or the whole alpha x
resolution grid, times batch 1 and batch N through every backend and precision:

    pytorch   eager fp32 (the checkpoint's model as trained: BN unfolded, eval mode)
    compile   torch.compile of the BN-folded model (inductor)
    onnx      ONNX Runtime fp32 and int8 (QDQ)        } the files mobilenet-export writes,
    executorch ExecuTorch + XNNPACK fp32 and int8 (PT2E) } checked against PyTorch the same way
    tflite    LiteRT + XNNPACK fp32 and int8 (PT2E)     } (TF-Lite: batch 1, called per image)

with each thread count asked for. Calls are interleaved (one call of each backend in turn, `runs`
rounds after `warmup` rounds), so a change of load on a shared machine hits every backend alike
and the ratios to eager PyTorch stay meaningful. Per setting: median, p10 and p90 latency in ms
and the throughput at the median. Written atomically to latency.json (default: the checkpoint's
run dir, else the current dir) with the CPU model, the number of logical CPUs and the load
average; `mobilenet-report` shows them next to accuracy.

An architecture without a checkpoint gets random weights whose BatchNorm statistics are
measured on generated images, so activations (and int8 ranges) are realistic.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write_json, load_checkpoint, model_from_checkpoint, model_payload, save_checkpoint
from ..complexity import measure_complexity
from ..config import compose, resolved
from ..config.schema import LatencyOptions
from ..errors import UserError
from ..model import MobileNetV1, ModelArgs
from . import formats
from .export import export
from .inputs import generated_images
from .prepare import deploy_model
from .verify import INT8_MIN_COSINE

log = logging.getLogger("mobilenet_train")

LATENCY_FORMAT = "mobilenet-bench-latency"
# (name, precision): the backends in the order they are timed within a round.
BACKENDS = [("pytorch", "fp32"), ("compile", "fp32"), ("onnx", "fp32"), ("onnx", "int8"),
            ("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
EXPORTED = ("onnx", "executorch", "tflite")  # the backends that run a file mobilenet-export writes
# Random weights have no classes to agree on: their int8 export is only held to point roughly the same way.
RANDOM_MIN_COSINE = 0.5
GRID_ALPHAS = (1.0, 0.75, 0.5, 0.25)
GRID_RESOLUTIONS = (224, 192, 160, 128)


# ----------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for name in ("torch", "onnxruntime", "executorch", "litert-torch", "ai-edge-litert"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------- options


def parse_threads(text) -> list[int]:
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if part == "all":
            values.append(os.cpu_count() or 1)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise UserError(f"threads={text} is not a list of thread counts (e.g. threads=1,all or threads=1,2)")
    return sorted(set(values))


def parse_backends(text) -> list[tuple[str, str]]:
    if text == "all":
        # Every backend whose runtime is installed (the others are named, not silently dropped).
        missing = {fmt for fmt in EXPORTED if formats.missing_packages(fmt)}
        if missing:
            log.warning("backends=all: skipping %s (runtime not installed: pip install 'mobilenet-train[deploy]')",
                        ", ".join(sorted(missing)))
        return [b for b in BACKENDS if b[0] not in missing]
    names = {f"{b}-{p}": (b, p) for b, p in BACKENDS} | {"pytorch": ("pytorch", "fp32"), "compile": ("compile", "fp32"),
                                                         **{fmt: (fmt, "fp32") for fmt in EXPORTED}}
    chosen = []
    for part in str(text).split(","):
        if part.strip() not in names:
            raise UserError(f"backends={text}: '{part}' is unknown; use all or some of {', '.join(names)}")
        chosen.append(names[part.strip()])
    return [b for b in BACKENDS if b in chosen]


def check_options(opts: LatencyOptions) -> None:
    """Every option, before any work."""
    for key in ("batch", "runs", "warmup", "num_calibration"):
        value = getattr(opts, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "warmup" else 1):
            raise UserError(f"{key}={value} must be a positive integer")
    parse_threads(opts.threads), parse_backends(opts.backends)


# ----------------------------------------------------------------------------- models


def random_checkpoint(overrides: list[str], path: Path) -> Path:
    """A checkpoint of the architecture `overrides` describe, random weights with measured BN statistics."""
    bad = [o for o in overrides if not o.lstrip("+").startswith(("model.", "data."))]
    if bad:
        raise UserError(f"'{bad[0]}' is not a model.* or data.* override (or a checkpoint path that exists)")
    config = resolved(compose(list(overrides)))
    args = ModelArgs.from_config(config["model"])
    torch.manual_seed(0)  # the same weights every time
    model = MobileNetV1(args)
    _measure_batchnorm(model, {"model_args": args.to_dict(), "config": config})
    save_checkpoint(path, model_payload(model, args, config, None, measure_complexity(model, args.resolution)))
    return path


def _measure_batchnorm(model: torch.nn.Module, stub: dict) -> None:
    """BatchNorm statistics of generated images, so activations (and int8 ranges) are realistic."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(generated_images(16, stub, seed=100 + seed))
    model.eval()


# ----------------------------------------------------------------------------- timing


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def time_interleaved(fns: dict, x: np.ndarray, runs: int, warmup: int) -> dict:
    """{key: [seconds per call]}: one call of every fn per round, `warmup` rounds dropped."""
    times = {k: [] for k in fns}
    xt = torch.from_numpy(x)
    for r in range(warmup + runs):
        for key, (fn, takes_tensor) in fns.items():
            arg = xt if takes_tensor else x
            start = time.perf_counter()
            fn(arg)
            elapsed = time.perf_counter() - start
            if r >= warmup:
                times[key].append(elapsed)
    return times


def _export_files(ckpt_path: Path, backends: list, opts: LatencyOptions, workdir: Path, max_batch: int,
                  random_weights: bool) -> dict:
    """{(format, precision): file} of every exported backend, written and checked by mobilenet-export."""
    files = {}
    for fmt, precision in backends:
        if fmt in EXPORTED:
            quantize = "int8" if precision == "int8" else None
            out = workdir / f"{ckpt_path.stem}.{precision}{formats.FORMATS[fmt]}"
            log.info("exporting %s %s", fmt, precision)
            export(str(ckpt_path), fmt, quantize, out=str(out), calibration=opts.calibration,
                   num_calibration=opts.num_calibration, num_verify=2, max_batch=max_batch,
                   min_cosine=RANDOM_MIN_COSINE if random_weights else INT8_MIN_COSINE)
            files[(fmt, precision)] = out
    return files


def _callables(backends: list, eager, folded, files: dict, threads: int) -> dict:
    """{(backend, precision): (fn, takes a tensor)} at `threads` threads."""
    fns = {}
    for fmt, precision in backends:
        if fmt == "pytorch":
            fns[(fmt, precision)] = (torch.inference_mode()(eager), True)
        elif fmt == "compile":
            fns[(fmt, precision)] = (torch.inference_mode()(torch.compile(folded)), True)
        else:
            fns[(fmt, precision)] = (formats.runner(fmt, files[(fmt, precision)], threads), False)
    if any(b == "executorch" for b, _ in backends):
        formats.load("executorch").set_threads(threads)
    return fns


def _rows(times: dict, threads: int, batch: int) -> list[dict]:
    eager_median = statistics.median(times[("pytorch", "fp32")]) if ("pytorch", "fp32") in times else None
    rows = []
    for (fmt, precision), t in times.items():
        median = statistics.median(t)
        rows.append({
            "backend": fmt, "precision": precision, "threads": threads, "batch": batch,
            "median_ms": 1e3 * median, "p10_ms": 1e3 * _percentile(t, 10), "p90_ms": 1e3 * _percentile(t, 90),
            "images_per_sec": batch / median, "runs": len(t),
            "ratio_to_eager": median / eager_median if eager_median else None,
        })
    return rows


def bench_model(ckpt_path: Path, opts: LatencyOptions, workdir: Path, random_weights: bool = False) -> dict:
    """Latency of one checkpoint's model through every chosen backend, precision, thread count and batch."""
    ckpt = load_checkpoint(ckpt_path)
    backends = parse_backends(opts.backends)
    for fmt in {b for b, _ in backends if b in EXPORTED}:
        formats.require(fmt)
    batches = sorted({1, int(opts.batch)})
    eager, args = model_from_checkpoint(ckpt)
    eager.eval()
    folded = deploy_model(ckpt)
    files = _export_files(ckpt_path, backends, opts, workdir, max(batches), random_weights)
    results = []
    for threads in parse_threads(opts.threads):
        torch.set_num_threads(threads)
        fns = _callables(backends, eager, folded, files, threads)
        for batch in batches:
            x = generated_images(batch, ckpt, seed=7).numpy()
            log.info("timing %s threads=%d batch=%d", ckpt_path.name, threads, batch)
            results += _rows(time_interleaved(fns, x, int(opts.runs), int(opts.warmup)), threads, batch)
    torch.set_num_threads(os.cpu_count() or 1)
    metrics, complexity = ckpt.get("metrics") or {}, ckpt.get("complexity") or {}
    return {
        "name": ckpt_path.stem, "checkpoint": str(ckpt_path.resolve()),
        "variant": args.variant, "alpha": args.alpha, "resolution": args.resolution, "num_classes": args.num_classes,
        "params": complexity.get("params"), "mult_adds": complexity.get("mult_adds"),
        "top1": metrics.get("val_top1"), "results": results,
    }


# ----------------------------------------------------------------------------- the command


def default_out(ckpts: list[Path]) -> Path:
    """latency.json in the run dir of the first checkpoint, else in the current dir."""
    if not ckpts:
        return Path("latency.json")
    first = ckpts[0].resolve()
    return (first.parent.parent if first.parent.name == "checkpoints" else first.parent) / "latency.json"


def run_latency(ckpts: list[Path], overrides: list[str], grid: bool, opts: LatencyOptions) -> tuple[dict, Path]:
    """Time the checkpoints, or the architecture of `overrides` (every grid point with `grid`), and
    write latency.json."""
    check_options(opts)
    if ckpts and (overrides or grid):
        raise UserError("give either checkpoints or an architecture (model.* overrides / --grid), not both")
    out = Path(opts.out) if opts.out else default_out(ckpts)
    if out.is_dir():
        raise UserError(f"out={out} is a directory: give a file name, e.g. {out / 'latency.json'}")
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="mobilenet-bench-") as tmp:
        models = _bench_all(list(ckpts), overrides, grid, opts, Path(tmp))
    report = {
        "format": LATENCY_FORMAT, "version": 1, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "versions": versions(),
        "settings": {k: getattr(opts, k)
                     for k in ("batch", "runs", "warmup", "threads", "backends", "num_calibration")},
        "threads": parse_threads(opts.threads),
        "models": models,
    }
    atomic_write_json(out, report)
    return report, out


def _bench_all(ckpts: list[Path], overrides: list[str], grid: bool, opts: LatencyOptions, workdir: Path) -> list[dict]:
    if not ckpts:
        archs = [[*overrides, f"model.alpha={a}", f"model.resolution={r}"] for a in GRID_ALPHAS
                 for r in GRID_RESOLUTIONS] if grid else [overrides]
        ckpts = [random_checkpoint(arch, workdir / f"random{i}.pt") for i, arch in enumerate(archs)]
    models = []
    for path in map(Path, ckpts):
        random_weights = path.parent == workdir
        entry = bench_model(path, opts, workdir, random_weights=random_weights)
        if random_weights:
            entry["checkpoint"], entry["name"] = None, f"alpha{entry['alpha']}_res{entry['resolution']}"
            entry["weights"] = "random (BN statistics measured on generated images)"
        else:
            entry["weights"] = "checkpoint"
        models.append(entry)
    return models


def latency_table(report: dict) -> list[str]:
    lines = ["| model | backend | precision | threads | batch | median ms | p10 ms | p90 ms | images/s | × eager |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        for r in m["results"]:
            ratio = f"{r['ratio_to_eager']:.2f}" if r["ratio_to_eager"] else "–"
            lines.append(f"| {m['name']} (α {m['alpha']}, {m['resolution']}) | {r['backend']} | {r['precision']} | "
                         f"{r['threads']} | {r['batch']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | "
                         f"{r['p90_ms']:.2f} | {r['images_per_sec']:.1f} | {ratio} |")
    return lines
