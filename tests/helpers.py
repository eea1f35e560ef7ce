"""Helpers the tests share (test files never import each other): the tiny config, running the
installed commands, ../shared, and the helpers of the data and engine tests."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import types
import warnings
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the installed entry points say the same
    tomllib = None

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENET_TRAIN_SHARED", REPO.parent / "shared"))  # a git worktree: point it at ../shared
BIN = Path(sys.executable).parent

# A shapes dataset and model small enough for a training epoch in a few seconds on 2 cores.
TINY = [
    "+experiment=quickstart",
    "data.generate.image_size=40",
    "data.generate.train_per_class=24",
    "data.generate.val_per_class=8",
    "data.batch_size=40",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "model.resolution=32",
    "trainer.epochs=1",
    "trainer.log_every_steps=2",
    "trainer.progress=false",
]


def run_cli(name: str, *args: str, cwd: Path, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script, as a user would, from `cwd`."""
    exe = BIN / name
    assert exe.exists(), f"{exe} missing: install the package (make install)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def console_scripts() -> dict[str, str]:
    """[project.scripts] of pyproject.toml: {command: "module:function"}."""
    if tomllib is None:
        return {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]["scripts"]


# Python's own warning filters (no -W, no PYTHONWARNINGS): what a console script's process starts with.
_PROCESS_WARNING_IGNORES = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@contextlib.contextmanager
def _as_a_fresh_process(name: str, args: tuple[str, ...], cwd: Path):
    """What run_main needs around a console script's `main`, undone afterwards: sys.argv and the
    cwd of a fresh process, logging as it is before basicConfig/Hydra configure it (else pytest's
    handlers make basicConfig a no-op and log lines would escape the captured stderr), no Hydra
    singleton, and the global torch/NumPy/random state the run may change (seeds, threads,
    determinism)."""
    from hydra.core.global_hydra import GlobalHydra

    root, ours = logging.getLogger(), logging.getLogger("mobilenet_train")
    saved_logging = (root.handlers[:], root.level, ours.handlers[:], ours.level, ours.propagate,
                     logging.root.manager.disable)
    saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
                   torch.backends.cudnn.deterministic, torch.get_rng_state())
    saved_rng = (np.random.get_state(), random.getstate())
    saved_argv, saved_cwd, saved_env = sys.argv[:], os.getcwd(), dict(os.environ)
    for h in root.handlers[:]:
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    ours.handlers.clear()
    ours.setLevel(logging.NOTSET)
    GlobalHydra.instance().clear()
    sys.argv = [str(BIN / name), *args]
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        GlobalHydra.instance().clear()
        for logger, handlers in ((root, saved_logging[0]), (ours, saved_logging[2])):
            for h in logger.handlers[:]:
                if h not in handlers:
                    logger.removeHandler(h)
                    h.close()  # Hydra's train.log file handler among them
            for h in handlers:
                if h not in logger.handlers:
                    logger.addHandler(h)
        root.setLevel(saved_logging[1])
        ours.setLevel(saved_logging[3])
        ours.propagate = saved_logging[4]
        logging.disable(saved_logging[5])
        threads, det, warn_only, bench, cudnn_det, rng = saved_torch
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det
        torch.set_rng_state(rng)
        np.random.set_state(saved_rng[0])
        random.setstate(saved_rng[1])


def run_main(name: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """run_cli's twin in this process: the console script's `main` (from [project.scripts]) with
    sys.argv set, from `cwd`; the exit status from SystemExit, stdout and stderr captured (log
    records and warnings included, as a fresh process would print them). For bad-input checks
    that would otherwise pay a torch/Hydra import per subprocess."""
    module, _, function = console_scripts()[name].partition(":")
    main = getattr(importlib.import_module(module), function)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _as_a_fresh_process(name, args, cwd), warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for category in _PROCESS_WARNING_IGNORES:
            warnings.filterwarnings("ignore", category=category)
        # An earlier test may have imported JAX (the TF-Lite converter) into this process, which then warns
        # at every fork (DataLoader workers); a console script's own process never has it.
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    stderr = err.getvalue() + "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
                                      for w in caught)
    proc = subprocess.CompletedProcess([name, *args], code, out.getvalue(), stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode} (in process)\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr}")
    return proc


def assert_one_line_error(proc, *needles, code=2):
    """Bad input: one line on stderr naming the problem, the exit code, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert lines[0].startswith(tuple(f"mobilenet-{c}: error:"
                                     for c in ("train", "eval", "import", "export", "bench", "report"))), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only on the project's machines)")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- data: photo-like images, odd datasets


TINY_FOLDER = [o for o in TINY if not o.startswith("data.generate.")]  # TINY for a dataset on disk
WNIDS = ["n00000001", "n00000002", "n00000003"]
SMALL = {"train": 16, "val": 6, "classes": 3}


def photo(width=1200, height=900, seed=0) -> Image.Image:
    """A smooth photo-like RGB image (gradients + a few shapes): JPEG-friendly, not flat."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    img = np.stack([128 + 100 * np.sin(x / (60 + 20 * c) + rng.uniform(0, 6)) * np.cos(y / (80 + 10 * c))
                    for c in range(3)], -1)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def save_jpeg(path, img=None, **kw):
    (img or photo()).save(path, format="JPEG", quality=kw.pop("quality", 92), **kw)
    return path


def odd_dataset(root, truncated=True):
    """3 classes in ImageFolder layout with the odd files real datasets hold."""
    for split in ("train", "val"):
        for c, wnid in enumerate(["n01", "n02", "n03"]):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(4):
                save_jpeg(d / f"{wnid}_{i}.JPEG", photo(160, 120, seed=c * 10 + i))
        d = root / split / "n01"
        photo(150, 100, seed=7).convert("CMYK").save(d / "cmyk.JPEG", format="JPEG")
        photo(150, 100, seed=8).convert("L").save(d / "grey.JPEG", format="JPEG")
        photo(150, 100, seed=9).save(d / "png_named.JPEG", format="PNG")
        (d / ".DS_Store").write_bytes(b"\0junk")
        (d / "._n01_0.JPEG").write_bytes(b"\0\5\26\7appledouble")
        (d / "notes.txt").write_text("not an image")
        (root / split / ".ipynb_checkpoints").mkdir()
    (root / "train" / "n02" / "empty_sub").mkdir()  # a stray directory inside a class
    if truncated:
        good = (root / "train" / "n02" / "n02_0.JPEG").read_bytes()
        (root / "train" / "n02" / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    return root


def data_config(compose, root, *extra):
    return compose(*TINY_FOLDER, "data=imagenet", f"data.root={root}", "data.num_classes=3", "data.batch_size=4",
                   "data.eval_batch_size=8", "data.num_workers=0", *extra)


def jpeg_bytes(img, fmt="JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_ilsvrc(src):
    """ILSVRC2012 layout in miniature: a train tar of per-class tars, a flat val tar, a label list."""
    src.mkdir()
    with tarfile.open(src / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(WNIDS):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tar:
                for i in range(4):
                    add(tar, f"{wnid}_{i}.JPEG", jpeg_bytes(photo(160, 120, seed=10 * c + i), quality=90))
                if c == 0:
                    add(tar, f"{wnid}_cmyk.JPEG", jpeg_bytes(photo(130, 100, seed=91).convert("CMYK")))
                    add(tar, f"{wnid}_grey.JPEG", jpeg_bytes(photo(130, 100, seed=92).convert("L")))
                    add(tar, f"{wnid}_png.JPEG", jpeg_bytes(photo(130, 100, seed=93), fmt="PNG"))
                if c == 1:
                    good = jpeg_bytes(photo(160, 120, seed=94))
                    add(tar, f"{wnid}_truncated.JPEG", good[: len(good) // 3])
            add(outer, f"{wnid}.tar", inner.getvalue())
    labels = []
    with tarfile.open(src / "ILSVRC2012_img_val.tar", "w") as tar:
        for n in range(1, 7):
            add(tar, f"ILSVRC2012_val_{n:08d}.JPEG", jpeg_bytes(photo(140, 110, seed=100 + n)))
            labels.append(f"ILSVRC2012_val_{n:08d}.JPEG {n % 3}")
    (src / "ILSVRC2012_val_labels.txt").write_text("\n".join(labels) + "\n")
    return src


def prepared_imagenet(tmp_path):
    """(SRC, DEST): the miniature archives and the ImageFolder tree `prepare` made of them."""
    from mobilenet_train.data.prepare import prepare

    src = make_ilsvrc(tmp_path / "src")
    dest = tmp_path / "imagenet"
    r = prepare(src, dest, expect=SMALL, progress=False)
    assert r["problems"] == [] and (r["train"], r["val"], r["classes"]) == (16, 6, 3)
    return src, dest


# ----------------------------------------------------------------------------- engine: in-process runs


def job_config(*overrides: str) -> DictConfig:
    """The real config with `overrides`, as `fit` receives it from Hydra (no `hydra` node)."""
    from mobilenet_train.config import compose

    return compose([*TINY, *overrides], hydra=False)


def fit_in_process(run_dir: Path, *overrides: str) -> dict:
    from mobilenet_train.engine import fit

    return fit(job_config(*overrides), run_dir)


def float_entries(state: dict) -> dict:
    """The floating-point tensors of a state dict (EMA keys lose their `module.` prefix)."""
    return {k.removeprefix("module."): v for k, v in state.items() if v.is_floating_point()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_parts(loss_scale: float):
    """TrainParts of a linear classifier over 4x4 images, its loss multiplied by `loss_scale`."""
    from mobilenet_train.data import DevicePreprocess
    from mobilenet_train.engine import TrainParts

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = types.SimpleNamespace(step_update=lambda num_updates: None)
    ce = torch.nn.CrossEntropyLoss()
    return TrainParts(model, model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                      lambda logits, y: ce(logits, y) * loss_scale,
                      DevicePreprocess("imagenet", torch.device("cpu"), False), None, None)


def tiny_batches(n: int) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8, generator=g),
             torch.randint(0, 3, (2,), generator=g)) for _ in range(n)]


def run_epoch(parts, batches, state, **tcfg):
    """`train_one_epoch` over `batches`, alone or as one rank of a process group."""
    from mobilenet_train import distributed
    from mobilenet_train.engine import train_one_epoch

    settings = {"accum_steps": 1, "log_every_steps": 1, "checkpoint_every_steps": 0, "grad_clip": 0.0,
                "max_loss_ratio": 1000.0, **tcfg}
    dist_info = distributed.DistInfo(distributed.dist.get_rank(), distributed.dist.get_world_size()) \
        if distributed.is_initialized() else distributed.DistInfo()
    return train_one_epoch(parts, batches, state, OmegaConf.create(settings), "epoch 1/1", None, False, dist_info)


def diverge_on_rank_one(rank: int, port: int, results) -> None:
    """One of two gloo ranks: rank 1's loss is NaN from the first step on. Reports what it raised."""
    import datetime

    import torch.distributed as dist

    from mobilenet_train.engine import TrainState

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    try:
        run_epoch(tiny_parts(float("nan") if rank == 1 else 1.0), tiny_batches(4), TrainState())
        results.put((rank, "finished"))
    except Exception as e:  # noqa: BLE001 - the test compares what each rank raised
        results.put((rank, type(e).__name__))


# Every key of a training checkpoint (last.pt, best.pt): users and tools read them, so none may go.
TRAINING_CHECKPOINT_KEYS = {
    "format", "format_version", "model", "model_args", "config", "classes", "complexity", "metrics",
    "epoch", "step", "batches_done", "best_val_top1", "best_epoch", "finished", "optimizer", "scheduler",
    "scaler", "ema", "rng", "rng_per_rank", "world_size", "epoch_totals_per_rank", "teacher",
}


# ----------------------------------------------------------------------------- deploy: checkpoints, files


SAMPLES = ("data", "imagenet-samples")


class ArchCheckpoints(dict):
    """{(alpha, resolution): checkpoint}, each built on first use: alpha 1.0 and 0.25 at 64 and 96 px
    (96: TF-same padding), random weights with measured BN statistics."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, key):
        from mobilenet_train.deploy.latency import random_checkpoint

        alpha, res = key
        self[key] = random_checkpoint([f"model.alpha={alpha}", f"model.resolution={res}", "model.num_classes=10",
                                       "data.num_classes=10", *(["model.padding=tf_same"] if res == 96 else [])],
                                      self.root / f"a{alpha}_r{res}.pt")
        return self[key]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def run_export(*args, cwd):
    return run_cli("mobilenet-export", *args, cwd=cwd, check=False)


def tflite_operators(path) -> list[tuple[str, object, object]]:
    """(operator name, operator, subgraph) of a .tflite file's main graph, in order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    codes, graph = model.operatorCodes, model.subgraphs[0]
    return [(names[max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)], op, graph)
            for op in graph.operators]


def tflite_ops(path) -> dict:
    return Counter(name for name, _, _ in tflite_operators(path))


def tb_hparams(run_dir: Path) -> dict:
    """The HParams summary of a run's TensorBoard dir: {name: HParam value proto}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    hparams = {}
    for raw in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            hparams = dict(data.session_start_info.hparams.items())
    return hparams

# ----------------------------------------------------------------------------- detection

# The embedded detection set and an SSD small enough for an epoch in seconds on 2 cores.
TINY_DET = [
    "+experiment=ssd_shapes",
    "data.shapes_det.image_size=64",
    "data.shapes_det.train_images=16",
    "data.shapes_det.val_images=8",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.num_workers=0",
    "model.resolution=64",
    "trainer.epochs=1",
    "trainer.log_every_steps=1",
    "trainer.progress=false",
]


def coco_json(path: Path, images: list[tuple[int, int, int]], anns: list[dict], categories=(1, 2)) -> Path:
    """A COCO instances file: images (id, width, height) named <id>.jpg, the given annotations."""
    data = {"images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h} for i, w, h in images],
            "annotations": [{"id": k + 1, "iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a}
                            for k, a in enumerate(anns)],
            "categories": [{"id": c, "name": f"cat{c}"} for c in categories]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(__import__("json").dumps(data))
    return path


# ----------------------------------------------------------------------------- timm's MobileNet v1 files


def timm_batch(paths, size: int = 224) -> torch.Tensor:
    """Images squashed to size x size, as x / 127.5 - 1 (timm's MobileNet v1 normalization): BN calibration."""
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1


def random_timm_model(name: str, images: torch.Tensor, num_classes: int = 1000, seed: int = 0,
                      measured_bn: bool = True):
    """timm.create_model(name, pretrained=False) with random weights and the classifier centred on `images`' mean
    features, so predictions differ between images. `measured_bn`: BN's scale and shift drawn at random and its
    statistics measured on `images`, so every tensor of the state dict shows in the logits (but the network
    turns chaotic: pixel-level input changes flip predictions); else timm's own BN (statistics 0 and 1), a
    network whose predictions are stable under such changes."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    if measured_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
                m.momentum = None  # a cumulative average over the batch below
        model.train()
        with torch.no_grad():
            model(images)
    model.eval()
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        model.classifier.bias.copy_(-model.classifier.weight @ features.mean(0))
    return model


def save_safetensors(model, path: Path) -> Path:
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(path))
    return path
