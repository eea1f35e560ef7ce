"""Faults of the machine (faults.py, errors.StorageError): a full or read-only disk at each write site,
a run dir deleted mid-run, a DataLoader worker killed, a broken last.pt. Each ends in one line that
names the cause, what survived and what to do, with a non-zero exit and nothing half-written.

The errors are injected here (an OSError where the write happens); scripts/fault_matrix.py makes them
for real (tmpfs, signals, bind mounts) and tests/test_fault_matrix.py runs it (slow)."""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import re
import shutil
import signal
import threading
import time

import pytest
import torch
from helpers import TINY, assert_one_line_error, run_main
from omegaconf import OmegaConf

from mobilenet_train import checkpoint, faults
from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.engine import runlog
from mobilenet_train.errors import EXIT_IO, EXIT_OSERR, StorageError, storage_error

SIZE = r"\(\d+\.\d MB\)"


def _enospc(match, after: int = 0):
    """An `open` for the checkpoint module: files whose name `match`es write half their data, then fail
    with ENOSPC, once `after` of them were written whole."""
    seen = [0]

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def fake(file, mode="r", *a, **kw):
        f = builtins.open(file, mode, *a, **kw)
        if "w" in mode and match(os.fspath(file)):
            seen[0] += 1
            if seen[0] > after:
                return HalfThenFull(f)
        return f

    return fake


def _train(tmp_path, run, *extra, check=False):
    return run_main("mobilenet-train", *TINY, *extra, f"hydra.run.dir={run}", cwd=tmp_path, check=check)


def test_full_disk_at_a_checkpoint_then_a_broken_last_pt(tmp_path, monkeypatch):
    """Checkpoints every 2 of the epoch's 6 steps, 2 kept: the 3rd write hits a full disk, which one line
    says with the size and the intact step-4 checkpoint, no temporary file left. Then last.pt is cut
    short: the same command resumes from last.1.pt (step 2) and says what it skipped and why."""
    run, keep = tmp_path / "run", ("trainer.checkpoint_every_steps=2", "trainer.keep_last=2")
    monkeypatch.setattr(checkpoint, "open", _enospc(lambda f: ".last.pt.tmp" in f, after=2), raising=False)
    proc = _train(tmp_path, run, *keep)
    line = assert_one_line_error(proc, "no space left on device writing checkpoints/last.pt", code=EXIT_IO)
    assert re.search(rf"last.pt {SIZE}: the previous checkpoint checkpoints/last.pt \(epoch 1 at step 4\) is "
                     r"intact; free space and run the same command to resume$", line), line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.1.pt", "last.pt"]  # no .tmp left
    assert [load_checkpoint(run / "checkpoints" / n)["step"] for n in ("last.pt", "last.1.pt")] == [4, 2]
    monkeypatch.undo()

    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    proc = _train(tmp_path, run, *keep, check=True)
    out = proc.stdout + proc.stderr
    assert re.search(r"resume: skipped \S+/last.pt: truncated or corrupt", out), out
    assert re.search(r"resume: using \S+/last.1.pt \(epoch 0, step 2\)", out), out
    assert "2 batches into the epoch" in out
    assert load_checkpoint(last)["finished"]


def test_run_dir_deleted_mid_run(tmp_path, monkeypatch):
    """Deleted after the first log window: the next write (metrics.jsonl) says the run dir is gone;
    nothing makes it again behind the user's back."""
    run = tmp_path / "run"
    window = runlog.RunLogger.window

    def delete_then_log(self, *a, **kw):
        shutil.rmtree(run, ignore_errors=True)
        window(self, *a, **kw)

    monkeypatch.setattr(runlog.RunLogger, "window", delete_then_log)
    proc = _train(tmp_path, run)
    assert_one_line_error(proc, "its directory no longer exists writing", f"the run dir {run} is gone, so no "
                          "checkpoint survived; run the same command to start over", code=EXIT_IO)
    assert not run.exists()


def test_read_only_run_dir_names_the_intact_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    err = storage_error(run / "checkpoints" / "last.pt", OSError(errno.EROFS, os.strerror(errno.EROFS)), 2_700_000)
    line = str(faults.training_fault(err, run))
    assert line == ("read-only file system writing checkpoints/last.pt (2.7 MB): the previous checkpoint "
                    "checkpoints/last.pt (end of epoch 2) is intact; make the file system writable again (or point "
                    "the output elsewhere) and run the same command to resume"), line
    assert err.exit_code == EXIT_IO


@pytest.mark.parametrize("command", ["eval", "report", "export"])
def test_full_disk_at_an_output(command, trained_run, tmp_path, monkeypatch):
    """eval.json, the report and an export: one line naming the file, nothing half-written left."""
    best = str(trained_run / "checkpoints" / "best.pt")
    out = tmp_path / "out"
    if command == "export":
        from mobilenet_train.deploy import formats

        def full(model, path, *a):
            path.write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(formats.load("onnx"), "write", full)
        args, target = [best, "--format", "onnx", f"out={out / 'm.onnx'}"], "m.onnx"
    else:
        target = "eval.json" if command == "eval" else "report.csv"
        monkeypatch.setattr(checkpoint, "open", _enospc(lambda f: target in f), raising=False)
        args = [best, "data.num_workers=0", f"out={out / target}"] if command == "eval" else \
            [str(trained_run), f"out={out}"]
    proc = run_main(f"mobilenet-{command}", *args, cwd=tmp_path, check=False)
    assert_one_line_error(proc, f"no space left on device writing {out / target}", "nothing was half-written; "
                          "free space and run the same command again", code=EXIT_IO)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file
    assert not (out / target).exists()


def test_metrics_line_is_appended_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    runlog.append_line(path, json.dumps({"epoch": 1}))
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runlog.os, "write", half_then_full)
    with pytest.raises(StorageError, match=r"no space left on device writing \S+metrics.jsonl \(\d+\.\d kB\)"):
        runlog.append_line(path, json.dumps({"epoch": 2, "loss": 1.0}))
    assert path.read_text() == '{"epoch": 1}\n'


def test_tensorboard_on_a_full_disk_is_one_error_without_a_thread_traceback(tmp_path, monkeypatch, capfd):
    from tensorboard.summary.writer import record_writer

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(logging, "raiseExceptions", logging.raiseExceptions)
    faults.quiet_background_writes()
    logger = runlog.RunLogger(tmp_path, OmegaConf.create({"task": "classification"}), True, False, None)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    window = {"loss": 1.0, "top1": 0.0, "lr": 0.1, "images_per_sec": 1.0, "data_wait_share": 0.0, "bad_images": 0}
    with pytest.raises(StorageError, match=f"no space left on device writing {tmp_path / 'tb'}"):
        for step in range(500):  # the writer's thread fails; a later call raises its error
            logger.window(step, window, "epoch 1/1")
            time.sleep(0.01)
    logger.close(quiet=True)
    assert "Traceback" not in capfd.readouterr().err


def test_killed_dataloader_worker_is_one_line(tmp_path, monkeypatch):
    """A worker SIGKILLed mid-epoch (as the OOM killer does): exit 71, the cause and what to change."""
    from mobilenet_train.data import folders

    load, calls = folders.ImageFiles.load, [0]

    def killed_on_the_tenth(self, index):
        calls[0] += 1
        if calls[0] == 10 and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return load(self, index)

    monkeypatch.setattr(folders.ImageFiles, "load", killed_on_the_tenth)
    proc = _train(tmp_path, tmp_path / "run", "data.num_workers=1")
    line = assert_one_line_error(proc, "a DataLoader worker (pid", code=EXIT_OSERR)
    assert re.search(r"\(pid \d+\) (was killed by SIGKILL|died) mid-epoch, often the out-of-memory killer \(see "
                     r"dmesg\): no checkpoint was written yet; lower data.num_workers or data.batch_size, or give the "
                     r"job more memory, and run the same command to start over$", line), line


def test_a_broken_worker_connection_is_a_killed_worker(tmp_path):
    """Killed while the main process took a batch from it, a worker leaves a reset socket, not a message."""
    try:
        exec(compile("raise ConnectionResetError(104, 'Connection reset by peer')",
                     "/site-packages/multiprocessing/resource_sharer.py", "exec"))
    except ConnectionResetError as e:
        err = faults.training_fault(e, tmp_path)
    assert err.exit_code == EXIT_OSERR
    assert str(err).startswith("a DataLoader worker died mid-epoch (ConnectionResetError receiving a batch from it), "
                               "often the out-of-memory killer (see dmesg): no checkpoint was written yet; ")
    assert isinstance(faults.training_fault(ConnectionResetError(104, "reset"), tmp_path), faults.RunFault)
