"""fp32 vs post-training int8 vs QAT int8 of one float checkpoint, each file scored in its own runtime.

Runs the toolkit's own commands, as a user would, into --out:
  1. mobilenet-eval CKPT                                  -> fp32.eval.json
  2. mobilenet-export CKPT --format F --quantize int8     -> ptq.int8.F, scored by mobilenet-eval
  3. mobilenet-train +experiment=qat model.init=CKPT      -> qat_run/ (QAT, the float model as teacher)
     mobilenet-export qat_run/checkpoints/last.pt         -> qat.int8.F, scored by mobilenet-eval
  4. --google FILE.tflite (Google's own 8-bit file)       -> scored by mobilenet-eval
  5. batch-1 latency of every int8 file in its runtime (median of --runs calls, --threads threads)
and prints one table. Every data key (data.root=..., data.train_split=...) goes to all commands.

Usage:
    python scripts/bench_qat.py v1_0.75_224.pt --out /tmp/qat_bench --epochs 1 \\
        data.root=../shared/data/imagenet-samples data.train_split=val data.num_workers=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "executorch": ".pte"}


def run_command(*args: str) -> None:
    print("$", " ".join(args), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)


def latency_ms(fmt: str, path: Path, threads: int, runs: int) -> float:
    """Median batch-1 latency of the file in its runtime, as mobilenet-eval runs it (input quantisation and, for
    Google's NHWC files, the transposition included)."""
    import torch

    from mobilenet_train.deploy.formats import runner
    from mobilenet_train.deploy.score import RuntimeModel, describe

    info = describe(path, fmt)
    size = int(info["meta"]["model_args"]["resolution"])
    model = RuntimeModel(runner(fmt, path, threads), info["drop_background"], info["nhwc"], info["probabilities"])
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    for _ in range(5):
        model(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def input_of(checkpoint: Path) -> list[str]:
    """The float checkpoint's input size and eval preprocessing, which QAT must keep (finetune.py)."""
    import torch

    from mobilenet_train.finetune import init_input

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return [f"{k}={v}" for k, v in init_input(ckpt).items()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Usage:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="the float checkpoint (trained or mobilenet-import'ed)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--format", choices=tuple(SUFFIX), default="tflite")
    p.add_argument("--epochs", type=int, default=1, help="QAT epochs")
    p.add_argument("--num-calibration", type=int, default=100, help="PTQ calibration images")
    p.add_argument("--google", type=Path, default=None, help="Google's own 8-bit .tflite of the same model")
    p.add_argument("--runs", type=int, default=100, help="latency: timed calls")
    p.add_argument("--threads", type=int, default=1, help="latency: runtime threads")
    p.add_argument("--qat-overrides", nargs="*", default=[], help="extra keys for the QAT run only")
    p.add_argument("--reuse", action="store_true", help="keep what an earlier run left in --out (files, the QAT run)")
    p.add_argument("data", nargs="*", metavar="data.key=value")
    ns = p.parse_intermixed_args(argv)
    out, fmt, data = ns.out, ns.format, list(ns.data)
    out.mkdir(parents=True, exist_ok=True)
    root = next((d.partition("=")[2] for d in data if d.startswith("data.root=")), None)
    evals = {}

    def run(*args: str, makes: Path) -> None:
        if not (ns.reuse and makes.exists()):
            run_command(*args)

    run("mobilenet-eval", str(ns.checkpoint), *data, f"out={out / 'fp32.eval.json'}", "progress=false",
        makes=out / "fp32.eval.json")
    evals["fp32 (PyTorch)"] = out / "fp32.eval.json"
    ptq = out / f"ptq.int8{SUFFIX[fmt]}"
    calib = [f"calibration={root}"] if root else []
    run("mobilenet-export", str(ns.checkpoint), "--format", fmt, "--quantize", "int8", f"out={ptq}",
        f"num_calibration={ns.num_calibration}", *calib, makes=ptq)
    qat_run = out / "qat_run"
    run("mobilenet-train", "+experiment=qat", f"model.init={ns.checkpoint.resolve()}", f"qat.target={fmt}",
        f"trainer.epochs={ns.epochs}", f"hydra.run.dir={qat_run}", "trainer.progress=false", *data,
        *input_of(ns.checkpoint), *ns.qat_overrides, makes=qat_run / "checkpoints" / "last.pt")
    qat = out / f"qat.int8{SUFFIX[fmt]}"
    run("mobilenet-export", str(qat_run / "checkpoints" / "last.pt"), "--format", fmt, f"out={qat}", makes=qat)
    files = {"PTQ int8": ptq, "QAT int8": qat}
    if ns.google:
        files["Google's 8-bit file"] = ns.google
    for name, path in files.items():
        target = out / f"{path.name}.eval.json"
        run("mobilenet-eval", str(path), *[d for d in data if not d.startswith("data.train_split")],
            f"out={target}", "progress=false", makes=target)
        evals[name] = target
    rows = []
    for name, path in evals.items():
        r = json.loads(path.read_text())
        f = files.get(name)
        lat = latency_ms("tflite" if f == ns.google else fmt, f, ns.threads, ns.runs) if f else None
        rows.append({"model": name, "top1": r["top1"], "top5": r["top5"], "num_images": r["num_images"],
                     "latency_ms": lat, "file": str(f or ns.checkpoint)})
    fp32 = rows[0]["top1"]
    print(f"| model | top-1 | Δ fp32 | top-5 | images | batch-1 latency ms ({ns.threads} thread(s), "
          f"{os.cpu_count()} CPUs) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        lat = f"{r['latency_ms']:.2f}" if r["latency_ms"] else "–"
        print(f"| {r['model']} | {r['top1']:.2f} | {r['top1'] - fp32:+.2f} | {r['top5']:.2f} | {r['num_images']} "
              f"| {lat} |")
    (out / "bench_qat.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
