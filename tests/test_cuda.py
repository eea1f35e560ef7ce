"""The CUDA paths, each on the GPU and each asserting values: fp16 with GradScaler, bf16 + channels_last +
torch.compile, a training step without host syncs, nvJPEG decode, NCCL, EMA / QAT / SSD, exact resume,
CPU-only use of a GPU-trained checkpoint, and mobilenet-eval on cuda against the CPU.

`pytest -m cuda` on a GPU machine (`make gpu-check` runs them with the benchmarks); without CUDA they
are collected and skip. MOBILENET_TRAIN_CUDA_TESTS_DEVICE=cpu runs the same code on the CPU (fp16 becomes
bf16, no sync checks, gloo instead of NCCL): a dry run of the tests themselves, not a check of CUDA.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, SHARED, TINY_DET, fit_in_process, free_port, job_config, odd_dataset
from PIL import Image

from mobilenet_train.checkpoint import load_checkpoint

DEVICE = os.environ.get("MOBILENET_TRAIN_CUDA_TESTS_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(ON_GPU and not torch.cuda.is_available(),
                                                   reason="no CUDA device here (make gpu-check runs these on a GPU)")]
GPU = [f"trainer.device={DEVICE}"]
HALF = "fp16" if ON_GPU else "bf16"


def _weights(ckpt: dict, key: str = "model") -> dict:
    return {k: v for k, v in ckpt[key].items() if torch.is_tensor(v)}


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


def _last(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _epoch_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- fp16 + GradScaler


def test_fp16_with_grad_scaler_trains_like_fp32_and_resumes_the_scaler(tmp_path):
    """30 steps of alpha 0.25 on shapes: fp16's loss is finite and near fp32's; the scaler's state is in
    the checkpoint, and a run resumed after step 30 ends exactly as one that never stopped."""
    common = [*GPU, "data.batch_size=8", "trainer.deterministic=true", "trainer.log_every_steps=10"]
    fp32 = fit_in_process(tmp_path / "fp32", *common, "trainer.amp=none")
    split = tmp_path / "split"
    half = fit_in_process(split, *common, f"trainer.amp={HALF}")
    assert half["step"] == fp32["step"] == 30
    assert math.isfinite(half["train_loss"])
    assert abs(half["train_loss"] - fp32["train_loss"]) <= 0.05 * fp32["train_loss"] + 0.05, (half, fp32)
    after_30 = _last(split)["scaler"]
    if ON_GPU:
        fresh = torch.amp.GradScaler("cuda").state_dict()
        assert after_30["scale"] > 0 and (after_30["scale"], after_30["_growth_tracker"]) != (
            fresh["scale"], fresh["_growth_tracker"]), after_30  # 30 steps moved it
    fit_in_process(split, *common, f"trainer.amp={HALF}", "trainer.epochs=2")
    fit_in_process(tmp_path / "straight", *common, f"trainer.amp={HALF}", "trainer.epochs=2")
    a, b = _last(split), _last(tmp_path / "straight")
    assert a["step"] == b["step"] == 60
    assert a["scaler"] == b["scaler"]
    _assert_same_tensors(_weights(a), _weights(b))


# ----------------------------------------------------------------------------- bf16 + channels_last + compile


class _Losses:
    """A RunLogger stand-in that keeps each log window's loss."""

    def __init__(self):
        self.losses = []

    def window(self, step, metrics, desc):
        self.losses.append(metrics["loss"])


def _parts(*overrides: str, weights: dict | None = None, seed_from=None):
    """TrainParts as `fit` builds them (engine.setup.build_parts), on DEVICE."""
    from mobilenet_train.distributed import DistInfo
    from mobilenet_train.engine.setup import TrainContext, autocast_dtype, build_parts, resolve_device
    from mobilenet_train.model import build_model

    cfg = job_config(*GPU, *overrides)
    device = resolve_device(str(cfg.trainer.device))
    amp = autocast_dtype(cfg.trainer.amp, device)
    torch.manual_seed(0)
    model, _ = build_model(cfg.model)
    distill = None
    if cfg.distill.teacher:
        from mobilenet_train.engine.distill import build_distiller

        distill = build_distiller(cfg, [str(i) for i in range(int(cfg.model.num_classes))], device, amp)
    ctx = TrainContext(DistInfo(), Path("."), device, amp, False)
    parts = build_parts(cfg, ctx, model, weights, None, 0, 1, 100, distill=distill)
    return cfg, parts


def _batches(n: int, batch: int, resolution: int, classes: int = 10) -> list:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randint(0, 256, (batch, 3, resolution, resolution), dtype=torch.uint8, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        out.append((x.pin_memory(), y.pin_memory()) if ON_GPU else (x, y))
    return out


def _steps(parts, batches, cfg, logger=None, stop=None):
    from mobilenet_train.engine import TrainState, train_one_epoch

    state = TrainState()
    train_one_epoch(parts, batches, state, cfg.trainer, "test", logger, False, stop=stop)
    return state


def test_bf16_channels_last_compiled_step_matches_eager_without_recompiling():
    from torch._dynamo.utils import counters

    common = ["trainer.amp=bf16", "trainer.channels_last=true", "model.resolution=64", "trainer.log_every_steps=1"]
    cfg, eager = _parts(*common, "trainer.compile=false")
    start = {k: v.detach().clone() for k, v in eager.model.state_dict().items()}
    _, compiled = _parts(*common, "trainer.compile=true", weights=start)
    batches = _batches(10, 32, 64)
    eager_log, compiled_log = _Losses(), _Losses()
    _steps(eager, batches, cfg, eager_log)
    torch._dynamo.reset()
    counters.clear()
    _steps(compiled, batches[:3], cfg, compiled_log)
    after_warmup = (counters["frames"]["total"], counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"])
    assert after_warmup[1] >= 1  # it did compile
    _steps(compiled, batches[3:], cfg, compiled_log)
    after = (counters["frames"]["total"], counters["stats"]["unique_graphs"], counters["aot_autograd"]["total"])
    assert after == after_warmup, f"recompiled after the first steps: {after_warmup} -> {after}"
    e, c = torch.tensor(eager_log.losses), torch.tensor(compiled_log.losses)
    assert len(e) == len(c) == 10 and torch.isfinite(c).all()
    assert (c[0] - e[0]).abs() <= 0.01 * e[0], (e, c)  # same weights, same batch: rounding only
    assert ((c - e).abs() <= 0.05 * e).all(), (e, c)  # and no drift over ten steps


# ----------------------------------------------------------------------------- no host sync


class _StopAfter:
    """A stop request that turns true at the n-th optimizer step (the loop checks it after each)."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_training_step_makes_no_host_sync(tmp_path):
    """Mixup, cutmix, random erasing, a teacher, EMA and the optimizer step, under sync-debug 'error'."""
    from mobilenet_train.deploy.latency import random_checkpoint

    teacher = random_checkpoint(["model.alpha=0.5", "model.resolution=64", "data.num_classes=10"],
                                tmp_path / "teacher.pt")
    cfg, parts = _parts("trainer.amp=bf16", "model.resolution=64", "data.mixup=0.8", "data.cutmix=1.0",
                        "data.random_erasing=0.5", "optim.label_smoothing=0.1", "trainer.ema.enabled=true",
                        f"distill.teacher={teacher}", "distill.alpha=0.5", "trainer.log_every_steps=1000")
    assert parts.batch_augment is not None and parts.distill is not None and parts.ema is not None
    batches = _batches(8, 32, 64)
    _steps(parts, batches[:2], cfg, stop=_StopAfter(2))  # lazy initialisation, cuDNN autotuning
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        state = _steps(parts, batches[2:], cfg, stop=_StopAfter(6))
    finally:
        if ON_GPU:
            torch.cuda.set_sync_debug_mode("default")
    assert state.step == 6
    moved = [k for k, v in parts.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert moved  # it trained


# ----------------------------------------------------------------------------- nvJPEG


def _sample_photos(limit: int = 80) -> list[Path]:
    """Real ImageNet JPEGs: untouched files (a prepared .gpu-check/shared keeps 80 beside the re-encoded set)."""
    for name in ("imagenet-samples-full", "imagenet-samples"):
        folder = SHARED / "data" / name / "val"
        if folder.is_dir():
            files = sorted(folder.glob("*/*.JPEG"))
            return files[:: max(1, len(files) // limit)][:limit]
    pytest.skip(f"{SHARED / 'data' / 'imagenet-samples'} is absent")


def _cpu_and_gpu_decode(transform, paths):
    from mobilenet_train.data import GpuDecode, read_encoded

    cpu = []
    for p in paths:
        with Image.open(p) as img:
            cpu.append(transform(img))
    gpu, bad = GpuDecode(transform, torch.device(DEVICE))([read_encoded(str(p)) for p in paths],
                                                          [str(p) for p in paths])
    return torch.stack(cpu), gpu.cpu(), bad


def test_gpu_decode_of_real_photos_equals_the_cpu_decode(compose):
    """The eval crop of real ImageNet photos: nvJPEG + GPU resize against PIL + CPU resize."""
    from mobilenet_train.data import eval_transform

    paths = _sample_photos()
    cfg = compose("data.decode=cpu")
    cpu, gpu, bad = _cpu_and_gpu_decode(eval_transform(cfg.data, 224), paths)
    assert bad == [] and gpu.shape == cpu.shape == (len(paths), 3, 224, 224)
    diff = (gpu.float() - cpu.float()).abs()
    per_image = diff.mean(dim=(1, 2, 3))
    # JPEG decoders differ by IDCT rounding and chroma upsampling; the resize by its filter taps.
    assert per_image.median() < 2.0 and per_image.max() < 8.0, per_image.tolist()
    assert (diff > 48).float().mean() < 0.002, (diff > 48).float().mean()


def test_gpu_decode_takes_the_cpu_fallback_for_odd_files_as_the_cpu_path_counts_them(tmp_path, compose):
    """CMYK, PNG named .JPEG, truncated and garbage files: decoded by the fallback or counted bad, as on CPU."""
    from mobilenet_train.data import build_data

    root = odd_dataset(tmp_path / "ds", truncated=True)
    (root / "train" / "n03" / "garbage.JPEG").write_bytes(b"not a jpeg at all")
    counts = {}
    for decode in ("cpu", "gpu" if ON_GPU else "cpu"):
        cfg = compose(f"data.root={root}", "data.num_classes=3", f"data.decode={decode}", "data.num_workers=0",
                      "data.batch_size=4", "data.max_bad_share=0.5", "model.resolution=64")
        data = build_data(cfg, 64)
        loader = data.train_loader
        images = torch.cat([x.cpu() for x, _ in loader])
        counts[decode] = loader.bad_images
        assert images.shape[1:] == (3, 64, 64) and images.float().std(dim=(1, 2, 3)).min() > 1  # nothing blank
    assert counts.get("gpu", counts["cpu"]) == counts["cpu"] >= 1, counts
    # The odd files nvJPEG cannot take (CMYK, PNG) come out as the CPU decodes them.
    from mobilenet_train.data import eval_transform

    cfg = compose("data.decode=cpu")
    odd = [root / "train" / "n01" / name for name in ("cmyk.JPEG", "png_named.JPEG", "grey.JPEG")]
    cpu, gpu, bad = _cpu_and_gpu_decode(eval_transform(cfg.data, 64), odd)
    assert bad == []
    assert (gpu.float() - cpu.float()).abs().mean(dim=(1, 2, 3)).max() < 6.0


# ----------------------------------------------------------------------------- NCCL


def _env(**extra) -> dict:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": f"{src}:{path}" if path else src, **extra}


def test_nccl_quickstart_two_epochs_scores_every_val_image_once(tmp_path):
    """torchrun with one process per GPU (one process, a one-process NCCL group, on a one-GPU machine)."""
    n = torch.cuda.device_count() if ON_GPU else 2
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "--master_port",
           str(free_port()), "-m", "mobilenet_train.train", "+experiment=quickstart", "trainer.epochs=2",
           f"trainer.device={'cuda' if ON_GPU else 'cpu'}", "trainer.progress=false", f"hydra.run.dir={run}",
           "data.generate.train_per_class=200", "data.generate.val_per_class=37"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _epoch_lines(run)
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(line["val_num_images"] == 370 for line in lines), [line["val_num_images"] for line in lines]
    # Every train image counted once per epoch (200 a class, batch 64: 31 whole steps), the sums finite.
    assert all(line["step"] == 31 * line["epoch"] for line in lines), [line["step"] for line in lines]
    assert all(math.isfinite(line["train_loss"]) and math.isfinite(line["val_loss"]) for line in lines)


# ----------------------------------------------------------------------------- EMA, QAT, SSD, resume, CPU use


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    """A classifier with EMA trained on DEVICE two ways (2 epochs; 1 then resumed to 2), deterministic."""
    root = tmp_path_factory.mktemp("gpu_runs")
    common = [*GPU, "trainer.ema.enabled=true", "trainer.ema.decay=0.9", "trainer.deterministic=true",
              "data.batch_size=20"]
    before = torch.are_deterministic_algorithms_enabled()
    straight = fit_in_process(root / "straight", *common, "trainer.epochs=2")
    fit_in_process(root / "split", *common, "trainer.epochs=1")
    split = fit_in_process(root / "split", *common, "trainer.epochs=2")
    torch.use_deterministic_algorithms(before)
    return {"root": root, "straight": straight, "split": split}


@pytest.mark.xdist_group("gpu_runs")
def test_ema_trains_and_a_gpu_checkpoint_resumes_bit_identically(gpu_runs):
    a, b = _last(gpu_runs["root"] / "straight"), _last(gpu_runs["root"] / "split")
    assert a["step"] == b["step"] == 24
    _assert_same_tensors(_weights(a), _weights(b))
    _assert_same_tensors(_weights(a, "ema"), _weights(b, "ema"))
    m, resumed = gpu_runs["straight"], gpu_runs["split"]
    assert math.isfinite(m["val_ema_loss"]) and 0 <= m["val_ema_top1"] <= 100
    assert {k: v for k, v in m.items() if k.startswith("val_")} == {
        k: v for k, v in resumed.items() if k.startswith("val_")}
    ema = {k.removeprefix("module."): v for k, v in a["ema"].items()}
    trained = [k for k, v in a["model"].items() if v.is_floating_point() and "running" not in k]
    assert trained and all(torch.isfinite(ema[k]).all() for k in trained)
    assert any(not torch.equal(a["model"][k], ema[k]) for k in trained)  # an average, not a copy


def _cpu_only(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A Python process that cannot see any GPU."""
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.xdist_group("gpu_runs")
def test_a_gpu_checkpoint_evaluates_and_exports_in_a_cpu_only_process(gpu_runs, tmp_path):
    ckpt = gpu_runs["root"] / "straight" / "checkpoints" / "last.pt"
    _cpu_only("import sys; from mobilenet_train.cli.eval import main; main(sys.argv[1:])", str(ckpt),
              f"out={tmp_path / 'eval.json'}", "progress=false", cwd=tmp_path)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["device"] == "cpu"
    gpu_top1, n = gpu_runs["straight"]["val_top1"], result["num_images"]
    assert abs(result["top1"] - gpu_top1) <= 100 / n + 1e-6, (result["top1"], gpu_top1)  # one image at most
    _cpu_only("import sys; from mobilenet_train.cli.export import main; main(sys.argv[1:])", str(ckpt),
              "--format", "onnx", f"out={tmp_path / 'model.onnx'}", cwd=tmp_path)
    assert (tmp_path / "model.onnx").stat().st_size > 100_000


@pytest.mark.xdist_group("gpu_runs")
def test_qat_trains_on_the_gpu(gpu_runs, tmp_path):
    try:
        import executorch.backends.xnnpack.quantizer.xnnpack_quantizer  # noqa: F401
    except ImportError as e:
        pytest.skip(f"QAT's quantizer (executorch) does not import here: {e}")
    init = gpu_runs["root"] / "straight" / "checkpoints" / "last.pt"
    run = tmp_path / "qat"
    m = fit_in_process(run, *GPU, "qat.enabled=true", "qat.target=executorch", "qat.freeze_bn_steps=3",
                       "qat.freeze_observer_steps=8", f"model.init={init}", f"distill.teacher={init}",
                       "distill.alpha=1.0", "trainer.epochs=2", "data.batch_size=40")
    assert m["step"] == 12 and math.isfinite(m["train_loss"]) and 0 <= m["val_top1"] <= 100
    state = _last(run)["model"]
    observing = {k: v for k, v in state.items() if "observer_enabled" in k}
    assert observing and all(int(v) == 0 for v in observing.values())  # frozen at step 8
    scales = [v for k, v in state.items() if k.endswith("activation_post_process_0.scale") or
              (k.endswith(".scale") and "activation_post_process" in k)]
    assert scales and all(torch.isfinite(s).all() and (s > 0).all() for s in scales)


def test_ssd_trains_on_the_gpu_and_evaluates_on_the_cpu(tmp_path):
    from mobilenet_train.config import compose
    from mobilenet_train.engine import fit

    run = tmp_path / "ssd"
    m = fit(compose([*TINY_DET, *GPU, "trainer.epochs=2"], hydra=False), run)
    assert m["step"] > 0 and math.isfinite(m["train_loss"]) and 0 <= m["val_map"] <= 100
    _cpu_only("import sys; from mobilenet_train.cli.eval import main; main(sys.argv[1:])",
              str(run / "checkpoints" / "last.pt"), f"out={tmp_path / 'eval.json'}", "progress=false", cwd=tmp_path)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["device"] == "cpu" and abs(result["map"] - m["val_map"]) <= 1.0, (result["map"], m["val_map"])


# ----------------------------------------------------------------------------- mobilenet-eval on cuda


def test_eval_of_googles_weights_on_cuda_equals_the_cpu(tmp_path):
    """Google's Keras 0.75_224 imported, scored on the sample images on cuda and on the CPU."""
    from mobilenet_train.evaluation import evaluate_checkpoint
    from mobilenet_train.importer import import_weights

    src, samples = SHARED / "weights" / "keras-tfjs-mobilenet_v1_0.75_224", SHARED / "data" / "imagenet-samples"
    if not (src.is_dir() and samples.is_dir()):
        pytest.skip(f"Google's Keras weights or the sample images are absent under {SHARED}")
    ckpt = tmp_path / "keras.pt"
    import_weights([str(src)], str(ckpt))
    common = [f"data.root={samples}", "data.num_workers=8", "data.batch_size=250", "progress=false"]
    on = {d: evaluate_checkpoint(str(ckpt), [*common, f"device={d}", f"out={tmp_path / d}.json"])
          for d in (DEVICE, "cpu")}
    gpu, cpu = on[DEVICE], on["cpu"]
    assert gpu["num_images"] == cpu["num_images"] == len(list(samples.glob("*/*")))
    assert gpu["device"].startswith(DEVICE)
    assert abs(gpu["top1"] - cpu["top1"]) <= 0.1 and abs(gpu["top5"] - cpu["top5"]) <= 0.1, (gpu, cpu)
    assert cpu["top1"] > 50  # Google's weights, not a broken import
