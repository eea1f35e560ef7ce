"""Two-process DDP on CPU (gloo): the CPU twin of multi-GPU NCCL training."""

import json
import os
import subprocess

import pytest

from conftest import BIN, TINY
from mobilenet_train.checkpoint import load_checkpoint


def test_two_process_gloo_run(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train",
           *TINY, "trainer.device=cpu", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1  # only rank 0 writes
    m = lines[0]
    # Global batch 40 = 2 ranks x 20: as many optimizer steps as one process with batch 40.
    assert m["step"] == 240 // 40
    assert m["val_num_images"] == 80  # each rank evaluated half; the sums were all-reduced
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1


def test_global_batch_must_divide_by_world_size(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train",
           *TINY, "data.batch_size=41", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.batch_size=41 is not divisible by world size x trainer.accum_steps = 2 x 1" in proc.stderr
    # (torchrun itself prints a traceback of its own when a child fails; ours is the one line.)
    assert "mobilenet-train: error: data.batch_size=41" in proc.stderr
