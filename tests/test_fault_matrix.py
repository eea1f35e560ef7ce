"""scripts/fault_matrix.py, the whole matrix (slow: real tmpfs, signals, 20 SIGKILLs; several minutes on
2 cores): every row ends in one line without a traceback, a fault that stops a command exits non-zero,
and every training run a fault interrupted ends, run again, with the weights of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO

# Faults the run lives through (exit 0): a read retried, an image replaced (the bad-image policy); and the
# rows whose last column is about the rerun of an output, not about weights.
SURVIVED = ("data file EIO once", "data file EIO on every read", "data file vanished mid-epoch")
WEIGHTS_DIFFER = ("data file EIO on every read", "data file vanished mid-epoch")  # an image replaced, by design
NOT_ABOUT_WEIGHTS = ("exploding loss", "output path read-only")


@pytest.mark.slow
def test_fault_matrix(tmp_path):
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_matrix.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines[1:]]
    assert len(rows) >= 20, out.read_text()
    for fault, site, saw, code, _lost, again in rows:
        assert "TRACEBACK" not in saw and "MORE THAN ONE LINE" not in saw, (fault, saw)
        if fault not in SURVIVED and "SIGKILL" not in fault and "corrupt" not in fault:
            assert code != "0" and saw, (fault, site, code, saw)
        if site.startswith(("eval:", "report:", "export:")):
            assert again.startswith("rerun with room: wrote"), (site, again)
        elif fault not in WEIGHTS_DIFFER + NOT_ABOUT_WEIGHTS:
            assert "yes, bit-identical" in again, (fault, site, again)
