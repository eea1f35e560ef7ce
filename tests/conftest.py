"""Shared fixtures: the real config composed with tiny overrides, and real CLI runs.

As in lightning-hydra-template, tests compose the shipped config (configs/train.yaml) and
shrink it, instead of writing configs of their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent

# A shapes dataset and model small enough for a training epoch in a few seconds on 2 cores.
TINY = [
    "+experiment=quickstart",
    "data.generate.image_size=40",
    "data.generate.train_per_class=24",
    "data.generate.val_per_class=8",
    "data.batch_size=40",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "model.resolution=32",
    "trainer.epochs=1",
    "trainer.log_every_steps=2",
    "trainer.progress=false",
]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """Generated datasets go to one temporary cache per test session (never ~/.cache)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["MOBILENET_TRAIN_CACHE"] = str(path)
    return path


@pytest.fixture
def compose():
    from mobilenet_train.config import compose as compose_config

    def _compose(*overrides: str):
        return compose_config(list(overrides))

    return _compose


def run_cli(name: str, *args: str, cwd: Path, timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Run an installed console script, as a user would, from `cwd`."""
    exe = BIN / name
    assert exe.exists(), f"{exe} missing: install the package (make install)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny 2-epoch training run, shared by the tests that only read its artifacts."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_cli("mobilenet-train", *TINY, "trainer.epochs=2", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


def shared_or_skip(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared is only on the project's machines)")
    return path


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
