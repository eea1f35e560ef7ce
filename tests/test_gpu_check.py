"""scripts/gpu_check.py (make gpu-check) where there is no GPU: its one-line refusal, its CPU twin of the speed
part end to end, and its goals and table from a result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the check would run")
def test_without_cuda_it_refuses_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--device cpu" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cpu_twin_of_the_speed_part_measures_all_three_trainers(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--parts", "speed", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = {r["name"]: r for r in result["speed"]["rows"]}
    assert set(rows) == {"baseline (eager contiguous fp32)", "toolkit eager channels_last bf16",
                         "timm eager channels_last bf16"}
    assert all(r["samples"] and r["images_per_sec"] > 0 and r["error"] is None for r in rows.values())
    speed = result["speed"]
    assert speed["step_vs_timm"] == pytest.approx(rows["toolkit eager channels_last bf16"]["ratio"]
                                                  / rows["timm eager channels_last bf16"]["ratio"])
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| timm eager channels_last bf16 |" in table and "scripts/bench_train.py" in table


def test_goals_and_table_from_a_result():
    gc = _module()
    results = {
        "command": "python3 scripts/gpu_check.py", "seconds": 300.0, "device": "cuda",
        "machine": {"date": "2026-12-04", "gpu": "GPU", "gpus": 1, "cuda": "13.0", "cudnn": 9, "cpus": 16,
                    "torch": "2.11", "python": "3.12"},
        "tests": {"ok": False, "cmd": "pytest -m cuda", "seconds": 90.0, "timed_out": False, "passed": 1, "failed": 1,
                  "skipped": 0, "tests": [{"name": "test_a", "outcome": "passed", "seconds": 1.0, "message": ""},
                                          {"name": "test_b", "outcome": "failed", "seconds": 2.0, "message": "a | b"}]},
        "speed": {"ok": True, "step_images_per_sec": 9000.0, "step_vs_timm": 1.1, "cmd": "bench", "seconds": 1.0,
                  "rows": []},
        "pipeline": {"ok": True, "gpu_decode_images_per_sec": 3500.0, "gpu_decode_vs_cpu": 2.5, "runs": []},
    }
    goals = {g["goal"]: g["met"] for g in gc.goals(results)}
    assert list(goals.values()) == [False, True, False, True, True, None]  # the quickstart was not run
    results["goals"] = gc.goals(results)
    table = gc.markdown(results)
    assert "| test_b | failed | 2.0 | a / b |" in table  # a | in a message does not break the table
    assert "| quickstart val top-1 gap, cuda against cpu (points) | – | 5.0 | not measured |" in table
