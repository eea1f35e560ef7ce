"""scripts/bench_data.py runs end to end on a few images and reports its table (numbers are not asserted)."""

import json
import subprocess
import sys

from helpers import REPO, photo, save_jpeg


def test_bench_data_reports_ratios_for_all_pipelines(tmp_path):
    for c in range(2):
        d = tmp_path / "ds" / "train" / f"n0{c}"
        d.mkdir(parents=True)
        for i in range(3):
            save_jpeg(d / f"{i}.JPEG", photo(200, 150, seed=c * 3 + i))
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "scripts" / "bench_data.py"), str(tmp_path / "ds"), "--images", "5",
           "--batch", "2", "--resolutions", "64", "--repeats", "1", "--pack", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "baseline" in proc.stdout and "toolkit" in proc.stdout and "shards" in proc.stdout
    data = json.loads(out.read_text())
    rows = {(r["pipeline"], r["resolution"]): r for r in data["results"]}
    assert set(rows) == {("train", 64), ("eval", 64)}
    for r in rows.values():
        assert r["images"] == 5 and r["ratio"] > 0 and r["shards_ratio"] > 0
        assert r["baseline_images_per_sec"] > 0 and r["toolkit_images_per_sec"] > 0
    assert 0 < data["shard_bytes"] and 0 < data["folder_bytes"]
