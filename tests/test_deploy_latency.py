"""mobilenet-bench latency (deploy/latency.py and its CLI): latency.json feeds the report."""

from __future__ import annotations

import json

import pytest
from helpers import assert_one_line_error, run_cli, run_main

from mobilenet_train.deploy.latency import LatencyOptions, bench_model, parse_backends, run_latency
from mobilenet_train.errors import UserError
from mobilenet_train.report import LATENCY_OUTPUT, write_report

ALL_BACKENDS = [("pytorch", "fp32"), ("compile", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("executorch", "fp32"),
                ("tflite", "int8")]


# The exports are most of the cost (ExecuTorch ~20 s, TF-Lite int8 ~16 s on 2 cores): the default set times the
# in-process backends and ONNX fp32/int8 (enough for the report's eager, fp32 and int8 columns); the ExecuTorch
# runner is timed by the CLI test below, TF-Lite's runner runs in test_deploy_score, and the whole matrix is slow.
@pytest.mark.parametrize("backends", [ALL_BACKENDS[:4], pytest.param(ALL_BACKENDS, marks=pytest.mark.slow)],
                         ids=["pytorch-compile-onnx", "all"])
def test_latency_bench_writes_json_and_report_reads_it(trained_run, tmp_path, backends):
    ckpt = trained_run / "checkpoints" / "best.pt"
    out = tmp_path / "lat" / "latency.json"
    opts = LatencyOptions(runs=3, warmup=1, batch=2, threads="1,2", out=str(out),
                          backends=",".join(f"{b}-{p}" if b in ("onnx", "executorch", "tflite") else b
                                            for b, p in backends))
    report, path = run_latency([ckpt], [], False, opts)
    data = json.loads(out.read_text())
    assert path == out and data["format"] == "mobilenet-bench-latency"
    assert data["machine"]["cpu"] and data["machine"]["logical_cpus"] >= 1 and data["threads"] == [1, 2]
    (m,) = data["models"]
    assert (m["alpha"], m["resolution"]) == (0.25, 32) and m["checkpoint"] == str(ckpt.resolve())
    combos = {(r["backend"], r["precision"], r["threads"], r["batch"]) for r in m["results"]}
    assert combos == {(b, p, t, n) for b, p in backends for t in (1, 2) for n in (1, 2)}
    for r in m["results"]:
        assert r["runs"] == 3 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["images_per_sec"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert r["ratio_to_eager"] > 0
    # The report: latency columns for the run of that architecture, a latency section and plot.
    table, _ = write_report([str(trained_run), str(out)], tmp_path / "report")
    (row,) = table
    assert (row["latency_threads"] == 1 and row["latency_eager_ms"] > 0
            and row["latency_int8_backend"] in ("onnx", "tflite"))
    assert row["latency_fp32_backend"] in ("compile", "onnx", "executorch")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Latency" in text and "latency ms eager / fp32 / int8" in text
    assert (tmp_path / "report" / LATENCY_OUTPUT).stat().st_size > 10_000


def test_latency_bench_cli_architecture(tmp_path):
    proc = run_cli("mobilenet-bench", "latency", "model.alpha=0.25", "model.resolution=32", "runs=2", "warmup=0",
                   "batch=2", "threads=1", "backends=pytorch,executorch-fp32", cwd=tmp_path)
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["models"][0]["weights"].startswith("random") and len(data["models"][0]["results"]) == 4
    assert "| executorch | fp32 | 1 | 2 |" in proc.stdout


def test_latency_bench_bad_input(tmp_path):
    # The installed script once, end to end; the other cases in this process (helpers.run_main).
    assert_one_line_error(run_cli("mobilenet-bench", "latency", "threads=zero", cwd=tmp_path, check=False),
                          "threads=zero")
    for args, needle in [(["threads=zero"], "threads=zero"), (["backends=tpu"], "'tpu' is unknown"),
                         (["nothing.pt"], "neither a checkpoint"), (["trainer.epochs=3"], "not a model.* or data.*"),
                         (["runs=many"], "runs=many is not allowed")]:
        assert_one_line_error(run_main("mobilenet-bench", "latency", *args, cwd=tmp_path, check=False), needle)
    assert list(tmp_path.iterdir()) == []


def test_backends_all_skips_what_is_not_installed(arch_ckpts, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {"executorch", "litert_torch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    # backends=all leaves out what is not installed, and says so; naming one is an error.
    assert {b for b, _ in parse_backends("all")} == {"pytorch", "compile", "onnx"}
    with pytest.raises(UserError, match="tflite"):
        bench_model(arch_ckpts[(0.25, 64)], LatencyOptions(backends="tflite-int8"), tmp_path)
