"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing half-written.

Most cases call the console script's `main` in this process (helpers.run_main: a subprocess
would pay ~5-8 s of torch and Hydra imports per line checked); one case per command runs the
installed script in a subprocess (the `cli` fixture, marked e2e), end to end.
"""

import argparse

import pytest
import torch
from helpers import TINY, assert_one_line_error, run_main


def train(run, tmp_path, *args):
    return run("mobilenet-train", *args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)


def test_missing_data_root(cli, tmp_path):
    """The installed script, in a subprocess: an error found inside the Hydra task."""
    assert_one_line_error(train(cli, tmp_path, "trainer.progress=false"), "data.root is not set", "train/")
    assert not (tmp_path / "run").exists()


def test_missing_data_root_in_process(tmp_path):
    """The same through run_main: what the in-process checks below rest on."""
    assert_one_line_error(train(run_main, tmp_path, "trainer.progress=false"), "data.root is not set", "train/")
    assert not (tmp_path / "run").exists()


def test_nonexistent_data_root(tmp_path):
    proc = train(run_main, tmp_path, "data.root=/nonexistent/imagenet")
    assert_one_line_error(proc, "/nonexistent/imagenet", "does not exist")
    assert not (tmp_path / "run").exists()


def test_wrong_layout(tmp_path):
    root = tmp_path / "flat"
    (root / "n01440764").mkdir(parents=True)
    (root / "n01440764" / "a.JPEG").write_bytes(b"")
    proc = train(run_main, tmp_path, f"data.root={root}")
    assert_one_line_error(proc, "no 'train/' directory", "n01440764")
    assert not (tmp_path / "run").exists()


def test_class_count_mismatch(tmp_path):
    proc = train(run_main, tmp_path, *TINY, "data.num_classes=7")
    assert_one_line_error(proc, "10 classes", "data.num_classes=10")


@pytest.mark.parametrize("override,needle", [
    ("model.alpah=0.5", "model.alpah"),
    ("+experiment=alpha_9", "alpha_9"),
    ("model.alpha=-1", "model.alpha=-1"),
    ("model.resolution=16", "model.resolution=16"),
    ("model.alpha=[", "model.alpha=["),
    ("optim=adafactor", "adafactor"),
    # What a new user tried on the release before the schema: tracebacks and silent accepts.
    ("optim.lr=-1", "optim.lr=-1 is not allowed"),
    ("seed=abc", "seed=abc is not allowed"),
    ("optim.momentum=2", "optim.momentum=2 is not allowed"),
    ("data.hflip=3", "data.hflip=3 is not allowed"),
    ("trainer.ema.decay=1.5", "trainer.ema.decay=1.5 is not allowed"),
    ("trainer.compile=maybe", "trainer.compile=maybe is not allowed"),
])
def test_bad_overrides(tmp_path, override, needle):
    assert_one_line_error(train(run_main, tmp_path, *TINY, override), needle)
    assert not (tmp_path / "run").exists()


def test_batch_not_divisible_by_accumulation(tmp_path):
    assert_one_line_error(train(run_main, tmp_path, *TINY, "trainer.accum_steps=3"), "data.batch_size=40")


def test_resume_with_another_optimizer(tmp_path, trained_run):
    proc = train(run_main, tmp_path, *TINY, "trainer.epochs=3", "optim=sgd",
                 f"trainer.resume={trained_run / 'checkpoints' / 'last.pt'}")
    assert_one_line_error(proc, "optim=rmsprop (config: sgd)")


def test_fp16_needs_cuda(tmp_path):
    assert_one_line_error(train(run_main, tmp_path, *TINY, "trainer.amp=fp16", "trainer.device=cpu"), "bf16")


def test_diverging_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    run_main("mobilenet-train", *TINY, "optim=sgd", f"hydra.run.dir={run}", cwd=tmp_path)
    good = (run / "checkpoints" / "last.pt").read_bytes()
    proc = train(run_main, tmp_path, *TINY, "optim=sgd", "trainer.epochs=2", "optim.lr=1e30",
                 "trainer.log_every_steps=1")
    assert_one_line_error(proc, "training loss became", code=3)
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


# ----------------------------------------------------------------------------- mobilenet-eval


def evaluate(run, tmp_path, *args):
    return run("mobilenet-eval", *args, cwd=tmp_path, check=False)


def test_eval_missing_checkpoint(cli, tmp_path):
    """The installed script, in a subprocess."""
    assert_one_line_error(evaluate(cli, tmp_path, str(tmp_path / "nope.pt")), "does not exist")


def test_eval_truncated_checkpoint(tmp_path, trained_run):
    data = (trained_run / "checkpoints" / "best.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    assert_one_line_error(evaluate(run_main, tmp_path, str(bad)), "truncated or corrupt")
    assert not (tmp_path / "eval.json").exists()


def test_eval_foreign_checkpoints(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    assert_one_line_error(evaluate(run_main, tmp_path, str(plain)), "not a mobilenet-train checkpoint")
    pickled = tmp_path / "pickled.pt"
    # Like many training scripts' checkpoints: an arbitrary object that weights_only=True refuses.
    torch.save({"args": argparse.Namespace(lr=0.1), "model": {}}, pickled)
    assert_one_line_error(evaluate(run_main, tmp_path, str(pickled)), "pickled.pt", "weights_only")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(evaluate(run_main, tmp_path, str(text)), "notes.txt")


def test_eval_override_that_contradicts_the_checkpoint(tmp_path, trained_run):
    proc = evaluate(run_main, tmp_path, str(trained_run / "checkpoints" / "best.pt"), "model.alpha=0.5",
                    f"out={tmp_path / 'e.json'}")
    assert_one_line_error(proc, "model.alpha=0.25", "model.alpha=0.5")
    assert not (tmp_path / "e.json").exists()


def test_eval_unknown_and_malformed_overrides(tmp_path, trained_run):
    ckpt = str(trained_run / "checkpoints" / "best.pt")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data.rooot=/x"), "data.rooot")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data.root"), "key=value")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "use_ema=true"), "no EMA")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "use_ema=maybe"), "use_ema=maybe is not allowed")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data.batch_size=0"),
                          "data.eval_batch_size=0 is not allowed")


def test_eval_group_selection_means_what_it_means_in_train(tmp_path, trained_run):
    """data=imagenet replaces the checkpoint's data group (as in mobilenet-train): its root is unset."""
    ckpt = str(trained_run / "checkpoints" / "best.pt")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data=imagenet"), "data.root is not set")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data=imagenet_shards", f"data.root={tmp_path}"),
                          "index.json")
    assert_one_line_error(evaluate(run_main, tmp_path, ckpt, "data=nope"), "data=nope is not an option of data")


def test_eval_wrong_data_root(tmp_path, trained_run):
    not_data = tmp_path / "not_data"
    not_data.mkdir()
    (not_data / "notes.txt").write_text("x")
    proc = evaluate(run_main, tmp_path, str(trained_run / "checkpoints" / "best.pt"), f"data.root={not_data}")
    assert_one_line_error(proc, "not_data", "no complete shapes dataset")
