"""Shared fixtures: the real config composed with tiny overrides, and real CLI runs.

As in lightning-hydra-template, tests compose the shipped config (configs/train.yaml) and
shrink it, instead of writing configs of their own. Tests that run the installed commands in
a subprocess are marked `e2e` (`pytest -m "not e2e"` runs the in-process ones alone); those
that call a command's `main` in this process (helpers.run_main) are not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY, ArchCheckpoints, run_cli


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


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    """Deploy tests: two shared cores, and OpenMP's spinning threads make small models slower, not faster."""
    if not request.module.__name__.startswith("test_deploy"):
        yield
        return
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def arch_ckpts(tmp_path_factory):
    """{(alpha, resolution): checkpoint}, random weights, each built on first use in the session."""
    return ArchCheckpoints(tmp_path_factory.mktemp("arch"))


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """One tiny 2-epoch training run, shared by the tests that only read its artifacts."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    run_cli("mobilenet-train", *TINY, "trainer.epochs=2", f"hydra.run.dir={run_dir}", cwd=run_dir.parent)
    return run_dir


# Names whose use in a test function means a console-script subprocess (run_export wraps run_cli). Tests
# that call the scripts' `main` in this process (helpers.run_main) are not e2e.
SUBPROCESS_RUNNERS = {"run_cli", "run_export"}


def pytest_collection_modifyitems(items):
    for item in items:
        code = getattr(getattr(item, "function", None), "__code__", None)
        if "cli" in item.fixturenames or "trained_run" in item.fixturenames or (
                code and SUBPROCESS_RUNNERS & set(code.co_names)):
            item.add_marker(pytest.mark.e2e)
