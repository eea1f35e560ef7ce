"""The fault matrix: each fault a long run meets, injected into a small real run, and what came of it.

    .venv/bin/python scripts/fault_matrix.py                    # all faults, table into docs/benchmarks.md
    .venv/bin/python scripts/fault_matrix.py --only disk_checkpoint worker_sigkill --out -   # a few, to stdout

Every run is the quickstart shrunk to seconds on a CPU (tests/helpers.py TINY, 2 epochs, deterministic)
and runs the installed console scripts as a user would. For each fault the table gives where it was
injected, the one line the user saw (stderr's error line, else the last warning), the exit status,
what was lost, and whether running the same command again ended with the same final weights (model
and EMA, bit for bit) as a run that was never interrupted.

Disk full uses a small tmpfs (`mount -t tmpfs`, as root) placed at the one path under test; where
mounting is refused (not root, a container) an OSError(ENOSPC) is injected at the same path instead
(`--inject-enospc` forces that). Read-only uses a tmpfs remounted read-only mid-run. EIO cannot be
made on a healthy disk, so it is injected (the child process's `open` fails for one file); a vanished
file, a worker or the main process killed and the stop signals are real.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import dataclasses
import errno
import fnmatch
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"

# tests/helpers.py TINY: a shapes dataset and model small enough for an epoch in seconds on 2 cores.
TINY = ["+experiment=quickstart", "data.generate.image_size=40", "data.generate.train_per_class=24",
        "data.generate.val_per_class=8", "data.batch_size=40", "data.eval_batch_size=64", "data.num_workers=0",
        "model.resolution=32", "trainer.log_every_steps=2", "trainer.progress=false"]
# 6 optimizer steps an epoch; a checkpoint every 2 steps, so faults land between checkpoints; a log line
# (and the NaN check) every step, so the log says how far a run got.
# data.max_bad_share=0.01: a 240-image epoch survives 2 bad images (the default suits ImageNet's 1.28M).
BASE = [*TINY, "trainer.epochs=2", "trainer.deterministic=true", "trainer.checkpoint_every_steps=2",
        "data.max_bad_share=0.01", "trainer.log_every_steps=1"]
# The SIGKILL row: 30 steps an epoch, so 20 kills land in training before it ends.
LONG = ["data.batch_size=8"]


@dataclasses.dataclass
class Row:
    fault: str
    site: str
    saw: str
    exit: str
    lost: str
    resume: str


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str
    watched: list  # the lines at which the watcher acted
    first_step_s: float = 0.0  # seconds from start to the first step's log line

    @property
    def saw(self) -> str:
        """The one line a user reads: the error line, else the last warning (log prefix dropped)."""
        if "Traceback" in self.out + self.err:
            return "TRACEBACK: " + _last(self.err or self.out)
        if not self.one_line:
            return "MORE THAN ONE LINE: " + " / ".join(self.err.splitlines())
        errors = [line for line in self.err.splitlines() if re.match(r"mobilenet-\w+: error:", line)]
        if errors:
            return errors[-1]
        warnings = [line for line in (self.out + "\n" + self.err).splitlines() if "[WARNING]" in line]
        return re.sub(r"^\[[^]]*\]\[[^]]*\]\[WARNING\] - ", "", warnings[-1]) if warnings else _last(self.err)

    @property
    def one_line(self) -> bool:
        """Exactly one error line on stderr (signal notices aside), no traceback anywhere."""
        lines = [line for line in self.err.splitlines() if line.strip() and "received: stopping" not in line]
        return "Traceback" not in self.out + self.err and len(lines) <= 1


def _last(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ----------------------------------------------------------------------------- running the commands


class Matrix:
    def __init__(self, work: Path, kills: int, seed: int, inject_enospc: bool):
        self.work, self.kills, self.rng = work, kills, random.Random(seed)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "MOBILENET_TRAIN_CACHE": str(work / "cache")}
        self.mounts: list[Path] = []
        self.tmpfs = not inject_enospc and self._can_mount()
        self.refs, self.ref_seconds, self.first_step_seconds = {}, {}, {}
        self.ref_dir = work / "reference"

    # -- processes

    def start(self, cmd: str, *args: str, inject: str | None = None, cwd: Path | None = None) -> subprocess.Popen:
        exe = [str(BIN / cmd)] if inject is None else [sys.executable, __file__, "--child", inject, cmd]
        self._err = tempfile.TemporaryFile("w+")
        return subprocess.Popen([*exe, *args], cwd=cwd or self.work, env=self.env, stdout=subprocess.PIPE,
                                stderr=self._err, text=True, start_new_session=True)

    def run(self, cmd: str, *args: str, watch=None, inject: str | None = None, timeout: float = 300) -> Result:
        """Run a command; `watch(line, proc)` sees each stdout line and returns True when it acted."""
        started = time.monotonic()
        proc = self.start(cmd, *args, inject=inject)
        err_file = self._err
        out, watched, first_step = [], [], 0.0
        timer = threading.Timer(timeout, lambda: proc.kill())
        timer.start()
        try:
            for line in proc.stdout:
                out.append(line)
                if not first_step and re.search(r"step \d+:", line):
                    first_step = time.monotonic() - started
                if watch is not None and watch(line, proc):
                    watched.append(line.strip())
            code = proc.wait()
        finally:
            timer.cancel()
        err_file.seek(0)
        return Result(code, "".join(out), err_file.read(), watched, first_step)

    def train(self, run_dir: Path, *extra: str, **kw) -> Result:
        return self.run("mobilenet-train", *BASE, *extra, f"hydra.run.dir={run_dir}", **kw)

    # -- tmpfs

    def _can_mount(self) -> bool:
        probe = self.work / "probe"
        probe.mkdir(exist_ok=True)
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok

    def mount(self, path: Path, size: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        self.mounts.append(path)
        return path

    def full(self, name: str) -> Path:
        """A tmpfs with no room left (a filler file takes it all)."""
        path = self.mount(self.work / "mnt" / name, 16 * 1024 * 1024)  # room for any output, once freed
        with open(path / ".filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while f.write(b"\0" * 4096):
                pass
        return path

    def remount(self, path: Path, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self.mounts.clear()

    # -- comparing with the reference

    def reference(self, *extra: str) -> dict:
        """The final weights of an uninterrupted run of BASE + `extra` (run once)."""
        key = tuple(extra)
        if key not in self.refs:
            run = self.ref_dir if not extra else self.work / f"reference_{len(self.refs)}"
            t = time.monotonic()
            r = self.train(run, *extra)
            assert r.code == 0, r.out + r.err
            self.refs[key] = final_weights(run)
            self.ref_seconds[key] = time.monotonic() - t
            self.first_step_seconds[key] = r.first_step_s
            self.ckpt_size = (run / "checkpoints" / "last.pt").stat().st_size
        return self.refs[key]

    def same_as_reference(self, run_dir: Path, *extra: str) -> str:
        try:
            mine = final_weights(run_dir)
        except FileNotFoundError:
            return "no: no final checkpoint"
        ref = self.reference(*extra)
        equal = mine.keys() == ref.keys() and all(_equal(mine[k], ref[k]) for k in mine)
        return "yes, bit-identical" if equal else "no: the weights differ"

    def resume_row(self, run_dir: Path, *extra: str, same_as: tuple = ()) -> tuple[Result, str]:
        """Run the same command again; did it finish with the weights of an uninterrupted run of
        BASE + `same_as` (settings that change no weight, e.g. keep_last, stay out of it)?"""
        r = self.train(run_dir, *extra)
        if r.code != 0:
            return r, f"no: the rerun exited {r.code} ({r.saw})"
        return r, self.same_as_reference(run_dir, *same_as)

    # -- read-only: a read-only bind mount over the path (root), else its write permission taken

    def read_only(self, path: Path) -> None:
        if self.tmpfs:
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        else:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o555)

    def writable(self, path: Path) -> None:
        if self.tmpfs:
            subprocess.run(["umount", str(path)], check=True)
        else:
            for p in [path, *path.rglob("*")]:
                if p.is_dir():
                    p.chmod(0o755)


def _equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def final_weights(run_dir: Path) -> dict:
    import torch

    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    if not ckpt.get("finished"):
        raise FileNotFoundError("the run did not finish")
    return {**{f"model/{k}": v for k, v in ckpt["model"].items()},
            **{f"ema/{k}": v for k, v in (ckpt.get("ema") or {}).items()}}


def checkpoint_at(run_dir: Path) -> str:
    """Where the run's last.pt stands, as 'epoch E, step S' (or 'none')."""
    import torch

    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return "none"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file is what some rows make
        return f"unreadable ({type(e).__name__})"
    return f"step {ckpt['step']}"


def lost_steps(before: str, reached: int | None) -> str:
    """'steps S+1..N' lost: those trained after the intact checkpoint at `before`."""
    m = re.match(r"step (\d+)", before)
    start = int(m.group(1)) if m else 0
    if reached is None or reached <= start:
        return f"nothing (checkpoint at step {start})" if m else "nothing"
    if not m:
        return f"{reached} step(s), no checkpoint yet"
    return f"{reached - start} step(s) since the checkpoint at step {start}"


def last_step(out: str) -> int | None:
    steps = [int(s) for s in re.findall(r"step (\d+):", out)]
    return max(steps) if steps else None


def after_step(n: int, action):
    """A watcher that acts once, on the first log line of step >= n."""
    done = []

    def watch(line, proc):
        m = re.search(r"step (\d+):", line)
        if not done and m and int(m.group(1)) >= n:
            done.append(True)
            action(proc)
            return True
        return False

    return watch


def exit_text(code: int) -> str:
    if code < 0:
        return f"{code} ({signal.Signals(-code).name})"
    names = {0: "0", 1: "1", 2: "2 (bad input)", 3: "3 (diverged)", 71: "71 (EX_OSERR)", 74: "74 (EX_IOERR)",
             75: "75 (preempted, requeue)"}
    return names.get(code, str(code))


# ----------------------------------------------------------------------------- the faults


def disk_checkpoint(m: Matrix) -> list[Row]:
    """checkpoints/ on a tmpfs with room for two checkpoints and a half: the write after best.pt fails."""
    run = m.work / "disk_ckpt"
    run.mkdir()
    if m.tmpfs:
        mnt = m.mount(m.work / "mnt" / "ckpt", int(2.5 * m.ckpt_size))
        (run / "checkpoints").symlink_to(mnt)
        r, inject = m.train(run, "trainer.checkpoint_every_steps=0"), None
        site = f"checkpoints/ on a {2.5 * m.ckpt_size / 1e6:.1f} MB tmpfs (room for 2.5 checkpoints)"
    else:
        inject = "enospc-after:1:*last.pt*"
        r = m.train(run, "trainer.checkpoint_every_steps=0", inject=inject)
        site = "checkpoints/last.pt, its 2nd write (injected ENOSPC)"
    before = checkpoint_at(run)
    if m.tmpfs:
        m.remount(mnt, "size=64m")  # free space
    _, same = m.resume_row(run, "trainer.checkpoint_every_steps=0")
    return [Row("disk full", site, r.saw, exit_text(r.code), lost_steps(before, last_step(r.out)), same)]


def disk_site(m: Matrix, name: str, target: str, site: str) -> Row:
    """A file or dir of the run dir (`target`) on a full tmpfs (a symlink there)."""
    run = m.work / f"disk_{name}"
    run.mkdir()
    if m.tmpfs:
        mnt = m.full(name)
        (run / target).symlink_to(mnt / target)
        if target == "tb":
            (mnt / target).mkdir()
        r = m.train(run)
        site = f"{site} on a full tmpfs"
    else:
        r = m.train(run, inject=f"enospc-after:0:*/{target}{'/*' if target == 'tb' else ''}")
        site = f"{site} (injected ENOSPC)"
    before = checkpoint_at(run)
    if m.tmpfs:
        (mnt / ".filler").unlink()
    _, same = m.resume_row(run)
    return Row("disk full", site, r.saw, exit_text(r.code), lost_steps(before, last_step(r.out)), same)


def disk_outputs(m: Matrix) -> list[Row]:
    """eval.json, the report and an export written onto a full disk; then again with room."""
    best = m.ref_dir / "checkpoints" / "best.pt"
    rows = []
    for name, cmd, args, produced in (
            ("eval", "mobilenet-eval", [str(best), "data.num_workers=0"], "eval.json"),
            ("report", "mobilenet-report", [str(m.ref_dir)], "out"),
            ("export", "mobilenet-export", [str(best), "--format", "onnx"], "model.onnx")):
        if m.tmpfs:
            base = m.full(name)
            inject, site = None, f"{name}: out= on a full tmpfs"
        else:
            base = m.work / name
            base.mkdir()
            inject, site = f"enospc-after:0:{base}/*", f"{name}: out= (injected ENOSPC)"
        out = base / produced
        r = m.run(cmd, *args, f"out={out}", inject=inject)
        half = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.name != ".filler")
        if m.tmpfs:
            (base / ".filler").unlink()
        again = m.run(cmd, *args, f"out={out}")
        ok = again.code == 0 and out.exists()
        rows.append(Row("disk full", site, r.saw, exit_text(r.code),
                        "nothing; left behind: " + (", ".join(half) or "no file"),
                        f"rerun with room: {'wrote ' + produced if ok else 'failed: ' + again.saw}"))
    return rows


def readonly_run_dir(m: Matrix) -> list[Row]:
    """The run dir made read-only after step 3 (a read-only bind mount over it); an output path too."""
    run = m.work / "readonly"
    r = m.train(run, watch=after_step(3, lambda proc: m.read_only(run)))
    before = checkpoint_at(run)
    m.writable(run)
    _, same = m.resume_row(run)
    how = "a read-only bind mount over it" if m.tmpfs else "chmod a-w (not root)"
    rows = [Row("run dir read-only mid-run", f"{how} after step 3", r.saw, exit_text(r.code),
                lost_steps(before, last_step(r.out)), same)]
    out = m.work / "readonly_out"
    out.mkdir()
    m.read_only(out)
    e = m.run("mobilenet-eval", str(m.ref_dir / "checkpoints" / "best.pt"), "data.num_workers=0",
              f"out={out / 'eval.json'}")
    m.writable(out)
    rows.append(Row("output path read-only", f"mobilenet-eval out= in a dir with {how}", e.saw, exit_text(e.code),
                    "nothing: left behind " + (", ".join(p.name for p in out.iterdir()) or "no file"),
                    "n/a (run again with a writable out=)"))
    return rows


def deleted_run_dir(m: Matrix) -> list[Row]:
    run = m.work / "deleted"
    r = m.train(run, watch=after_step(3, lambda proc: shutil.rmtree(run)))
    _, same = m.resume_row(run)
    return [Row("run dir deleted mid-run", "rm -r of the run dir after step 3", r.saw, exit_text(r.code),
                f"the run dir: {last_step(r.out)} step(s), all its files", f"starts over: {same}")]


def data_faults(m: Matrix) -> list[Row]:
    root = Path(m.env["MOBILENET_TRAIN_CACHE"])
    images = sorted(root.rglob("train/*/*.jpg"))
    victim = images[len(images) // 2]
    rows = []
    for label, inject in (("once", f"eio:1:{victim}"), ("on every read", f"eio:99999:{victim}")):
        run = m.work / f"eio_{label.split()[-1]}"
        r = m.train(run, inject=inject)
        same = m.same_as_reference(run) if r.code == 0 else f"no: exited {r.code}"
        lost = "nothing (retried)" if "bad image" not in r.out else "the image, replaced by another each epoch"
        rows.append(Row(f"data file EIO {label}", f"open() of {victim.parent.name}/{victim.name} (injected)",
                        r.saw if "bad image" in r.out else "nothing (a retry read it)", exit_text(r.code), lost,
                        f"no interruption: {same}"))
    # A file deleted mid-epoch (real), then many (a whole class): the bad-share limit stops the epoch.
    backup = m.work / "backup"
    shutil.copytree(victim.parent, backup)
    run = m.work / "vanished"
    r = m.train(run, watch=after_step(3, lambda proc: victim.unlink()))
    shutil.copy2(backup / victim.name, victim)
    rows.append(Row("data file vanished mid-epoch", "rm of one training image after step 3", r.saw,
                    exit_text(r.code), "the image, replaced by another",
                    f"no interruption: {m.same_as_reference(run)}"))
    run = m.work / "vanished_class"
    r = m.train(run, watch=after_step(3, lambda proc: shutil.rmtree(victim.parent)))
    before = checkpoint_at(run)
    shutil.copytree(backup, victim.parent)
    _, same = m.resume_row(run)
    if same.startswith("no: the weights differ") and "bad image replaced" in r.out:
        same += " (batches under data.max_bad_share trained on replaced images before the stop, as allowed)"
    rows.append(Row("data files vanished mid-epoch", f"rm -r of class {victim.parent.name}/ after step 3", r.saw,
                    exit_text(r.code), lost_steps(before, last_step(r.out)), f"after restoring them: {same}"))
    return rows


def worker_sigkill(m: Matrix) -> list[Row]:
    run = m.work / "worker"

    def kill_worker(proc):
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)

    r = m.train(run, "data.num_workers=1", watch=after_step(3, kill_worker))
    before = checkpoint_at(run)
    _, same = m.resume_row(run, "data.num_workers=1")
    return [Row("DataLoader worker SIGKILL", "kill -9 of the worker after step 3", r.saw, exit_text(r.code),
                lost_steps(before, last_step(r.out)), same)]


def main_sigkill(m: Matrix) -> list[Row]:
    """SIGKILL the training process at `m.kills` random points, starting it again after each: a quarter
    at a random time of its start-up, the rest a random moment after a random step ahead of the last."""
    run, phases = m.work / "kill", []
    m.reference(*LONG)
    startup = m.first_step_seconds[tuple(LONG)]
    reached = 0
    for _ in range(m.kills):
        proc = m.start("mobilenet-train", *BASE, *LONG, f"hydra.run.dir={run}")
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        if m.rng.random() < 0.25:
            time.sleep(m.rng.uniform(0.3, startup))
        else:
            target = reached + m.rng.randint(1, 3)
            while proc.poll() is None and (last_step("".join(lines)) or 0) < target:
                time.sleep(0.002)
            time.sleep(m.rng.uniform(0, 0.1))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
        text = "".join(lines)
        reached = max(reached, last_step(text) or 0)
        steps = re.findall(r"(epoch \d/\d(?: step \d+)?)", text)
        phases.append(steps[-1] if steps else "start-up")
        if proc.returncode == 0:
            break
    r, same = m.resume_row(run, *LONG, same_as=tuple(LONG))
    landed = sum(p != "start-up" for p in phases)
    return [Row("main process SIGKILL", f"{len(phases)} random points of runs of 2 x 30 steps, restarted after each "
                f"({landed} in training, {len(phases) - landed} in start-up)",
                "nothing (kill -9); each start: \"resumed from ...last.pt\"", "-9 (SIGKILL) each time",
                "the steps since each last checkpoint (at most 2)", same)]


def _resumed(out: str) -> str:
    m = re.search(r"resumed from \S+: [^\n]*", out)
    return m.group(0).replace(str(REPO), ".") if m else ""


def signal_during_checkpoint(m: Matrix) -> list[Row]:
    rows = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        run = m.work / f"sig_{sig.name}"
        ckpt_dir = run / "checkpoints"
        proc = m.start("mobilenet-train", *BASE, "trainer.checkpoint_every_steps=1", f"hydra.run.dir={run}")
        err_file = m._err
        out = []
        reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
        reader.start()
        seen = None
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            tmps = list(ckpt_dir.glob(".last.pt.tmp*")) if ckpt_dir.is_dir() else []
            if tmps and (run / "checkpoints" / "last.pt").exists():  # not the first write: a previous one exists
                os.kill(proc.pid, sig)
                seen = tmps[0].name
                break
            time.sleep(0.0002)
        code = proc.wait()
        reader.join(5)
        err_file.seek(0)
        res = Result(code, "".join(out), err_file.read(), [])
        before = checkpoint_at(run)
        _, same = m.resume_row(run)
        where = f"while {seen} was on disk" if seen else "(no write caught in time)"
        rows.append(Row(f"{sig.name} during a checkpoint write", f"kill -{sig.name[3:]} {where}", res.saw,
                        exit_text(code), f"nothing: last.pt at {before}, written after the signal", same))
    return rows


def divergence(m: Matrix) -> list[Row]:
    rows = []
    for label, inject in (("NaN loss", "loss-times:nan:9"), ("inf loss", "loss-times:inf:9")):
        run = m.work / label.split()[0]
        r = m.train(run, inject=inject)
        before = checkpoint_at(run)
        _, same = m.resume_row(run)
        rows.append(Row(label, "the loss of micro-batch 9 (step 9) times nan/inf (injected)", r.saw, exit_text(r.code),
                        lost_steps(before, last_step(r.out)), f"rerun without the fault: {same}"))
    run = m.work / "exploding"
    r = m.train(run, "optim.lr=1000")
    rows.append(Row("exploding loss", "optim.lr=1000 (real)", r.saw, exit_text(r.code),
                    lost_steps(checkpoint_at(run), last_step(r.out)), "n/a: the config diverges; lower optim.lr"))
    return rows


def corrupt_last(m: Matrix) -> list[Row]:
    """last.pt damaged on disk after a SIGTERM at step 9: the rerun falls back to last.1.pt or best.pt."""
    rows = []
    for label, keep, damage in (("bytes overwritten", 2, "flip"), ("truncated", 1, "truncate")):
        run = m.work / f"corrupt_{damage}"
        m.train(run, f"trainer.keep_last={keep}", watch=after_step(9, lambda proc: proc.send_signal(signal.SIGTERM)))
        last = run / "checkpoints" / "last.pt"
        at = checkpoint_at(run)
        data = bytearray(last.read_bytes())
        if damage == "flip":
            mid = len(data) // 2
            data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
        else:
            data = data[: len(data) // 2]
        last.write_bytes(bytes(data))
        again, same = m.resume_row(run, f"trainer.keep_last={keep}")
        said = [re.sub(r"^\[[^]]*\]\[[^]]*\]\[WARNING\] - ", "", line) for line in again.out.splitlines()
                if "resume: " in line]
        used = re.search(r"using \S*/(\S+) \(epoch \d+, step (\d+)\)", again.out)
        lost = f"{int(at.split()[-1]) - int(used.group(2))} step(s): {at} in last.pt, step {used.group(2)} in " \
               f"{used.group(1)}" if used and at.startswith("step") else "?"
        rows.append(Row(f"last.pt corrupt ({label})", f"{label} after a SIGTERM at step 9, trainer.keep_last={keep}",
                        " / ".join(said) or again.saw, f"{exit_text(again.code)} (the rerun)", lost, same))
    return rows


FAULTS = {
    "disk_checkpoint": disk_checkpoint,
    "disk_metrics": lambda m: [disk_site(m, "metrics", "metrics.jsonl", "metrics.jsonl")],
    "disk_tensorboard": lambda m: [disk_site(m, "tb", "tb", "tb/ (TensorBoard)")],
    "disk_outputs": disk_outputs,
    "readonly": readonly_run_dir,
    "deleted_run_dir": deleted_run_dir,
    "data": data_faults,
    "worker_sigkill": worker_sigkill,
    "main_sigkill": main_sigkill,
    "signals": signal_during_checkpoint,
    "divergence": divergence,
    "corrupt_last": corrupt_last,
}


# ----------------------------------------------------------------------------- the table


def table(rows: list[Row], command: str, seconds: float, tmpfs: bool, work: Path) -> str:
    def esc(text) -> str:
        return str(text).replace(f"{work}/", "…/").replace("|", "\\|").replace("\n", " ")

    lines = [BEGIN, "",
             f"Command: `{command}` (2-core CPU, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min; disk full "
             f"{'on tmpfs mounts' if tmpfs else 'injected as OSError(ENOSPC)'}). The run: the quickstart at TINY size "
             f"(tests/helpers.py), 2 epochs of 6 steps, `trainer.deterministic=true`, a checkpoint every 2 steps. "
             f"\"Same weights\": the same command run again ends with the model and EMA weights of an "
             f"uninterrupted run, bit for bit. `…/` is the script's temporary work dir.", "",
             "| fault | injected at | what the user saw | exit | lost | run again: same final weights? |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(esc(getattr(r, f.name)) for f in dataclasses.fields(Row))} |" for r in rows]
    return "\n".join(lines + ["", END])


def write_section(path: Path, section: str) -> None:
    text = path.read_text()
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Fault matrix\n\n" + section + "\n"
    path.write_text(text)


# ----------------------------------------------------------------------------- child: injected faults


def child(spec: str, cmd: str, args: list[str]) -> None:
    """Run console script `cmd` with one injected fault (`spec`), in this process."""
    kind, _, rest = spec.partition(":")
    if kind == "eio":  # eio:N:PATH: opening PATH fails with EIO the first N times
        times, _, target = rest.partition(":")
        _fail_open(lambda p: p == target, int(times), errno.EIO)
    elif kind == "enospc-after":  # enospc-after:N:GLOB: writes to GLOB fail after N files opened fine
        after, _, pattern = rest.partition(":")
        _enospc_writes(pattern, int(after))
    elif kind == "loss-times":  # loss-times:nan:K: the K-th micro-batch's loss (and all after) times nan/inf
        value, _, k = rest.partition(":")
        _poison_loss(float(value), int(k))
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == cmd]
    sys.argv = [cmd, *args]
    ep.load()()


def _fail_open(match, times: int, err_no: int) -> None:
    real, left = builtins.open, [times]

    def fake(file, *a, **kw):
        if isinstance(file, (str, os.PathLike)) and match(os.fspath(file)) and left[0] > 0:
            left[0] -= 1
            raise OSError(err_no, os.strerror(err_no), os.fspath(file))
        return real(file, *a, **kw)

    builtins.open = fake


def _enospc_writes(pattern: str, after: int) -> None:
    """Files whose path matches `pattern` fail their writes with ENOSPC once `after` of them opened."""
    real_open, real_os_open, real_write, opened, bad_fds = builtins.open, os.open, os.write, [0], set()

    def matches(file) -> bool:  # TensorBoard names its files as bytes
        return isinstance(file, (str, bytes, os.PathLike)) and fnmatch.fnmatch(os.fsdecode(file), pattern)

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fake_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if matches(file) and any(c in mode for c in "wa"):
            opened[0] += 1
            if opened[0] > after:
                return Full(f)
        return f

    def fake_os_open(path, flags, *a, **kw):
        fd = real_os_open(path, flags, *a, **kw)
        if matches(path) and flags & (os.O_WRONLY | os.O_RDWR):
            opened[0] += 1
            if opened[0] > after:
                bad_fds.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in bad_fds:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    builtins.open = io.open = fake_open  # TensorBoard opens its event files with io.open
    os.open, os.write = fake_os_open, fake_write


def _poison_loss(value: float, k: int) -> None:
    from mobilenet_train.engine import loop

    real, calls = loop.training_loss, [0]

    def poisoned(*a, **kw):
        calls[0] += 1
        loss = real(*a, **kw)
        return loss * value if calls[0] >= k else loss

    loop.training_loss = poisoned


# ----------------------------------------------------------------------------- main


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"),
                        help="the markdown file whose fault-matrix section is regenerated; - prints the table")
    parser.add_argument("--only", nargs="+", choices=sorted(FAULTS), help="run only these faults")
    parser.add_argument("--kills", type=int, default=20, help="random SIGKILLs of the main process")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--inject-enospc", action="store_true", help="inject ENOSPC even where tmpfs mounts")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (its path is printed)")
    ns = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    m = Matrix(work, ns.kills, ns.seed, ns.inject_enospc)
    started = time.monotonic()
    rows: list[Row] = []
    try:
        m.reference()
        for name in ns.only or FAULTS:
            t = time.monotonic()
            new = FAULTS[name](m)
            rows += new
            for r in new:
                print(f"[{time.monotonic() - t:5.1f}s]", " | ".join(map(str, dataclasses.astuple(r))), flush=True)
    finally:
        m.unmount_all()
        if ns.keep:
            print(f"work dir: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    command = "python scripts/fault_matrix.py" + (f" --only {' '.join(ns.only)}" if ns.only else "")
    section = table(rows, command, time.monotonic() - started, m.tmpfs, work)
    if ns.out == "-":
        print(section)
    else:
        write_section(Path(ns.out), section)
        print(f"written: {ns.out}")


if __name__ == "__main__":
    main()
