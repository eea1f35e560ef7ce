"""Our int8 exports against Google's own runtime: LiteRT running Google's 8-bit TF-Lite MobileNets.

For each TF-Lite model of ../shared/weights/tflite-quant: import it (mobilenet-import: weights
dequantized, BN already folded), re-quantise with our flow (mobilenet-export --quantize int8,
calibrated on `--calibration` images of the sample set), then on the 1000 sample images:

    top-1   PyTorch fp32 (the dequantized weights), LiteRT on Google's file, our ONNX Runtime int8,
            our ExecuTorch (XNNPACK) int8, our TF-Lite int8 (litert-torch) in the same LiteRT
    latency batch 1, median / p10 / p90 ms, all of them timed interleaved (one call each per
            round), for each thread count; ratio = ours / LiteRT from the same rounds

Google's model is fed exactly what it was built for: uint8 RGB NHWC after TF-slim's eval
preprocessing (the imported checkpoint's `tf` preset); index 0 (background) of its 1001 outputs is
dropped, as mobilenet-import drops it. Our models take the same images as float (x/127.5 - 1).

Usage (the numbers in the issue-7 note were made with):
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_latency_compare.py --runs 100 --threads 1,2 \\
        --json outputs/litert_compare.json
    .venv/bin/python scripts/bench_latency_compare.py --models 0.25_128 --images 200 --runs 20   # quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mobilenet_train.checkpoint import atomic_write_json, load_checkpoint  # noqa: E402
from mobilenet_train.deploy.export import export  # noqa: E402
from mobilenet_train.deploy.formats import FORMATS, runner  # noqa: E402
from mobilenet_train.deploy.inputs import normalize, spread  # noqa: E402
from mobilenet_train.deploy.latency import cpu_model, loadavg, versions  # noqa: E402
from mobilenet_train.deploy.prepare import deploy_model  # noqa: E402
from mobilenet_train.importer import import_weights  # noqa: E402

MODELS = {"0.25_128": "mobilenet_v1_0.25_128_quant.tflite", "0.5_160": "mobilenet_v1_0.5_160_quant.tflite",
          "0.75_192": "mobilenet_v1_0.75_192_quant.tflite"}


def litert(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def run(x_uint8_nhwc: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp, x_uint8_nhwc)
        interp.invoke()
        return interp.get_tensor(out)

    return run


def sample_set(ckpt: dict, folder: Path, n: int):
    """(uint8 NCHW images, labels) with the checkpoint's eval preprocessing."""
    from torchvision import datasets

    from mobilenet_train.config import typed_config
    from mobilenet_train.data import eval_transform

    ds = datasets.ImageFolder(str(folder), transform=eval_transform(typed_config(ckpt["config"]).data,
                                                                     int(ckpt["model_args"]["resolution"])))
    idx = spread(list(range(len(ds))), n)
    images = torch.stack([ds[i][0] for i in idx])
    return images, torch.tensor([ds.targets[i] for i in idx])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=str(REPO.parent / "shared"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--formats", default="onnx,executorch,tflite")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=100, help="calibration images (spread over the sample set)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workdir", default=None, help="keep the checkpoints and exports here")
    args = ap.parse_args()
    shared = Path(args.shared)
    samples = shared / "data" / "imagenet-samples"
    threads_list = [int(t) for t in args.threads.split(",")]
    formats = args.formats.split(",")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="litert-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    report = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "loadavg_before": loadavg(), "versions": versions(),
              "settings": vars(args), "models": []}
    for name in args.models.split(","):
        tflite = shared / "weights" / "tflite-quant" / MODELS[name]
        ckpt_path = work / f"{name}.pt"
        import_weights([str(tflite)], str(ckpt_path))
        ckpt = load_checkpoint(ckpt_path)
        model = deploy_model(ckpt)
        ours = {}
        for fmt in formats:
            t = time.perf_counter()
            r = export(str(ckpt_path), fmt, "int8", out=str(work / f"{name}.int8{FORMATS[fmt]}"),
                         calibration=str(samples), num_calibration=args.calibration)
            ours[fmt] = Path(r.out)
            print(f"{name}: {fmt} int8 exported in {time.perf_counter() - t:.0f} s", flush=True)
        images, labels = sample_set(ckpt, samples / "val", args.images)
        x = normalize(images, ckpt["config"]["data"]["normalization"])
        nhwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        # top-1
        top1 = {}
        with torch.no_grad():
            top1["pytorch fp32"] = float((model(x).argmax(1) == labels).float().mean()) * 100
        g = litert(tflite, threads_list[-1])
        pred = np.array([g(nhwc[i : i + 1])[0, 1:].argmax() for i in range(len(nhwc))])
        top1["LiteRT (Google int8)"] = float((torch.from_numpy(pred) == labels).float().mean()) * 100
        for fmt, path in ours.items():
            run = runner(fmt, path, threads_list[-1])
            got = np.concatenate([run(x[i : i + 8].numpy()) for i in range(0, len(x), 8)])
            top1[f"{fmt} int8 (ours)"] = float((torch.from_numpy(got.argmax(1)) == labels).float().mean()) * 100
        print(f"{name}: top-1 on {len(labels)} images: " + ", ".join(f"{k} {v:.1f}" for k, v in top1.items()),
              flush=True)
        # latency, interleaved
        latency = []
        one, one_u8 = x[:1].numpy(), nhwc[:1]
        for threads in threads_list:
            torch.set_num_threads(threads)
            fns = {"LiteRT (Google int8)": (litert(tflite, threads), one_u8),
                   "pytorch fp32 (eager)": (torch.inference_mode()(lambda a: model(torch.from_numpy(a))), one)}
            for fmt, path in ours.items():
                fns[f"{fmt} int8 (ours)"] = (runner(fmt, path, threads), one)
            times = {k: [] for k in fns}
            for r in range(args.warmup + args.runs):
                for k, (fn, a) in fns.items():
                    t = time.perf_counter()
                    fn(a)
                    if r >= args.warmup:
                        times[k].append(time.perf_counter() - t)
            ref = statistics.median(times["LiteRT (Google int8)"])
            for k, ts in times.items():
                med = statistics.median(ts)
                latency.append({"runtime": k, "threads": threads, "median_ms": 1e3 * med,
                                "p10_ms": 1e3 * float(np.percentile(ts, 10)),
                                "p90_ms": 1e3 * float(np.percentile(ts, 90)),
                                "ratio_to_litert": med / ref})
        report["models"].append({"name": name, "top1": top1, "num_images": len(labels), "latency": latency})
    report["loadavg_after"] = loadavg()
    print(f"\nCPU {report['cpu']}, {report['logical_cpus']} logical CPUs, load {report['loadavg_before']} -> "
          f"{report['loadavg_after']}\n")
    print("| model | runtime | top-1 (%) | "
          + " | ".join(f"{t} thr: median ms (p10-p90), × LiteRT" for t in threads_list) + " |")
    print("|---|---|---:|" + "---:|" * len(threads_list))
    for m in report["models"]:
        for k, acc in m["top1"].items():
            cells = []
            for t in threads_list:
                e = next((e for e in m["latency"]
                          if e["runtime"].split(" (")[0] == k.split(" (")[0] and e["threads"] == t), None)
                cells.append(f"{e['median_ms']:.2f} ({e['p10_ms']:.2f}-{e['p90_ms']:.2f}), {e['ratio_to_litert']:.2f}"
                             if e else "–")
            print(f"| {m['name']} | {k} | {acc:.1f} | " + " | ".join(cells) + " |")
    if args.json:
        atomic_write_json(Path(args.json), report)


if __name__ == "__main__":
    main()
