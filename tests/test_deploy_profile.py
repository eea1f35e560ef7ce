"""mobilenet-bench profile (deploy/profile.py): ONNX Runtime's per-operator profile of an exported file."""

from __future__ import annotations

from helpers import assert_one_line_error, run_cli, run_main

from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.profile import onnx_profile


def test_profile_splits_the_time_by_operator(trained_run, tmp_path):
    out = tmp_path / "m.onnx"
    export(str(trained_run / "checkpoints" / "best.pt"), "onnx", out=str(out), num_verify=1)
    p = onnx_profile(out, threads=1, runs=3, batch=2)
    assert p["runs"] == 3 and p["run_median_ms"] > 0 and abs(sum(r["share"] for r in p["ops"]) - 1) < 1e-6
    assert {r["op"] for r in p["ops"]} >= {"Conv"} and {r["kind"] for r in p["conv_kinds"]} == {
        "stem 3x3 conv", "depthwise 3x3", "pointwise 1x1"}
    proc = run_cli("mobilenet-bench", "profile", str(out), "runs=2", cwd=tmp_path)
    assert "| Conv |" in proc.stdout and "of which depthwise 3x3" in proc.stdout
    for args, needle in [([], "profile takes one exported .onnx file"), ([str(out), "runs=x"], "runs=x")]:
        assert_one_line_error(run_main("mobilenet-bench", "profile", *args, cwd=tmp_path, check=False), needle)
