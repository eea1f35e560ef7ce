"""Process-group setup, whoever launched the processes.

Three launchers are understood, in this order (as timm's and torchvision's references do):
  torchrun   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set by torchrun
  submitit   Hydra's submitit launcher (local or Slurm): submitit.JobEnvironment() knows the ranks
  srun       plain `srun mobilenet-train ...` in an sbatch script: SLURM_PROCID, SLURM_STEP_NUM_TASKS,
             SLURM_LOCALID; the master is the first node of the step, the port derives from the job id
Everything is mapped onto torchrun's variables (omnivision does the same), so the rest of the
code only knows one convention. A single process started without torchrun needs nothing: world size 1, no
process group.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class Launch:
    """Where this process sits, read from the launcher's environment."""

    launcher: str = "single"     # single | torchrun | submitit | srun
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: str | None = None
    job_id: str | None = None    # the Slurm (array) job id, or torchrun's rendezvous id: names the run dir


def slurm_job_id(env=os.environ) -> str | None:
    """`<array job>_<task>` for array jobs, else the job id; stays the same when a job is requeued."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def port_for_job(job_id: str | None) -> str:
    """A port every task of a job agrees on without talking: 10000-29999, from the job id's digits."""
    digits = re.sub(r"\D", "", job_id or "")
    return str(10000 + int(digits[-9:] or 0) % 20000)


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list such as `gpu[03-05,09],cpu1`."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m:
        return nodelist
    prefix, ranges = m.groups()
    return prefix + (ranges.split(",")[0].split("-")[0] if ranges else "")


def detect_launch(env=os.environ) -> Launch:
    if "RANK" in env and "WORLD_SIZE" in env:
        run_id = env.get("TORCHELASTIC_RUN_ID")
        return Launch("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                      env.get("MASTER_ADDR"), env.get("MASTER_PORT"),
                      slurm_job_id(env) or (run_id if run_id and run_id != "none" else None))
    if env.get("SUBMITIT_EXECUTOR"):
        import submitit

        job = submitit.JobEnvironment()
        return Launch("submitit", job.global_rank, job.num_tasks, job.local_rank, job.hostnames[0],
                      env.get("MASTER_PORT") or port_for_job(str(job.job_id)), str(job.job_id))
    if env.get("SLURM_STEP_NUM_TASKS") and "SLURM_PROCID" in env:
        # Inside an srun step (the batch script itself runs as one process and is left alone).
        job_id = slurm_job_id(env)
        return Launch("srun", int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                      int(env.get("SLURM_LOCALID", "0")),
                      env.get("MASTER_ADDR") or first_host(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]),
                      env.get("MASTER_PORT") or port_for_job(job_id), job_id)
    return Launch(job_id=slurm_job_id(env))


def init_distributed(device_type: str, timeout_s: int = 300) -> DistInfo:
    launch = detect_launch()
    # torchrun forms a group even of one process (as torchvision's references do): the collectives then
    # run as on N processes, which is how a one-GPU machine checks the NCCL path.
    if launch.world_size <= 1 and launch.launcher != "torchrun":
        return DistInfo()
    rank, world_size, local_rank = launch.rank, launch.world_size, launch.local_rank
    if not dist.is_initialized():
        for key, value in (("RANK", rank), ("WORLD_SIZE", world_size), ("LOCAL_RANK", local_rank),
                           ("MASTER_ADDR", launch.master_addr), ("MASTER_PORT", launch.master_port)):
            if value is not None:
                os.environ[key] = str(value)
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        try:
            # A timeout, so an unreachable master fails instead of hanging forever.
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as e:  # noqa: BLE001 - any failure here is a setup problem
            raise UserError(f"rank {rank} of {world_size} ({launch.launcher}) could not join the process group at "
                            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within "
                            f"{timeout_s}s ({str(e).splitlines()[0] if str(e) else type(e).__name__}); check that "
                            f"every rank started and that the master address and port are reachable") from None
    return DistInfo(rank, world_size, local_rank)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (a collective: all ranks must call it)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj) -> list:
    """`obj` from every rank, in rank order (on every rank)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj`, on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()
