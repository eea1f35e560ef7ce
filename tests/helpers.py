"""Engine test helpers: in-process training runs and a two-process gloo group."""

from __future__ import annotations

import socket
import types
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from conftest import TINY


def job_config(*overrides: str) -> DictConfig:
    """The real config with `overrides`, as `fit` receives it from Hydra (no `hydra` node)."""
    from mobilenet_train.cli import compose_config

    cfg = compose_config([*TINY, *overrides])
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


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

    settings = {"accum_steps": 1, "log_every_steps": 1, "checkpoint_every_steps": 0, "grad_clip": 0.0, **tcfg}
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
    "scaler", "ema", "rng", "rng_per_rank", "world_size", "epoch_totals_per_rank",
}
