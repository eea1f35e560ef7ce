"""Checkpoints: the one model payload, the Checkpointer's last.pt/best.pt (keep_last rotation, refusing
non-finite weights), the tensor digest, the fallback to the newest readable one, rebuilding a model."""

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
    newest_readable,
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


def _save_steps(ckpt: Checkpointer, *steps: int) -> None:
    for step in steps:
        ckpt.save(TrainState(epoch=0, step=step, batches_done=step), {}, torch.zeros(3, dtype=torch.float64), False)


def test_keep_last_rotates_and_a_smaller_one_drops_the_rest(tmp_path):
    parts = _parts(ema=False)
    ckpt = Checkpointer(tmp_path / "checkpoints", parts, DESCRIBE, epochs=1, keep_last=3)
    _save_steps(ckpt, 1, 2, 3, 4)
    names = sorted(p.name for p in ckpt.dir.iterdir())
    assert names == ["last.1.pt", "last.2.pt", "last.pt"]
    assert [load_checkpoint(ckpt.dir / n)["step"] for n in ("last.pt", "last.1.pt", "last.2.pt")] == [4, 3, 2]
    Checkpointer(ckpt.dir, parts, DESCRIBE, epochs=1, keep_last=1).save(
        TrainState(step=5), {}, torch.zeros(3, dtype=torch.float64), False)
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["last.pt"]


def test_newest_readable_skips_broken_files_and_says_why(tmp_path):
    """A flipped byte fails the tensor digest (torch's zip reader would load it); a kill between best.pt
    and last.pt, or inside a rotation, leaves a checkpoint that resumes."""
    parts = _parts(ema=False)
    ckpt = Checkpointer(tmp_path / "checkpoints", parts, DESCRIBE, epochs=1, keep_last=3)
    _save_steps(ckpt, 1, 2, 3)
    last = ckpt.dir / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(UserError, match="is corrupt: its tensors do not match the digest"):
        load_checkpoint(last)
    one = ckpt.dir / "last.1.pt"
    one.write_bytes(one.read_bytes()[: one.stat().st_size // 2])
    path, found, skipped = newest_readable(ckpt.dir)
    assert path.name == "last.2.pt" and found["step"] == 1
    assert [(p.name, r) for p, r in skipped] == [("last.pt", "corrupt (tensor digest mismatch)"),
                                                 ("last.1.pt", "truncated or corrupt (RuntimeError)")]
    # Killed after best.pt and before last.pt (the first epoch), or after last.pt became last.1.pt.
    for name in ("last.pt", "last.1.pt"):
        (ckpt.dir / name).unlink()
    (ckpt.dir / "last.2.pt").rename(ckpt.dir / "best.pt")
    assert newest_readable(ckpt.dir)[0].name == "best.pt"
    (ckpt.dir / "best.pt").rename(ckpt.dir / "last.1.pt")
    assert newest_readable(ckpt.dir)[:2][0].name == "last.1.pt" and newest_readable(ckpt.dir)[2] == []


def test_checkpointer_refuses_non_finite_weights(tmp_path):
    from mobilenet_train.errors import TrainingDiverged

    parts = _parts(ema=False)
    with torch.no_grad():
        next(parts.model.parameters())[0] = float("nan")
    ckpt = Checkpointer(tmp_path / "checkpoints", parts, DESCRIBE, epochs=1)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN/inf by step 7 \(.* and 0 more\)"):
        ckpt.save(TrainState(step=7), {}, torch.zeros(3, dtype=torch.float64), False)
    assert list(ckpt.dir.iterdir()) == []


def test_a_stop_signal_during_a_checkpoint_write_lets_it_finish(tmp_path, monkeypatch):
    """SIGTERM while last.pt is being written: the handler only sets the flag, the file is whole."""
    import builtins
    import os
    import signal

    from mobilenet_train import checkpoint
    from mobilenet_train.preemption import StopRequest

    class SignalMidWrite:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            os.kill(os.getpid(), signal.SIGTERM)
            self.f.write(bytes(data[len(data) // 2:]))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint, "open", lambda *a, **kw: SignalMidWrite(builtins.open(*a, **kw)), raising=False)
    with StopRequest() as stop:
        _save_steps(Checkpointer(tmp_path, _parts(ema=False), DESCRIBE, epochs=1), 3)
    assert stop.signum == signal.SIGTERM
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 3
