"""Shared by the tests of mobilenet_train.deploy: one thread, random-weight checkpoints built once
per session (on first use), and TF-Lite op walking."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from helpers import run_cli
from mobilenet_train.deploy.latency import random_checkpoint

SAMPLES = ("data", "imagenet-samples")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Two shared cores: OpenMP's spinning threads make small models much slower, not faster.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _ArchCheckpoints(dict):
    """{(alpha, resolution): checkpoint}, each built on first use: alpha 1.0 and 0.25 at 64 and 96 px
    (96: TF-same padding), random weights with measured BN statistics."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, key):
        alpha, res = key
        self[key] = random_checkpoint([f"model.alpha={alpha}", f"model.resolution={res}", "model.num_classes=10",
                                       "data.num_classes=10", *(["model.padding=tf_same"] if res == 96 else [])],
                                      self.root / f"a{alpha}_r{res}.pt")
        return self[key]


_ARCH: dict = {}


@pytest.fixture
def arch_ckpts(tmp_path_factory):
    if "ckpts" not in _ARCH:  # one set for the whole session, whichever test file asks first
        _ARCH["ckpts"] = _ArchCheckpoints(tmp_path_factory.mktemp("arch"))
    return _ARCH["ckpts"]


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def run_export(*args, cwd):
    return run_cli("mobilenet-export", *args, cwd=cwd, check=False)


def tflite_operators(path) -> list[tuple[str, object, object]]:
    """(operator name, operator, subgraph) of a .tflite file's main graph, in order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    codes, graph = model.operatorCodes, model.subgraphs[0]
    return [(names[max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)], op, graph)
            for op in graph.operators]


def tflite_ops(path) -> dict:
    return Counter(name for name, _, _ in tflite_operators(path))
