"""`mobilenet-bench latency [CKPT | key=value ...] [--grid]`: inference latency on this CPU.

For one model (a checkpoint, or an architecture from model.* overrides) or the whole alpha x
resolution grid, times batch 1 and batch N through every backend and precision:

    pytorch   eager fp32 (the checkpoint's model as trained: BN unfolded, eval mode)
    compile   torch.compile of the BN-folded model (inductor)
    onnx      ONNX Runtime fp32 and int8 (QDQ)        } the files mobilenet-export writes,
    executorch ExecuTorch + XNNPACK fp32 and int8 (PT2E) } checked against PyTorch the same way
    tflite    LiteRT + XNNPACK fp32 and int8 (PT2E)     } (TF-Lite: batch 1, called per image)

with 1 thread and with all threads. Calls are interleaved (one call of each backend in turn,
`runs` rounds after `warmup` rounds), so a change of load on a shared machine hits every
backend alike and the ratios to eager PyTorch stay meaningful. Per setting: median, p10 and
p90 latency in ms and the throughput at the median. Written atomically to latency.json
(default: the checkpoint's run dir, else the current dir) with the CPU model, the number of
logical CPUs and the load average; `mobilenet-report` shows them next to accuracy.

An architecture without a checkpoint gets random weights whose BatchNorm statistics are
measured on generated images, so activations (and int8 ranges) are realistic.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .errors import UserError, fail

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-bench"
LATENCY_FORMAT = "mobilenet-bench-latency"
# (name, precision): the backends in the order they are timed within a round.
BACKENDS = [("pytorch", "fp32"), ("compile", "fp32"), ("onnx", "fp32"), ("onnx", "int8"),
            ("executorch", "fp32"), ("executorch", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
EXPORTED = ("onnx", "executorch", "tflite")  # the backends that run a file mobilenet-export writes
# Random weights have no classes to agree on: their int8 export is only held to point roughly the same way.
RANDOM_MIN_COSINE = 0.5
GRID_ALPHAS = (1.0, 0.75, 0.5, 0.25)
GRID_RESOLUTIONS = (224, 192, 160, 128)
OPTIONS = {"batch": 8, "runs": 50, "warmup": 10, "threads": "1,all", "backends": "all", "out": None,
           "calibration": None, "num_calibration": 32}


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
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "onnxruntime", "executorch", "litert-torch", "ai-edge-litert"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ----------------------------------------------------------------------------- models


def random_checkpoint(overrides: list[str], path: Path) -> Path:
    """A checkpoint of the architecture `overrides` describe, random weights with measured BN statistics."""
    from omegaconf import OmegaConf

    from .checkpoint import save_checkpoint
    from .cli import compose_config
    from .complexity import measure_complexity
    from .export import generated_images
    from .model import ModelArgs, MobileNetV1

    bad = [o for o in overrides if not o.lstrip("+").startswith(("model.", "data."))]
    if bad:
        raise UserError(f"'{bad[0]}' is not a model.* or data.* override (or a checkpoint path that exists)")
    cfg = compose_config(list(overrides))
    config = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    args = ModelArgs.from_config(config["model"])
    torch.manual_seed(0)  # the same weights every time
    model = MobileNetV1(args)
    stub = {"model_args": args.to_dict(), "config": config}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(generated_images(16, stub, seed=100 + seed))
    model.eval()
    save_checkpoint(path, {"model": model.state_dict(), "model_args": args.to_dict(), "config": config,
                           "classes": None, "complexity": measure_complexity(model, args.resolution),
                           "metrics": {}, "epoch": 0, "step": 0})
    return path


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


def _parse_threads(text) -> list[int]:
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


def _parse_backends(text) -> list[tuple[str, str]]:
    if text == "all":
        # Every backend whose runtime is installed (the others are named, not silently dropped).
        from .export import missing_packages

        missing = {fmt for fmt in EXPORTED if missing_packages(fmt)}
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


def bench_model(ckpt_path: Path, opts: dict, workdir: Path, random_weights: bool = False) -> dict:
    """Latency of one checkpoint's model through every chosen backend, precision, thread count and batch."""
    from .checkpoint import load_checkpoint
    from .engine import model_from_checkpoint
    from .export import FORMATS, INT8_MIN_COSINE, deploy_model, export, generated_images, require, runner, set_executorch_threads

    ckpt = load_checkpoint(ckpt_path)
    backends = _parse_backends(opts["backends"])
    for fmt in {b for b, _ in backends if b in EXPORTED}:
        require(fmt)
    batches = sorted({1, int(opts["batch"])})
    threads_list = _parse_threads(opts["threads"])
    eager, args = model_from_checkpoint(ckpt)
    eager.eval()
    folded = deploy_model(ckpt)
    files = {}
    for fmt, precision in backends:
        if fmt in EXPORTED:
            quantize = "int8" if precision == "int8" else None
            out = workdir / f"{ckpt_path.stem}.{precision}{FORMATS[fmt]}"
            log.info("exporting %s %s", fmt, precision)
            export(str(ckpt_path), fmt, quantize, out=str(out), calibration=opts["calibration"],
                   num_calibration=int(opts["num_calibration"]), num_verify=2, max_batch=max(batches),
                   min_cosine=RANDOM_MIN_COSINE if random_weights else INT8_MIN_COSINE)
            files[(fmt, precision)] = out
    results = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        fns = {}
        for fmt, precision in backends:
            if fmt == "pytorch":
                fns[(fmt, precision)] = (torch.inference_mode()(eager), True)
            elif fmt == "compile":
                compiled = torch.compile(folded)
                fns[(fmt, precision)] = (torch.inference_mode()(compiled), True)
            else:
                fns[(fmt, precision)] = (runner(fmt, files[(fmt, precision)], threads), False)
        if any(b == "executorch" for b, _ in backends):
            set_executorch_threads(threads)
        for batch in batches:
            x = generated_images(batch, ckpt, seed=7).numpy()
            log.info("timing %s threads=%d batch=%d", ckpt_path.name, threads, batch)
            times = time_interleaved(fns, x, int(opts["runs"]), int(opts["warmup"]))
            eager_median = statistics.median(times[("pytorch", "fp32")]) if ("pytorch", "fp32") in times else None
            for (fmt, precision), t in times.items():
                median = statistics.median(t)
                results.append({
                    "backend": fmt, "precision": precision, "threads": threads, "batch": batch,
                    "median_ms": 1e3 * median, "p10_ms": 1e3 * _percentile(t, 10), "p90_ms": 1e3 * _percentile(t, 90),
                    "images_per_sec": batch / median, "runs": len(t),
                    "ratio_to_eager": median / eager_median if eager_median else None,
                })
    torch.set_num_threads(os.cpu_count() or 1)
    metrics = ckpt.get("metrics") or {}
    return {
        "name": ckpt_path.stem, "checkpoint": str(ckpt_path.resolve()),
        "variant": args.variant, "alpha": args.alpha, "resolution": args.resolution, "num_classes": args.num_classes,
        "params": (ckpt.get("complexity") or {}).get("params"), "mult_adds": (ckpt.get("complexity") or {}).get("mult_adds"),
        "top1": metrics.get("val_top1"), "results": results,
    }


def run_latency(items: list[str], grid: bool) -> tuple[dict, Path]:
    from .checkpoint import atomic_write_json

    opts = dict(OPTIONS)
    ckpts, overrides = [], []
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key in OPTIONS:
            opts[key] = value
        elif sep:
            overrides.append(item)
        elif Path(item).is_file():
            ckpts.append(Path(item))
        else:
            raise UserError(f"{item} is neither a checkpoint file nor a key=value option")
    for key in ("batch", "runs", "warmup", "num_calibration"):
        try:
            opts[key] = int(opts[key])
            assert opts[key] >= (0 if key == "warmup" else 1)
        except (ValueError, AssertionError):
            raise UserError(f"{key}={opts[key]} must be a positive integer") from None
    _parse_threads(opts["threads"]), _parse_backends(opts["backends"])  # fail before any work
    if ckpts and (overrides or grid):
        raise UserError("give either checkpoints or an architecture (model.* overrides / --grid), not both")
    out = Path(opts["out"]) if opts["out"] else None
    if out is None:
        if ckpts:
            first = ckpts[0].resolve()
            out = (first.parent.parent if first.parent.name == "checkpoints" else first.parent) / "latency.json"
        else:
            out = Path("latency.json")
    if out.is_dir():
        raise UserError(f"out={out} is a directory: give a file name, e.g. {out / 'latency.json'}")
    load_before = loadavg()
    models = []
    with tempfile.TemporaryDirectory(prefix="mobilenet-bench-") as tmp:
        workdir = Path(tmp)
        if not ckpts:
            archs = [[*overrides, f"model.alpha={a}", f"model.resolution={r}"] for a in GRID_ALPHAS
                     for r in GRID_RESOLUTIONS] if grid else [overrides]
            for i, arch in enumerate(archs):
                ckpts.append(random_checkpoint(arch, workdir / f"random{i}.pt"))
        for path in ckpts:
            entry = bench_model(Path(path), opts, workdir, random_weights=Path(path).parent == workdir)
            if Path(path).parent == workdir:
                entry["checkpoint"], entry["name"] = None, f"alpha{entry['alpha']}_res{entry['resolution']}"
                entry["weights"] = "random (BN statistics measured on generated images)"
            else:
                entry["weights"] = "checkpoint"
            models.append(entry)
    report = {
        "format": LATENCY_FORMAT, "version": 1, "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "versions": versions(),
        "settings": {k: opts[k] for k in ("batch", "runs", "warmup", "threads", "backends", "num_calibration")},
        "threads": _parse_threads(opts["threads"]),
        "models": models,
    }
    atomic_write_json(out, report)
    return report, out


def onnx_profile(path: Path, threads: int = 1, runs: int = 50, batch: int = 1) -> dict:
    """Where an ONNX model's time goes in ONNX Runtime: per operator type, ms per run and share of the
    node time (ONNX Runtime's own profiler; the first runs are warm-up and not counted)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="mobilenet-profile-") as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal((batch, *inp.shape[1:])).astype(np.float32)
        warmup = 5
        for _ in range(warmup + runs):
            session.run(None, {inp.name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs_seen[warmup]["ts"] if len(runs_seen) > warmup else 0
    by_op: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            op = e.get("args", {}).get("op_name", "?")
            by_op.setdefault(op, [0.0, 0])
            by_op[op][0] += e["dur"] / 1e3
            by_op[op][1] += 1
    total = sum(v[0] for v in by_op.values()) or 1.0
    wall = [e["dur"] / 1e3 for e in runs_seen[warmup:]]
    ops = sorted(({"op": op, "ms_per_run": ms / runs, "share": ms / total, "nodes_per_run": n / runs}
                  for op, (ms, n) in by_op.items()), key=lambda r: -r["ms_per_run"])
    # MobileNet v1's convs run in order stem, then (depthwise, pointwise) x 13: split the conv time so.
    convs = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                    and e["ts"] >= start and "Conv" in e.get("args", {}).get("op_name", "")), key=lambda e: e["ts"])
    per_run = len(convs) // runs if runs else 0
    kinds: dict[str, float] = {}
    if per_run and per_run % 2 == 1:
        for i, e in enumerate(convs):
            k = i % per_run
            kind = "stem 3x3 conv" if k == 0 else ("depthwise 3x3" if k % 2 else "pointwise 1x1")
            kinds[kind] = kinds.get(kind, 0.0) + e["dur"] / 1e3 / runs
    return {"model": str(path), "threads": threads, "batch": batch, "runs": runs,
            "run_median_ms": statistics.median(wall) if wall else None, "ops": ops,
            "conv_kinds": [{"kind": k, "ms_per_run": v, "share": v * runs / total} for k, v in kinds.items()]}


def latency_table(report: dict) -> list[str]:
    lines = ["| model | backend | precision | threads | batch | median ms | p10 ms | p90 ms | images/s | × eager |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        for r in m["results"]:
            ratio = f"{r['ratio_to_eager']:.2f}" if r["ratio_to_eager"] else "–"
            lines.append(f"| {m['name']} (α {m['alpha']}, {m['resolution']}) | {r['backend']} | {r['precision']} | "
                         f"{r['threads']} | {r['batch']} | {r['median_ms']:.2f} | {r['p10_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['images_per_sec']:.1f} | {ratio} |")
    return lines


def bench_cli(argv: list[str] | None = None) -> None:
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
            return _profile_cli(ns.items)
        report, out = run_latency(ns.items, ns.grid)
    except UserError as e:
        fail(PROG, e)
    m = report["machine"]
    print(f"cpu         {m['cpu']}, {m['logical_cpus']} logical CPUs, load {m['loadavg_before']} -> {m['loadavg_after']}")
    print("\n".join(latency_table(report)))
    print(f"written     {out}")


def _profile_cli(items: list[str]) -> None:
    from .export import require

    files = [i for i in items if "=" not in i]
    opts = {"threads": "1", "runs": "50", "batch": "1", **dict(i.split("=", 1) for i in items if "=" in i)}
    if len(files) != 1 or not files[0].endswith(".onnx") or not Path(files[0]).is_file():
        raise UserError("profile takes one exported .onnx file (mobilenet-export CKPT --format onnx), e.g. "
                        "mobilenet-bench profile best.onnx threads=1")
    require("onnx")
    try:
        threads, runs, batch = (int(opts[k]) for k in ("threads", "runs", "batch"))
    except ValueError:
        raise UserError("threads=, runs= and batch= take integers") from None
    p = onnx_profile(Path(files[0]), threads, runs, batch)
    print(f"{p['model']}: batch {batch}, {threads} thread(s), median run {p['run_median_ms']:.2f} ms over {runs} runs")
    print("| operator | ms per run | share of node time | nodes |\n|---|---:|---:|---:|")
    for r in p["ops"]:
        print(f"| {r['op']} | {r['ms_per_run']:.3f} | {100 * r['share']:.1f}% | {r['nodes_per_run']:.0f} |")
    for r in p["conv_kinds"]:
        print(f"| of which {r['kind']} | {r['ms_per_run']:.3f} | {100 * r['share']:.1f}% | |")


if __name__ == "__main__":
    bench_cli(sys.argv[1:])
