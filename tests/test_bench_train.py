"""The benchmark script keeps working (its numbers are measured by hand, not asserted)."""

import json
import subprocess
import sys

from helpers import REPO


def test_bench_train_runs_and_reports_ratio(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_train.py"), "--alpha", "0.25", "--resolution", "32",
           "--batch", "8", "--steps", "2", "--warmup", "1", "--repeats", "1", "--amp", "bf16", "--teacher-alpha", "0.5",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio vs baseline" in proc.stdout and "baseline (eager contiguous fp32)" in proc.stdout
    assert "+ teacher" in proc.stdout and "teacher cost (toolkit eager channels_last bf16" in proc.stdout
    data = json.loads(out.read_text())
    assert data, "no results written"
    text = json.dumps(data)
    assert "images_per_sec" in text or "images/s" in text
