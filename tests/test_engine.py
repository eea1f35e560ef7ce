"""The training engine, in process: `fit` on the real config shrunk to a tiny run, and
`train_one_epoch` on hand-built parts (two gloo ranks where ranks must agree)."""

from __future__ import annotations

import logging
import multiprocessing

import pytest
import torch
from helpers import (
    TRAINING_CHECKPOINT_KEYS,
    diverge_on_rank_one,
    fit_in_process,
    float_entries,
    free_port,
    run_epoch,
    tiny_batches,
    tiny_parts,
)

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.engine import TrainState

EXACT = ["trainer.deterministic=true"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    """trainer.deterministic=true switches torch to deterministic algorithms for the process."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _last(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name, tensor in a.items() if not torch.equal(tensor, b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_ema_enabled_on_resume_starts_from_the_resumed_weights(tmp_path):
    run = tmp_path / "run"
    fit_in_process(run, "trainer.epochs=1")
    first = _last(run)
    assert first["ema"] is None
    # Decay 1: after its first update the EMA stays where it started.
    fit_in_process(run, "trainer.epochs=2", "trainer.ema.enabled=true", "trainer.ema.decay=1.0")
    second = _last(run)
    assert second["epoch"] == 2 and second["ema"] is not None
    _assert_same_weights(float_entries(second["ema"]), float_entries(first["model"]))


def test_leftover_micro_batches_do_not_leak_into_the_next_step():
    # 3 micro-batches, 2 per step: one step; the third micro-batch is not trained on.
    parts, state = tiny_parts(1.0), TrainState()
    run_epoch(parts, tiny_batches(3), state, accum_steps=2)
    assert state.step == 1
    assert all(p.grad is None for p in parts.model.parameters())


def test_resume_is_exact_when_the_epoch_does_not_divide_into_steps(tmp_path):
    # Batch 96 in 2 micro-batches of 48: 240 images give 5 micro-batches, 2 steps and one left over.
    common = [*EXACT, "data.batch_size=96", "trainer.accum_steps=2"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit_in_process(straight, *common, "trainer.epochs=2")
    fit_in_process(split, *common, "trainer.epochs=1")
    fit_in_process(split, *common, "trainer.epochs=2")
    a, b = _last(straight), _last(split)
    assert a["step"] == b["step"] == 2 * 2
    _assert_same_weights(a["model"], b["model"])


def test_a_non_finite_loss_on_one_rank_stops_every_rank():
    ctx = multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=diverge_on_rank_one, args=(rank, port, results)) for rank in range(2)]
    for p in procs:
        p.start()
    raised = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert raised == {0: "TrainingDiverged", 1: "TrainingDiverged"}


def test_step_checkpoints_and_mid_epoch_resume(tmp_path, monkeypatch, caplog):
    """6 steps an epoch, a step checkpoint every 4: the one at step 4 is mid-epoch, and a run
    resumed from it ends with the weights of a run never stopped."""
    straight, steps, resumed = tmp_path / "straight", tmp_path / "steps", tmp_path / "resumed"
    fit_in_process(straight, *EXACT)
    real_save = torch.save
    kept = tmp_path / "step_checkpoints"
    kept.mkdir()

    def save_and_keep_mid_epoch(obj, f, *args, **kwargs):  # a copy of each mid-epoch checkpoint
        real_save(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("batches_done"):
            real_save(obj, kept / f"step{obj['step']}.pt")

    monkeypatch.setattr(torch, "save", save_and_keep_mid_epoch)
    fit_in_process(steps, *EXACT, "trainer.checkpoint_every_steps=4")
    monkeypatch.undo()
    ckpt = _last(steps)
    assert ckpt["epoch"] == 1 and ckpt["batches_done"] == 0  # the end-of-epoch save came last
    assert set(ckpt) == TRAINING_CHECKPOINT_KEYS
    assert [p.name for p in kept.iterdir()] == ["step4.pt"]
    mid = load_checkpoint(kept / "step4.pt")
    assert mid["epoch"] == 0 and mid["step"] == mid["batches_done"] == 4 and not mid["finished"]

    (resumed / "checkpoints").mkdir(parents=True)
    (kept / "step4.pt").rename(resumed / "checkpoints" / "last.pt")
    with caplog.at_level(logging.INFO, logger="mobilenet_train"):
        fit_in_process(resumed, *EXACT)
    assert "4 batches into the epoch" in caplog.text
    b = _last(resumed)
    assert b["epoch"] == 1 and b["step"] == 6
    _assert_same_weights(_last(straight)["model"], b["model"])


def test_training_wrapper_compiles_in_the_configured_mode(monkeypatch):
    """trainer.compile_mode reaches torch.compile (default: torch's own default, mode=None)."""
    from mobilenet_train.distributed import DistInfo
    from mobilenet_train.engine.setup import training_wrapper

    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    model = torch.nn.Linear(2, 2)
    assert training_wrapper(model, DistInfo(), torch.device("cpu"), False, "reduce-overhead") is model
    training_wrapper(model, DistInfo(), torch.device("cpu"), True, "reduce-overhead")
    training_wrapper(model, DistInfo(), torch.device("cpu"), True)
    assert modes == ["reduce-overhead", None]


def test_an_exploding_loss_stops_before_a_checkpoint():
    """A loss that stays finite but grows past trainer.max_loss_ratio times its first value stops the run."""
    from mobilenet_train.errors import TrainingDiverged

    parts, scale = tiny_parts(1.0), [1.0]
    loss_fn = parts.loss_fn

    def growing(logits, y):
        scale[0] *= 10
        return loss_fn(logits, y) * scale[0]

    parts.loss_fn = growing
    exploded = r"exploded to 5.8\d+e\+04 at step 3 .*max_loss_ratio=1000 times its first logged value 18\."
    with pytest.raises(TrainingDiverged, match=exploded):
        run_epoch(parts, tiny_batches(8), TrainState())
    parts, scale[0] = tiny_parts(1.0), 1.0
    parts.loss_fn = growing
    assert run_epoch(parts, tiny_batches(8), TrainState(), max_loss_ratio=0)["train_loss"] > 1e6  # 0: never
