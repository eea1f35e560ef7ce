"""Two-process DDP on CPU (gloo): the CPU twin of multi-GPU NCCL training."""

import json
import os
import subprocess

from helpers import BIN, TINY

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


def test_two_processes_end_with_the_weights_of_one_process(tmp_path):
    """Same global batch, same samples, same augmentation (seeded per sample): 2 gloo ranks and one
    process take the same optimizer steps. BatchNorm would see 20 images per rank instead of 40
    (SyncBN has no CPU kernel), so this model is the BN-free variant; dropout is off."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    same = [*TINY, "trainer.device=cpu", "trainer.epochs=2", "model.norm=none", "model.dropout=0",
            "trainer.deterministic=true", "optim=sgd", "optim.lr=0.5"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([str(BIN / "mobilenet-train"), *same, f"hydra.run.dir={one}"], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=300)
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train",
                           *same, f"hydra.run.dir={two}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = load_checkpoint(one / "checkpoints" / "last.pt"), load_checkpoint(two / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    worst = max(((a["model"][k] - b["model"][k]).abs().max() / (a["model"][k].abs().max() + 1e-12)).item()
                for k in a["model"])
    moved = max((a["model"][k] - init).abs().max().item() for k, init in _initial_weights(same, tmp_path).items())
    assert moved > 1e-2          # training changed the weights...
    print(f"max relative weight difference 1 vs 2 processes: {worst:.2e} (weights moved up to {moved:.3f})")
    assert worst < 1e-4, worst   # ...and both runs agree to float32 summation order (measured 7e-7)
    ma, mb = (json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]) for d in (one, two))
    assert abs(ma["train_loss"] - mb["train_loss"]) < 1e-4
    assert ma["val_top1"] == mb["val_top1"]


def _initial_weights(overrides, tmp_path):
    from mobilenet_train.config import compose as compose_config
    from mobilenet_train.engine import seed_everything
    from mobilenet_train.model import build_model

    cfg = compose_config(list(overrides))
    seed_everything(int(cfg.seed))
    model, _ = build_model(cfg.model)
    return model.state_dict()
