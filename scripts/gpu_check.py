"""`make gpu-check`: every CUDA path proven or disproven and the speed measured, in one command (under 8
minutes on one H100/H200-class GPU). Each part runs in its own process under its own time limit, so a
hang costs that part only:

  tests       pytest -m cuda (tests/test_cuda.py): fp16 + GradScaler, bf16 + channels_last + compile, no
              host sync in the step, nvJPEG, NCCL, EMA / QAT / SSD, exact resume, CPU use, eval on cuda
  speed       scripts/bench_train.py: alpha 1.0 @ 224, batch 256, synthetic: the toolkit against a plain
              PyTorch loop and timm's mobilenetv1_100, bf16 and fp16, eager and compiled, interleaved
  pipeline    real JPEGs into the training step: data.decode=cpu on all cores against data.decode=gpu,
              images/s, data-wait share and GPU utilisation
  quickstart  2 epochs of +experiment=quickstart on cuda and on the CPU: val top-1 side by side

Writes gpu-check.json, gpu-check.md (the table for docs/benchmarks.md) and the logs into $OUT when set,
else gpu-check/. On the GPU machine it runs on that machine's own torch: packages it lacks come from
.gpu-check/wheels and ../shared's files from .gpu-check/shared (scripts/gpu_check_prepare.sh makes both).

    python3 scripts/gpu_check.py                       # everything (make gpu-check)
    python3 scripts/gpu_check.py --parts speed,pipeline
    python3 scripts/gpu_check.py --device cpu --quick  # the CPU twin of speed/pipeline/quickstart (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("tests", "speed", "pipeline", "quickstart")
LIMITS = {"tests": 150, "speed": 140, "pipeline": 120, "quickstart": 110}  # seconds, each capped by the budget
SITE = Path("/tmp/mobilenet-gpu-check-site")
EPOCHS = 3  # pipeline: epochs per decode mode, the last one measured
GOALS = {"step_images_per_sec": 8000, "step_vs_timm": 1.2, "gpu_decode_images_per_sec": 3000,
         "gpu_decode_vs_cpu": 2.0, "quickstart_top1_gap": 5.0}


# ----------------------------------------------------------------------------- environment


def prepare_environment(env: dict) -> dict:
    """PYTHONPATH with src/ (and the carried wheels where the image lacks hydra & co.), ../shared's stand-in."""
    paths = [str(REPO / "src")]
    wheels = sorted((REPO / ".gpu-check" / "wheels").glob("*.whl"))
    try:
        import hydra  # noqa: F401
        import omegaconf  # noqa: F401
    except ImportError:
        if not wheels:
            raise SystemExit("gpu_check: hydra-core is not installed and .gpu-check/wheels is empty: run "
                             "scripts/gpu_check_prepare.sh on a machine with PyPI first") from None
        if not SITE.is_dir():
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--target", str(SITE), *map(str, wheels)], check=True)
        paths.append(str(SITE))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for p in reversed(paths):
        sys.path.insert(0, p)
    if "MOBILENET_TRAIN_SHARED" not in env and not (REPO.parent / "shared").is_dir():
        if (REPO / ".gpu-check" / "shared").is_dir():
            env["MOBILENET_TRAIN_SHARED"] = str(REPO / ".gpu-check" / "shared")
    env.setdefault("MOBILENET_TRAIN_CACHE", "/tmp/mobilenet-gpu-check-cache")
    env.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # the deterministic-resume tests, before CUDA starts
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shared_dir(env: dict) -> Path:
    return Path(env.get("MOBILENET_TRAIN_SHARED", REPO.parent / "shared"))


def machine(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d")}
    try:
        import timm
        import torchvision

        info.update(torchvision=torchvision.__version__, timm=timm.__version__)
    except ImportError:
        pass
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


# ----------------------------------------------------------------------------- running a part


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def limit(self, part: str) -> int:
        return max(10, int(min(LIMITS[part], self.end - time.monotonic() - 5)))


def run(cmd: list[str], log: Path, timeout: int, env: dict, cwd: Path = REPO) -> dict:
    """`cmd` with stdout+stderr appended to `log`; its exit status, seconds and whether it timed out."""
    start = time.monotonic()
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc, timed_out = -9, True
            f.write(f"\n[gpu_check] killed after its {timeout} s limit\n")
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.monotonic() - start, 1), "timed_out": timed_out}


def tail(path: Path, n: int = 3) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


# ----------------------------------------------------------------------------- tests


def part_tests(ns, out: Path, env: dict, budget: Budget) -> dict:
    junit = out / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider", "-q", "-rA",
           f"--junitxml={junit}", *ns.pytest_args]
    if ns.workers > 1:
        try:
            import xdist  # noqa: F401
            cmd += ["-n", str(ns.workers), "--dist", "loadgroup"]
        except ImportError:
            pass
    result = run(cmd, out / "pytest.log", budget.limit("tests"), env)
    result["tests"] = read_junit(junit)
    counts = {k: sum(t["outcome"] == k for t in result["tests"]) for k in ("passed", "failed", "skipped")}
    result.update(counts, ok=result["rc"] == 0 and counts["failed"] == 0 and counts["passed"] > 0)
    if not result["tests"]:
        result["error"] = tail(out / "pytest.log")
    return result


def read_junit(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or node.text or "").strip().splitlines()[0][:300] if (
                    node.get("message") or node.text) else ""
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time", 0)), 1),
                      "message": message})
    return tests


# ----------------------------------------------------------------------------- speed


def part_speed(ns, out: Path, env: dict, budget: Budget) -> dict:
    bench = out / "bench_train.json"
    if ns.device == "cuda":
        size = ["--alpha", "1.0", "--resolution", "224", "--batch", "256", "--steps", "20", "--warmup", "5",
                "--repeats", "3", "--compile-amps", ns.compile_amps, "--compile-modes", ns.compile_modes]
    else:
        size = ["--alpha", "0.25", "--resolution", "64", "--batch", "16", "--steps", "2", "--warmup", "1",
                "--repeats", "1", "--no-compile-in-matrix"]
    cmd = [sys.executable, "scripts/bench_train.py", "--device", ns.device, "--gpu-matrix", "--timm", *size,
           "--json", str(bench)]
    result = run(cmd, out / "bench_train.log", budget.limit("speed"), env)
    rows = json.loads(bench.read_text())["results"] if bench.is_file() else []
    result["rows"] = rows
    by_name = {r["name"]: r for r in rows}
    ours = by_name.get("toolkit compile channels_last bf16") or by_name.get("toolkit eager channels_last bf16")
    timm = by_name.get(ours["name"].replace("toolkit", "timm")) if ours else None
    if ours and ours["samples"]:
        result["step_images_per_sec"] = ours["images_per_sec"]
        result["step_variant"] = ours["name"]
        if timm and timm["samples"]:
            result["step_vs_timm"] = ours["ratio"] / timm["ratio"]  # both against the same interleaved baseline
    result["ok"] = result["rc"] == 0 and bool(rows)
    if not rows:
        result["error"] = tail(out / "bench_train.log")
    return result


# ----------------------------------------------------------------------------- pipeline


def replicate_photos(src: Path, dst: Path, total: int) -> int:
    """ImageFolder `dst/{train,val}/<class>/`: the photos of `src` linked over and over up to `total` train
    images (the page cache holds them: this measures decoding and augmenting, not the disk)."""
    photos = sorted(p for p in src.glob("*/*") if p.suffix.lower() in (".jpeg", ".jpg"))
    if not photos:
        raise SystemExit(f"gpu_check: no JPEGs under {src}")
    shutil.rmtree(dst, ignore_errors=True)
    for p in photos:
        (dst / "val" / p.parent.name).mkdir(parents=True, exist_ok=True)
        (dst / "train" / p.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(p.resolve(), dst / "val" / p.parent.name / p.name)
    for i in range(total):
        p = photos[i % len(photos)]
        os.symlink(p.resolve(), dst / "train" / p.parent.name / f"{p.stem}_{i}{p.suffix}")
    return len({p.parent.name for p in photos})


def photos_dir(env: dict) -> Path:
    shared = shared_dir(env)
    for name in ("imagenet-samples-full", "imagenet-samples"):
        if (shared / "data" / name / "val").is_dir():
            return shared / "data" / name / "val"
    raise SystemExit(f"gpu_check: no sample photos under {shared}/data (run scripts/gpu_check_prepare.sh)")


class UtilSampler(threading.Thread):
    """GPU utilisation (%, NVML through torch.cuda.utilization) every 0.2 s while a part runs."""

    def __init__(self, enabled: bool):
        super().__init__(daemon=True)
        self.enabled, self.samples, self.stop = enabled, [], threading.Event()

    def run(self):
        if not self.enabled:
            return
        import torch

        while not self.stop.wait(0.2):
            try:
                self.samples.append(torch.cuda.utilization(0))
            except Exception:  # noqa: BLE001 - no NVML: no utilisation figure
                return

    def second_half_mean(self) -> float | None:
        s = self.samples[len(self.samples) // 2:]
        return round(statistics.fmean(s), 1) if s else None


def part_pipeline(ns, out: Path, env: dict, budget: Budget) -> dict:
    """3 epochs of real training on replicated sample photos per decode mode; the last epoch's images/s (the
    first carries cuDNN's autotuning of every convolution, tens of seconds at this size)."""
    root = Path(env["MOBILENET_TRAIN_CACHE"]) / "pipeline"
    gpu = ns.device == "cuda"
    total = 4096 if gpu else 192
    classes = replicate_photos(photos_dir(env), root, total)
    size = (["model.alpha=1.0", "model.resolution=224", "data.batch_size=256", "trainer.amp=bf16"] if gpu else
            ["model.alpha=0.25", "model.resolution=64", "data.batch_size=32", "trainer.amp=none"])
    cpus = os.cpu_count() or 2
    modes = [("cpu", cpus), ("gpu", 8)] if gpu else [("cpu", min(2, cpus))]
    result = {"images": total, "classes": classes, "runs": [], "ok": True}
    limit_each = budget.limit("pipeline") // len(modes)
    for decode, workers in modes:
        run_dir = Path(env["MOBILENET_TRAIN_CACHE"]) / f"pipeline-{decode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "mobilenet_train.train", f"data.root={root}", f"data.num_classes={classes}",
               f"data.decode={decode}", f"data.num_workers={workers}", *size, f"trainer.device={ns.device}",
               f"trainer.epochs={EPOCHS}", f"trainer.eval_every_epochs={EPOCHS}", "trainer.log_every_steps=1000",
               "trainer.progress=false", "trainer.channels_last=true", f"hydra.run.dir={run_dir}"]
        sampler = UtilSampler(gpu)
        sampler.start()
        r = run(cmd, out / "pipeline.log", limit_each, env)
        sampler.stop.set()
        lines = read_metrics(run_dir)
        r.update(decode=decode, workers=workers, gpu_util_percent=sampler.second_half_mean())
        if len(lines) == EPOCHS:
            r.update(images_per_sec=lines[-1]["images_per_sec"], data_wait_share=lines[-1]["data_wait_share"],
                     bad_images=lines[-1].get("bad_images", 0), first_epoch_s=lines[0].get("epoch_time_s"))
        else:
            r["error"] = tail(out / "pipeline.log")
            result["ok"] = False
        result["runs"].append(r)
    rates = {r["decode"]: r.get("images_per_sec") for r in result["runs"]}
    if rates.get("gpu") and rates.get("cpu"):
        result["gpu_decode_images_per_sec"] = rates["gpu"]
        result["gpu_decode_vs_cpu"] = rates["gpu"] / rates["cpu"]
    return result


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- quickstart


def part_quickstart(ns, out: Path, env: dict, budget: Budget) -> dict:
    devices = [ns.device, "cpu"]
    small = [] if ns.device == "cuda" else ["data.generate.train_per_class=24", "data.generate.val_per_class=8",
                                           "data.generate.image_size=40", "model.resolution=32"]
    result = {"runs": [], "ok": True}
    limit_each = budget.limit("quickstart") // len(devices)
    for i, device in enumerate(devices):
        run_dir = Path(env["MOBILENET_TRAIN_CACHE"]) / f"quickstart-{i}-{device}"
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [sys.executable, "-m", "mobilenet_train.train", "+experiment=quickstart", "trainer.epochs=2",
               f"trainer.device={device}", "trainer.progress=false", *small, f"hydra.run.dir={run_dir}"]
        r = run(cmd, out / "quickstart.log", limit_each, env)
        lines = read_metrics(run_dir)
        r["device"] = device
        if len(lines) == 2:
            r.update(val_top1=lines[1]["val_top1"], images_per_sec=lines[1]["images_per_sec"])
        else:
            r["error"] = tail(out / "quickstart.log")
            result["ok"] = False
        result["runs"].append(r)
    tops = [r.get("val_top1") for r in result["runs"]]
    if None not in tops:
        result["quickstart_top1_gap"] = abs(tops[0] - tops[1])
    return result


# ----------------------------------------------------------------------------- report


def goals(results: dict) -> list[dict]:
    """The issue's goals, each measured or not, met or not."""
    speed, pipe, quick = results.get("speed", {}), results.get("pipeline", {}), results.get("quickstart", {})
    rows = [
        ("every CUDA test passes", results.get("tests", {}).get("ok"), None, None),
        ("training step images/s (alpha 1.0 @ 224, bf16, channels_last, compiled)",
         speed.get("step_images_per_sec"), GOALS["step_images_per_sec"], ">="),
        ("the same step against timm's mobilenetv1_100 (x)", speed.get("step_vs_timm"), GOALS["step_vs_timm"], ">="),
        ("end-to-end images/s with data.decode=gpu", pipe.get("gpu_decode_images_per_sec"),
         GOALS["gpu_decode_images_per_sec"], ">="),
        ("data.decode=gpu against data.decode=cpu on all cores (x)", pipe.get("gpu_decode_vs_cpu"),
         GOALS["gpu_decode_vs_cpu"], ">="),
        ("quickstart val top-1 gap, cuda against cpu (points)", quick.get("quickstart_top1_gap"),
         GOALS["quickstart_top1_gap"], "<="),
    ]
    out = []
    for name, value, target, op in rows:
        if target is None:
            met = bool(value) if value is not None else None
        else:
            met = None if value is None else (value >= target if op == ">=" else value <= target)
        out.append({"goal": name, "value": value, "target": target, "met": met})
    return out


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown(results: dict) -> str:
    m = results["machine"]
    gpu = f"{m.get('gpu', 'no GPU')} ({m.get('gpus', 0)}x, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')})"
    lines = [f"### make gpu-check, {m['date']}: {gpu}, {m['cpus']} CPUs, torch {m['torch']}, "
             f"torchvision {m.get('torchvision')}, timm {m.get('timm')}, Python {m['python']}", "",
             f"Command: `{results['command']}` ({results['seconds']:.0f} s in all).", "",
             "| goal | measured | target | met |", "|---|---|---|---|"]
    for g in results["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {fmt(g['value'], 2)} | {fmt(g['target'])} | {met} |")
    tests = results.get("tests")
    if tests:
        lines += ["", f"**CUDA tests** (`{tests['cmd']}`, {tests['seconds']:.0f} s): {tests.get('passed', 0)} passed, "
                  f"{tests.get('failed', 0)} failed, {tests.get('skipped', 0)} skipped"
                  f"{', timed out' if tests['timed_out'] else ''}", "", "| test | result | s | message |",
                  "|---|---|---|---|"]
        for t in tests.get("tests", []):
            lines.append(f"| {t['name']} | {t['outcome']} | {t['seconds']} | {t['message'].replace('|', '/')} |")
        if tests.get("error"):
            lines.append(f"\nNo test report: {tests['error']}")
    speed = results.get("speed")
    if speed:
        lines += ["", f"**Training step** (`{speed['cmd']}`, {speed['seconds']:.0f} s; images/s median of the "
                  "measurements, ratio against the plain fp32 loop measured around each):", "",
                  "| variant | images/s | min - max | vs plain loop | 1st warm-up s |", "|---|---|---|---|---|"]
        for r in speed.get("rows", []):
            if r["samples"]:
                lines.append(f"| {r['name']} | {r['images_per_sec']:,.0f} | {r['images_per_sec_min']:,.0f} - "
                             f"{r['images_per_sec_max']:,.0f} | {r['ratio']:.2f}x | {fmt(r['first_warmup_s'])} |")
            else:
                lines.append(f"| {r['name']} | failed | | | {r['error']} |")
        if speed.get("error"):
            lines.append(f"\nNo result: {speed['error']}")
    pipe = results.get("pipeline")
    if pipe:
        lines += ["", f"**Input pipeline into the training step** ({pipe.get('images', '?')} real JPEGs a epoch, "
                  f"epoch {EPOCHS} of {EPOCHS}):", "", "| data.decode | workers | images/s | data wait | GPU util % | "
                  "1st epoch s | command |", "|---|---|---|---|---|---|---|"]
        for r in pipe.get("runs", []):
            lines.append(f"| {r['decode']} | {r['workers']} | {fmt(r.get('images_per_sec'), 0)} | "
                         f"{fmt(100 * r['data_wait_share'] if 'data_wait_share' in r else None, 0)}% | "
                         f"{fmt(r.get('gpu_util_percent'), 0)} | {fmt(r.get('first_epoch_s'), 0)} | "
                         f"`{r['cmd'].split(' -m ', 1)[-1]}` |"
                         + (f" {r['error']}" if r.get("error") else ""))
    quick = results.get("quickstart")
    if quick:
        lines += ["", "**Quickstart, 2 epochs**:", "", "| device | val top-1 | train images/s | command |",
                  "|---|---|---|---|"]
        for r in quick.get("runs", []):
            lines.append(f"| {r['device']} | {fmt(r.get('val_top1'), 2)} | {fmt(r.get('images_per_sec'), 0)} | "
                         f"`{r['cmd'].split(' -m ', 1)[-1]}` |" + (f" {r['error']}" if r.get("error") else ""))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


PART_FUNCS = {"tests": part_tests, "speed": part_speed, "pipeline": part_pipeline, "quickstart": part_quickstart}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu: the CPU twin of speed, pipeline and quickstart (small sizes; tests skip)")
    p.add_argument("--budget", type=float, default=470, help="seconds for all parts together")
    p.add_argument("--out", type=Path, default=None, help="default: $OUT, else gpu-check/")
    p.add_argument("--workers", type=int, default=4, help="pytest-xdist processes for the CUDA tests")
    p.add_argument("--compile-amps", default="bf16",
                   help="speed: the amp modes that also run compiled (each costs a compile: bf16,fp16 for both)")
    p.add_argument("--compile-modes", default="default",
                   help="speed: torch.compile modes of the compiled variants, e.g. default,reduce-overhead")
    p.add_argument("--pytest-args", nargs=argparse.REMAINDER, default=[], help="passed on to pytest (last)")
    ns = p.parse_args(argv)
    ns.parts = [x for x in ns.parts.split(",") if x]
    bad = [x for x in ns.parts if x not in PARTS]
    if bad:
        p.error(f"--parts: {bad[0]} is not a part; use {', '.join(PARTS)}")
    return ns


def main(argv=None) -> int:
    ns = parse_args(argv)
    start = time.monotonic()
    try:
        import torch
    except ImportError:
        print("gpu_check: PyTorch is not installed here", file=sys.stderr)
        return 2
    if ns.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here (no GPU or no driver): run it on a GPU machine, or "
              "--device cpu for the CPU twin", file=sys.stderr)
        return 2
    out = ns.out or Path(os.environ.get("OUT") or REPO / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    env = prepare_environment(dict(os.environ))
    budget = Budget(ns.budget)
    results = {"command": " ".join(["python3", "scripts/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": machine(ns.device), "device": ns.device}
    for part in ns.parts:
        print(f"[gpu_check] {part} (limit {budget.limit(part)} s)", flush=True)
        part_start = time.monotonic()
        try:
            results[part] = PART_FUNCS[part](ns, out, env, budget)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken part is reported, the others still run
            results[part] = {"ok": False, "error": f"{type(e).__name__}: {e}", "cmd": "", "timed_out": False}
        r = results[part]
        r.setdefault("seconds", round(time.monotonic() - part_start, 1))
        print(f"[gpu_check] {part}: {'ok' if r.get('ok') else 'FAILED'} "
              f"({r.get('seconds', 0)} s){' ' + r['error'] if r.get('error') else ''}", flush=True)
    results["seconds"] = time.monotonic() - start
    results["goals"] = goals(results)
    (out / "gpu-check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (out / "gpu-check.md").write_text(table)
    print(table)
    return 0 if all(results[p].get("ok") for p in ns.parts) else 1


if __name__ == "__main__":
    sys.exit(main())
