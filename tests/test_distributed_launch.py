"""Where a process sits, from each launcher's environment; the sbatch script; the run dir."""

from __future__ import annotations

import os
import subprocess

import pytest
from helpers import BIN, REPO, TINY, run_main

from mobilenet_train import distributed
from mobilenet_train.config import compose as compose_config
from mobilenet_train.config.compose import _run_stamp

SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"


def test_torchrun_variables_win():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29500",
           "TORCHELASTIC_RUN_ID": "none", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}
    launch = distributed.detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("torchrun", 3, 8, 1)
    assert (launch.master_addr, launch.master_port, launch.job_id) == ("n1", "29500", None)


def test_srun_step_maps_onto_torchrun_variables():
    env = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "16", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
           "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]"}
    launch = distributed.detect_launch(env)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("srun", 5, 16, 1)
    assert launch.master_addr == "gpu07"           # first node of the step
    assert launch.master_port == distributed.port_for_job("4242") == str(10000 + 4242)
    assert launch.job_id == "4242"


def test_batch_shell_and_array_jobs():
    # The batch script itself (no srun step) is one process, even with --ntasks=8.
    batch = distributed.detect_launch({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "77"})
    assert (batch.launcher, batch.world_size, batch.job_id) == ("single", 1, "77")
    array = {"SLURM_JOB_ID": "101", "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "3"}
    assert distributed.slurm_job_id(array) == "100_3"
    assert distributed.port_for_job("100_3") != distributed.port_for_job("100_4")
    assert 10000 <= int(distributed.port_for_job("98765432101")) < 30000


@pytest.mark.parametrize("nodelist, first", [("node1", "node1"), ("gpu[03-05,09]", "gpu03"),
                                             ("a[1,3],b2", "a1"), ("cpu-[100-200]", "cpu-100")])
def test_first_host_of_a_nodelist(nodelist, first, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # the parser, not scontrol
    assert distributed.first_host(nodelist) == first


def test_submitit_environment(monkeypatch):
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "555", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    launch = distributed.detect_launch(os.environ)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank, launch.job_id) == \
        ("submitit", 1, 2, 1, "555")
    assert launch.master_port == distributed.port_for_job("555")


def test_run_dir_names_the_slurm_job(monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    assert _run_stamp()[:2] == "20"  # a timestamp
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "mobilenet-train")
    assert _run_stamp() == "slurm-4242"
    cfg = compose_config(["+experiment=quickstart"])
    assert cfg.hydra.run.dir == "outputs/quickstart/slurm-4242"
    monkeypatch.setenv("SLURM_JOB_NAME", "interactive")  # salloc: every command is a new run
    assert _run_stamp().startswith("20")


def test_shipped_slurm_launcher_config():
    cfg = compose_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.nodes=2",
                          "hydra.launcher.account=proj", "hydra.launcher.qos=low"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.nodes, launcher.account, launcher.qos) == ("gpu", 2, "proj", "low")
    assert launcher.gpus_per_node == launcher.tasks_per_node == 8
    assert launcher.signal_delay_s == 120 and launcher.max_num_timeout > 0
    assert launcher.additional_parameters.requeue is True


def test_sbatch_script_parses_and_renders_its_srun_line(tmp_path):
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    for directive in ("#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert directive in text
    env = {**os.environ, "MOBILENET_DRY_RUN": "1", "SLURM_CPUS_PER_TASK": "10",
           "MOBILENET_TRAIN": "/opt/venv/bin/mobilenet-train"}
    out = subprocess.run(["bash", str(SBATCH), "+experiment=alpha_0.75", "data.root=/data/image net"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ("srun --kill-on-bad-exit=1 --cpus-per-task=10 --export=ALL /opt/venv/bin/mobilenet-train "
                   "+experiment=alpha_0.75 data.root=/data/image\\ net")


def test_unreachable_master_fails_with_one_line_instead_of_hanging(tmp_path):
    # Rank 1 of 2 whose master never comes: it gives up after trainer.dist_timeout_s.
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "9", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(BIN / "mobilenet-train"), *TINY, "trainer.device=cpu", "trainer.dist_timeout_s=3",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("mobilenet-train: error:")]
    assert len(errors) == 1 and "rank 1 of 2 (torchrun) could not join the process group at 127.0.0.1:9" in errors[0]
    assert "Traceback" not in proc.stderr


def test_sync_bn_on_cpu_is_refused_in_one_line(tmp_path):
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train",
                           *TINY, "trainer.device=cpu", "trainer.sync_bn=true", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "mobilenet-train: error: trainer.sync_bn=true needs CUDA devices" in proc.stderr


def test_mid_epoch_checkpoint_of_another_world_size_is_refused(trained_run, tmp_path):
    from mobilenet_train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(trained_run / "checkpoints" / "last.pt")
    ckpt.update(epoch=1, batches_done=2, step=ckpt["step"] // 2, world_size=2, finished=False)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "last.pt", ckpt)
    proc = run_main("mobilenet-train", *TINY, "trainer.epochs=2", f"hydra.run.dir={run}", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "was written mid-epoch by 2 processes; resume it with the same world size (now 1)" in proc.stderr


def test_submitit_local_launcher_runs_a_two_task_job(tmp_path):
    """Hydra's submitit launcher, local executor: 2 tasks of one job form a 2-rank gloo group
    from submitit's environment and train one run to the end."""
    import json

    from mobilenet_train.checkpoint import load_checkpoint

    sweep = tmp_path / "multirun"
    proc = subprocess.run([str(BIN / "mobilenet-train"), "-m", "hydra/launcher=submitit_local",
                           "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=10", *TINY,
                           "trainer.device=cpu", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = [p for p in sweep.iterdir() if (p / "metrics.jsonl").exists()]
    assert run.name == "0_quickstart"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["val_num_images"] == 80  # rank 0 wrote once, sums over ranks
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2 and ckpt["step"] == 240 // 40
    assert "x 2 processes" in (run / "train.log").read_text()
