"""task=detection end to end through the installed commands: mobilenet-train (checkpoints, metrics.jsonl,
resume), mobilenet-eval (COCOeval into eval.json), mobilenet-export (ONNX checked against PyTorch), and a
short CPU training run that clears an mAP bar an untrained detector cannot."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TINY_DET, run_cli

pytestmark = pytest.mark.slow


def test_train_eval_export_resume(tmp_path):
    run = tmp_path / "run"
    run_cli("mobilenet-train", *TINY_DET, f"hydra.run.dir={run}", cwd=tmp_path)
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("val_map", "val_map_50", "val_map_75", "val_map_small", "val_map_medium", "val_map_large",
                "best_val_map", "train_loss"):
        assert key in line, key
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["model_args"]["task"] == "detection" and ckpt["config"]["task"] == "detection"
    assert (run / "checkpoints" / "best.pt").is_file()

    run_cli("mobilenet-eval", str(run / "checkpoints" / "best.pt"), "device=cpu", cwd=tmp_path)
    result = json.loads((run / "checkpoints" / "eval.json").read_text())
    assert result["task"] == "detection" and result["num_images"] == 8
    assert result["map"] == pytest.approx(line["val_map"], abs=1e-6)  # the same model, the same split

    proc = run_cli("mobilenet-export", str(run / "checkpoints" / "best.pt"), "--format", "onnx",
                   f"out={tmp_path / 'det.onnx'}", "num_verify=4", cwd=tmp_path)
    assert "NMS is post-processing" in proc.stdout and (tmp_path / "det.onnx").is_file()
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["boxes", "scores"]

    # Two epochs asked for: the run resumes from last.pt and trains only the second.
    proc = run_cli("mobilenet-train", *TINY_DET, f"hydra.run.dir={run}", "trainer.epochs=2", cwd=tmp_path)
    assert "resumed from" in proc.stderr + proc.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]


# 16 embedded images at 64 px, scored by COCOeval on those same images after 80 SGD steps: the whole path
# (data, matcher and losses, optimizer, checkpoint, evaluation) has to work for the detector to find them.
# Held-out images need far longer training than a CPU test allows (docs/benchmarks.md).
SHORT_RUN = ["+experiment=ssd_shapes", "data.shapes_det.image_size=64", "model.resolution=64",
             "data.shapes_det.train_images=16", "data.shapes_det.val_images=8", "data.val_split=train",
             "data.batch_size=8", "data.eval_batch_size=16", "optim=sgd", "optim.lr=1.6", "trainer.epochs=40",
             "trainer.eval_every_epochs=40", "data.num_workers=0", "trainer.progress=false"]
MAP50_BAR = 15.0  # percent


def test_short_cpu_training_clears_an_map_bar(tmp_path):
    run = tmp_path / "run"
    run_cli("mobilenet-train", *SHORT_RUN, f"hydra.run.dir={run}", cwd=tmp_path, timeout=1800)
    trained = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # The same model and data untrained (one epoch at a learning rate that changes nothing), scored alike.
    untrained = tmp_path / "untrained"
    run_cli("mobilenet-train", *SHORT_RUN, f"hydra.run.dir={untrained}", "trainer.epochs=1", "optim.lr=1e-9",
            "sched.warmup_epochs=0", cwd=tmp_path, timeout=900)
    before = json.loads((untrained / "metrics.jsonl").read_text().splitlines()[-1])
    assert before["val_map_50"] < MAP50_BAR / 10, before
    assert trained["val_map_50"] > MAP50_BAR, trained


def test_two_gloo_processes_score_every_val_image_once(tmp_path):
    """DDP detection: each rank detects on its share of an odd-sized val split, rank 0 scores them all; the
    numbers equal a one-process mobilenet-eval of the same checkpoint (no image lost or counted twice)."""
    import os
    import subprocess

    from helpers import BIN

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train", *TINY_DET,
           "data.shapes_det.val_images=7", "trainer.device=cpu", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # rank 0 alone writes
    assert line["step"] == 16 // 8 and line["val_num_images"] == 7
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2
    run_cli("mobilenet-eval", str(run / "checkpoints" / "last.pt"), "device=cpu", f"out={tmp_path / 'e.json'}",
            cwd=tmp_path)
    one = json.loads((tmp_path / "e.json").read_text())
    assert one["num_images"] == 7 and one["map"] > 0
    for key in ("map", "map_50", "map_75"):
        assert one[key] == pytest.approx(line[f"val_{key}"], rel=1e-3, abs=1e-6), key
