"""End-to-end, in subprocesses: real training runs of the console scripts on a tiny generated dataset
(the engine itself is tested in process in test_engine.py)."""

import json
import math

import pytest
import torch
from helpers import TINY

from mobilenet_train.checkpoint import load_checkpoint

METRIC_KEYS = {"epoch", "step", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
               "images_per_sec", "data_wait_share"}
EVAL_KEYS = {"top1", "top5", "loss", "num_images", "params", "mult_adds", "images_per_sec", "checkpoint",
             "alpha", "resolution"}


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_all_artifacts(trained_run):
    lines = _metrics(trained_run)
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert METRIC_KEYS <= m.keys()
        assert 0 <= m["val_top1"] <= m["val_top5"] <= 100
        assert 0 <= m["data_wait_share"] <= 1 and m["images_per_sec"] > 0
        assert m["alpha"] == 0.25 and m["resolution"] == 32 and m["mult_adds"] > 0
    assert lines[1]["step"] == 2 * lines[0]["step"] == 2 * (240 // 40)
    assert list((trained_run / "tb").glob("events.out.tfevents.*"))
    last = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    best = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    assert last["epoch"] == 2 and last["finished"] and last["step"] == lines[1]["step"]
    assert best["epoch"] == best["best_epoch"]
    assert best["metrics"]["val_top1"] == max(m["val_top1"] for m in lines)
    for key in ("model", "model_args", "config", "complexity", "optimizer", "scheduler", "scaler", "rng", "classes"):
        assert key in last, key
    assert last["model_args"]["alpha"] == 0.25 and last["config"]["data"]["name"] == "shapes"
    assert last["complexity"]["params"] == sum(v.numel() for k, v in last["model"].items()
                                               if not k.endswith(("running_mean", "running_var",
                                                                  "num_batches_tracked")))
    assert len(last["optimizer"]["state"]) > 0
    assert not list((trained_run / "checkpoints").glob(".*tmp*"))  # atomic writes leave no temp files


def test_tensorboard_has_train_val_and_hparams(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/images_per_sec", "train/data_wait_share", "val/loss",
                "val/top1", "val/top5", "epoch/train_top1"):
        assert tag in tags, tag
    assert acc.Scalars("val/top1")[-1].value == pytest.approx(_metrics(trained_run)[-1]["val_top1"])
    # The HParams tab: alpha, resolution, mult-adds and params with the final metrics.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    assert content, "no hparams summary"
    hparams = {}
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            hparams = {k: v for k, v in data.session_start_info.hparams.items()}
    assert hparams["alpha"].number_value == 0.25 and hparams["resolution"].number_value == 32
    assert hparams["mult_adds"].number_value > 0 and hparams["params"].number_value > 0
    assert hparams["variant"].string_value == "separable" and hparams["dataset"].string_value == "shapes"


def test_eval_reproduces_recorded_accuracy(trained_run, cli, tmp_path):
    out = tmp_path / "eval.json"
    proc = cli("mobilenet-eval", str(trained_run / "checkpoints" / "best.pt"), f"out={out}", "data.num_workers=0",
               cwd=tmp_path)
    result = json.loads(out.read_text())
    assert EVAL_KEYS <= result.keys()
    best = max(_metrics(trained_run), key=lambda m: m["val_top1"])
    assert abs(result["top1"] - best["val_top1"]) < 0.1
    assert abs(result["top5"] - best["val_top5"]) < 0.1
    assert result["loss"] == pytest.approx(best["val_loss"], rel=1e-4)
    assert result["num_images"] == 80 and result["alpha"] == 0.25 and result["resolution"] == 32
    assert f"{result['top1']:.2f}%" in proc.stdout


def test_eval_json_defaults_beside_checkpoint(trained_run, cli, tmp_path):
    cli("mobilenet-eval", str(trained_run / "checkpoints" / "last.pt"), "data.batch_size=16", cwd=tmp_path)
    result = json.loads((trained_run / "checkpoints" / "eval.json").read_text())
    assert result["top1"] == pytest.approx(_metrics(trained_run)[-1]["val_top1"], abs=0.1)


def test_finished_run_does_nothing(trained_run, cli):
    before = (trained_run / "checkpoints" / "last.pt").stat().st_mtime_ns
    proc = cli("mobilenet-train", *TINY, "trainer.epochs=2", f"hydra.run.dir={trained_run}", cwd=trained_run.parent)
    assert "already finished" in proc.stdout + proc.stderr
    assert (trained_run / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    assert len(_metrics(trained_run)) == 2


def test_resume_continues_at_the_right_epoch_with_optimizer_state(cli, tmp_path):
    """1 epoch, then 'interrupted'; started again with 2 epochs it resumes and ends where an
    uninterrupted 2-epoch run ends (same data order, RNG and optimizer state)."""
    common = [*TINY, "trainer.deterministic=true"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    cli("mobilenet-train", *common, "trainer.epochs=2", f"hydra.run.dir={straight}", cwd=tmp_path)
    cli("mobilenet-train", *common, "trainer.epochs=1", f"hydra.run.dir={split}", cwd=tmp_path)
    after_one = load_checkpoint(split / "checkpoints" / "last.pt")
    proc = cli("mobilenet-train", *common, "trainer.epochs=2", f"hydra.run.dir={split}", cwd=tmp_path)
    assert "resumed from" in proc.stdout + proc.stderr
    assert [m["epoch"] for m in _metrics(split)] == [1, 2]
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(split / "checkpoints" / "last.pt")
    assert b["epoch"] == 2 and b["step"] == a["step"] == 2 * after_one["step"]
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-5, atol=1e-6, msg=k)
    # The optimizer state was carried over (not rebuilt): RMSProp's mean square left its init.
    sq = [s["square_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.isfinite(t).all() for t in sq) and any((t - 1).abs().max() > 1e-3 for t in sq)
    assert _metrics(split)[1]["val_top1"] == pytest.approx(_metrics(straight)[1]["val_top1"], abs=1e-6)


def test_resume_from_explicit_path(trained_run, cli, tmp_path):
    run = tmp_path / "finetune"
    proc = cli("mobilenet-train", *TINY, "trainer.epochs=3",
               f"trainer.resume={trained_run / 'checkpoints' / 'last.pt'}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert "resumed from" in proc.stdout + proc.stderr
    assert [m["epoch"] for m in _metrics(run)] == [3]


def test_bf16_autocast_and_ema_and_accumulation(cli, tmp_path):
    run = tmp_path / "bf16"
    cli("mobilenet-train", *TINY, "trainer.amp=bf16", "trainer.ema.enabled=true", "trainer.ema.decay=0.5",
        "trainer.accum_steps=2", "trainer.grad_clip=1.0", "trainer.channels_last=false", "optim=sgd",
        f"hydra.run.dir={run}", cwd=tmp_path)
    m = _metrics(run)[0]
    assert math.isfinite(m["train_loss"]) and "val_ema_top1" in m
    assert m["step"] == 240 // 40  # accumulation splits a step, it does not add steps
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["ema"] is not None
    out = tmp_path / "ema.json"
    cli("mobilenet-eval", str(run / "checkpoints" / "last.pt"), "use_ema=true", f"out={out}", cwd=tmp_path)
    assert json.loads(out.read_text())["top1"] == pytest.approx(m["val_ema_top1"], abs=0.1)
