"""Against a real Slurm cluster: `scripts/slurm/local_cluster.sh start` makes one on this machine
(.ci/run does, when it runs as root with apt-get). Without a cluster these tests skip.

- sbatch scripts/slurm/train.sbatch with 2 tasks (gloo) trains to completion;
- the same job sent `scancel --signal=USR1 --batch` mid-epoch checkpoints, requeues itself, resumes
  and ends with the weights and metrics of the uninterrupted job;
- `mobilenet-train -m hydra/launcher=submitit_slurm` submits a 2-run sweep as one job array;
- a job of the shipped `hydra/launcher=slurm` sent USR2 mid-epoch is requeued by submitit and resumes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import BIN, REPO, TINY

from mobilenet_train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slurm
DEFAULT_CONF = Path(os.environ.get("MOBILENET_SLURM_DIR", "/tmp/mobilenet-train-slurm")) / "slurm.conf"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"
# 2 ranks x 4 images: 30 steps an epoch, so a signal lands mid-epoch; deterministic for the comparison.
JOB = [*TINY, "trainer.device=cpu", "trainer.epochs=2", "data.batch_size=8", "trainer.log_every_steps=1",
       "trainer.deterministic=true"]


@pytest.fixture(scope="module")
def slurm_env(cache_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MOBILENET_TRAIN_CACHE": str(cache_dir)}
    if "SLURM_CONF" not in env and DEFAULT_CONF.exists():
        env["SLURM_CONF"] = str(DEFAULT_CONF)
    if not shutil.which("sinfo"):
        pytest.skip("no Slurm client (sinfo) on PATH: start one with scripts/slurm/local_cluster.sh start")
    try:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo did not answer within 10 s")
    if state.returncode != 0 or not re.search(r"idle|mix|alloc", state.stdout):
        pytest.skip(f"no Slurm cluster answers (sinfo: {(state.stderr or state.stdout).strip()[:200]})")
    # Generate the dataset once here, not inside two jobs at the same time.
    subprocess.run([str(BIN / "python"), "-c", "from mobilenet_train.config import compose as compose_config;"
                    "from mobilenet_train.data import resolve_root;"
                    f"resolve_root(compose_config({JOB!r}).data)"], env=env, check=True, timeout=120)
    return env


def sbatch(env, workdir: Path, *overrides: str) -> str:
    cmd = ["sbatch", "--parsable", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15",
           f"--output={workdir}/slurm-%j.out", f"--chdir={workdir}",
           f"--export=ALL,MOBILENET_TRAIN={BIN / 'mobilenet-train'}", str(SBATCH), *JOB, *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip().split(";")[0]


def job_state(env, job_id: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    m = re.search(r"JobState=(\w+)", out)
    return m.group(1) if m else "UNKNOWN"


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def start_now(env, job_id: str) -> None:
    """Skip the ~2 minutes a requeued job waits. Not within the second of the requeue: slurmd
    refuses a job credential created in the same second its previous one was revoked."""
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env, check=True, timeout=30)


def finished(env, job_id: str, log: Path, timeout: float = 300) -> str:
    state = wait_for(lambda: (s := job_state(env, job_id)) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                 "NODE_FAIL", "OUT_OF_MEMORY") and s,
                     timeout, f"job {job_id} to end", log)
    return state


def test_sbatch_two_tasks_preempted_with_usr1_requeues_and_matches_an_uninterrupted_job(slurm_env, tmp_path):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    straight.mkdir(), preempted.mkdir()
    job_a = sbatch(slurm_env, straight, f"hydra.run.dir={straight}/run")
    job_b = sbatch(slurm_env, preempted)  # default run dir: outputs/<run_name>/slurm-<job id>
    log_b = preempted / f"slurm-{job_b}.out"

    # Mid-epoch: a few steps into epoch 1, send the time-limit warning to the batch shell only.
    wait_for(lambda: log_b.exists() and "epoch 1/2 step 3:" in log_b.read_text(), 240, "step 3 of job B", log_b)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_b], env=slurm_env, check=True, timeout=30)
    wait_for(lambda: "requeueing job" in log_b.read_text(), 120, "job B to checkpoint and requeue", log_b)
    # A requeued job waits ~2 minutes before it is eligible again: start it now.
    wait_for(lambda: job_state(slurm_env, job_b) == "PENDING", 60, "job B to be pending again", log_b)
    start_now(slurm_env, job_b)

    assert finished(slurm_env, job_a, straight / f"slurm-{job_a}.out") == "COMPLETED"
    assert finished(slurm_env, job_b, log_b) == "COMPLETED", log_b.read_text()[-3000:]

    text = log_b.read_text()
    assert "got SIGUSR1" in text and "(restart 1)" in text
    resumed = re.search(r"resumed from .* epoch 0, step (\d+), (\d+) batches into the epoch", text)
    assert resumed, text[-3000:]
    # Stopped at a step all ranks agreed on (they compare flags every 10 steps): mid-epoch unless a
    # loaded machine delivered the signal late, when it is the epoch's last step (30).
    assert int(resumed.group(2)) in (10, 20, 30), resumed.group(0)

    run_b = preempted / "outputs" / "quickstart" / f"slurm-{job_b}"
    a = load_checkpoint(straight / "run" / "checkpoints" / "last.pt")
    b = load_checkpoint(run_b / "checkpoints" / "last.pt")
    assert a["world_size"] == b["world_size"] == 2 and a["step"] == b["step"] == 60
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    metrics = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
               for d in (straight / "run", run_b)]
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5"):
        assert [m[key] for m in metrics[0]] == [m[key] for m in metrics[1]], key


def test_submitit_slurm_launcher_runs_a_sweep_as_a_job_array(slurm_env, tmp_path):
    sweep = tmp_path / "multirun"
    cmd = [str(BIN / "mobilenet-train"), "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.tasks_per_node=1",
           "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15", *TINY, "trainer.device=cpu",
           "model.alpha=0.25,0.5", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if (p / "metrics.jsonl").exists())
    assert len(runs) == 2
    alphas = sorted(json.loads((r / "metrics.jsonl").read_text().splitlines()[-1])["alpha"] for r in runs)
    assert alphas == [0.25, 0.5]
    for run in runs:
        assert (run / "checkpoints" / "best.pt").exists() and (run / ".hydra" / "config.yaml").exists()
    # One job array: every submitit job folder is <array id>_<task>.
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(jobs) == 2 and len({j.split("_")[0] for j in jobs}) == 1, jobs


def test_submitit_launcher_job_preempted_requeues_through_submitit_and_resumes(slurm_env, tmp_path):
    """USR2 (submitit's warning signal) mid-epoch: both tasks stop after a step, rank 0 writes
    last.pt, submitit pickles the job again and requeues it, and the restart resumes there."""
    sweep = tmp_path / "multirun"
    cmd = [str(BIN / "mobilenet-train"), "-m", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
           "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15",
           *JOB, f"hydra.sweep.dir={sweep}"]
    launcher = subprocess.Popen(cmd, cwd=tmp_path, env=slurm_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    try:
        log = sweep / "0_quickstart" / "train.log"
        wait_for(lambda: log.exists() and "epoch 1/2 step 3:" in log.read_text(), 240, "step 3")
        job_id = next(p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
        subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm_env, check=True, timeout=30)
        wait_for(lambda: job_state(slurm_env, job_id) == "PENDING", 120, "the job to be requeued", log)
        start_now(slurm_env, job_id)
        out, _ = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, out[-3000:]
    text = log.read_text()
    assert "handing over to submitit to requeue the job" in text
    assert re.search(r"resumed from .* epoch 0, step \d+, \d+ batches into the epoch", text)
    ckpt = load_checkpoint(sweep / "0_quickstart" / "checkpoints" / "last.pt")
    assert ckpt["finished"] and ckpt["step"] == 60 and ckpt["world_size"] == 2
