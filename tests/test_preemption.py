"""Preemption and exact resume: a run stopped by SIGTERM mid-epoch and resumed ends bit-identical
to a run that was never interrupted (trainer.deterministic=true, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import torch
from helpers import BIN, TINY

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.data import EpochSampler
from mobilenet_train.preemption import EXIT_PREEMPTED

# 240 images, batch 8: 30 steps an epoch, so a signal sent at step 3 lands mid-epoch. Every augmentation
# is on: RandAugment in the loader worker, random erasing and mixup/cutmix on the batch.
EXACT = [*TINY, "trainer.epochs=2", "trainer.deterministic=true", "data.batch_size=8", "trainer.log_every_steps=1",
         "data.num_workers=1", "model.dropout=0.2", "trainer.ema.enabled=true", "data.auto_augment=rand-m9-mstd0.5",
         "data.random_erasing=0.5", "data.mixup=0.2", "data.cutmix=1.0", "optim.label_smoothing=0.1"]


def _train(run_dir, *extra, stop_at_step=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(BIN / "mobilenet-train"), *EXACT, *extra, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        out.append(line)
        if stop_at_step is not None and f"epoch 1/2 step {stop_at_step}:" in line:
            proc.send_signal(signal.SIGTERM)
            stop_at_step = None
        assert time.monotonic() < deadline, "".join(out)
    return proc.wait(), "".join(out)


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigterm_mid_epoch_checkpoints_and_resumes_bit_identical(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    rc, out = _train(straight)
    assert rc == 0, out

    rc, out = _train(interrupted, stop_at_step=3)
    assert rc == EXIT_PREEMPTED, out
    assert "SIGTERM received: stopping after this step" in out
    stopped = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert stopped["epoch"] == 0 and 3 <= stopped["batches_done"] < 30, stopped["batches_done"]
    assert stopped["step"] == stopped["batches_done"]
    assert not (interrupted / "metrics.jsonl").exists()  # no epoch finished

    rc, out = _train(interrupted)  # trainer.resume=auto picks up last.pt
    assert rc == 0, out
    assert f"{stopped['batches_done']} batches into the epoch" in out

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 60
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name  # bit-identical, BN buffers included
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), f"ema {name}"
    ma, mb = _metrics(straight), _metrics(interrupted)
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_ema_top1", "step"):
        assert [m[key] for m in ma] == [m[key] for m in mb], key


def test_sampler_resumes_at_the_position_without_repeats_or_gaps():
    for world_size in (1, 2):
        for rank in range(world_size):
            full = EpochSampler(103, shuffle=True, seed=5, rank=rank, world_size=world_size)
            full.set_epoch(3)
            order = list(full)
            resumed = EpochSampler(103, shuffle=True, seed=5, rank=rank, world_size=world_size)
            resumed.set_epoch(3, start=17)
            assert order[:17] + list(resumed) == order
            assert len(resumed) == len(order) - 17
    # Ranks together cover every sample (padding repeats at most world_size - 1 of them).
    shares = []
    for rank in range(2):
        s = EpochSampler(103, shuffle=True, seed=5, rank=rank, world_size=2)
        s.set_epoch(3)
        shares += list(s)
    assert set(shares) == set(range(103)) and len(shares) == 104
    # Deterministic per epoch, different between epochs.
    s = EpochSampler(103, shuffle=True, seed=5)
    s.set_epoch(1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) == first
    s.set_epoch(2)
    assert list(s) != first
