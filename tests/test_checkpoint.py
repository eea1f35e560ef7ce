"""Checkpoints: the one model payload, the Checkpointer's last.pt/best.pt, rebuilding a model."""

from __future__ import annotations

import types

import pytest
import torch
from helpers import TRAINING_CHECKPOINT_KEYS
from timm.utils import ModelEmaV3

from mobilenet_train.checkpoint import (
    Checkpointer,
    load_checkpoint,
    model_from_checkpoint,
    model_payload,
    save_checkpoint,
)
from mobilenet_train.engine import TrainState
from mobilenet_train.errors import UserError
from mobilenet_train.model import MobileNetV1, ModelArgs

ARGS = ModelArgs(alpha=0.25, resolution=32, num_classes=10)
DESCRIBE = {"args": ARGS, "config": {"data": {"name": "shapes"}}, "classes": [f"c{i}" for i in range(10)],
            "complexity": {"params": 1, "mult_adds": 2}}


def _parts(ema: bool):
    torch.manual_seed(0)
    model = MobileNetV1(ARGS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return types.SimpleNamespace(model=model, optimizer=optimizer,
                                 scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1),
                                 scaler=torch.amp.GradScaler("cpu", enabled=False),
                                 ema=ModelEmaV3(model) if ema else None)


def test_model_payload_rebuilds_the_model(tmp_path):
    model = _parts(ema=False).model
    payload = model_payload(model, ARGS, DESCRIBE["config"], None, DESCRIBE["complexity"], **{"import": {"x": 1}})
    assert payload["metrics"] == {} and payload["epoch"] == payload["step"] == 0 and payload["import"] == {"x": 1}
    save_checkpoint(tmp_path / "w.pt", payload)
    ckpt = load_checkpoint(tmp_path / "w.pt")
    rebuilt, args = model_from_checkpoint(ckpt)
    assert args == ARGS
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    with pytest.raises(UserError, match="no EMA weights"):
        model_from_checkpoint(ckpt, use_ema=True)


def test_checkpointer_writes_last_and_best_with_the_training_state(tmp_path):
    parts = _parts(ema=True)
    ckpt = Checkpointer(tmp_path / "checkpoints", parts, DESCRIBE, epochs=2)
    state = TrainState(epoch=1, step=6, best_val_top1=50.0, best_epoch=1)
    ckpt.save(state, {"val_top1": 50.0}, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), finished_epoch=True)
    last = load_checkpoint(ckpt.last)
    assert set(last) == TRAINING_CHECKPOINT_KEYS
    assert not (tmp_path / "checkpoints" / "best.pt").exists()
    assert (last["epoch"], last["step"], last["batches_done"], last["best_epoch"]) == (1, 6, 0, 1)
    assert last["metrics"] == {"val_top1": 50.0} and last["classes"] == DESCRIBE["classes"]
    assert not last["finished"]  # epoch 1 of 2
    assert last["world_size"] == 1 and last["epoch_totals_per_rank"] == [[1.0, 2.0, 3.0]]
    assert torch.equal(last["rng"]["torch"], last["rng_per_rank"][0]["torch"])
    assert last["ema"].keys() == parts.ema.state_dict().keys()
    # The last epoch, and the best so far: both files, the run marked finished.
    state.epoch = 2
    ckpt.save(state, {}, torch.zeros(3, dtype=torch.float64), finished_epoch=True, is_best=True)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["finished"] and load_checkpoint(ckpt.last)["epoch"] == best["epoch"] == 2


def test_checkpointer_step_checkpoints_every_n_steps(tmp_path):
    every_4 = Checkpointer(tmp_path, _parts(ema=False), DESCRIBE, epochs=1, every_steps=4)
    assert [s for s in range(1, 13) if every_4.step_due(s)] == [4, 8, 12]
    assert not any(Checkpointer(tmp_path, None, DESCRIBE, epochs=1).step_due(s) for s in range(1, 13))
