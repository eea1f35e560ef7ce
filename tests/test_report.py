"""mobilenet-report on a real 2x2 sweep (`mobilenet-train -m +experiment=[quickstart,paper_grid]`
shrunk to seconds), and on hand-written run dirs for what a short sweep cannot produce: ImageNet
runs beside the published numbers, runs in progress, corrupt and incomplete input."""

import csv
import json

import pytest
from helpers import TINY, run_cli

from mobilenet_train import published
from mobilenet_train.cli.report import main as report_cli
from mobilenet_train.complexity import complexity_of
from mobilenet_train.model import ModelArgs
from mobilenet_train.report import (
    OUTPUTS,
    PUBLISHED_STYLE,
    figure,
    find_latency,
    find_results,
    latency_figure,
    write_report,
)

# TINY without its model resolution: the sweep sets it.
SWEEP_OVERRIDES = [o for o in TINY if not o.startswith(("+experiment=", "model.resolution="))]
SWEEP_DIRS = {"alpha=0.25,res=32", "alpha=0.25,res=40", "alpha=0.5,res=32", "alpha=0.5,res=40"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as mp:
        # One thread per run: on a busy 2-core machine OpenMP's spinning threads make these
        # tiny runs ten times slower (measured: 107 s for the sweep with 2 threads, 9 s with 1).
        mp.setenv("OMP_NUM_THREADS", "1")
        run_cli("mobilenet-train", "-m", "+experiment=[quickstart,paper_grid]", *SWEEP_OVERRIDES,
                "model.alpha=0.25,0.5", "model.resolution=32,40", f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    return root / "sweep"


def best_line(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return max(lines, key=lambda m: m["val_top1"])


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_one_readable_run_dir_per_point(sweep):
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == SWEEP_DIRS
    for name in SWEEP_DIRS:
        m = best_line(sweep / name)
        assert name == f"alpha={m['alpha']},res={m['resolution']}"
        assert (m["variant"], m["dataset"], m["epochs_total"]) == ("separable", "shapes", 1)
        assert m["mult_adds"] == complexity_of(ModelArgs(alpha=m["alpha"], resolution=m["resolution"],
                                                         num_classes=10))["mult_adds"]
        assert (sweep / name / "checkpoints" / "best.pt").is_file()


def test_report_on_the_sweep(sweep, cli, tmp_path):
    out = tmp_path / "out"
    proc = cli("mobilenet-report", str(sweep), f"out={out}", "--tensorboard", cwd=tmp_path)
    assert proc.stderr.strip() == ""  # nothing skipped
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "tb"])
    table = read_csv(out / "report.csv")
    assert {r["name"] for r in table} == SWEEP_DIRS
    md = (out / "report.md").read_text()
    for row in table:
        m = best_line(sweep / row["name"])
        assert float(row["top1"]) == pytest.approx(m["val_top1"])
        assert float(row["top5"]) == pytest.approx(m["val_top5"])
        assert int(row["mult_adds"]) == m["mult_adds"] and int(row["params"]) == m["params"]
        assert float(row["images_per_sec"]) == pytest.approx(m["images_per_sec"])
        assert (float(row["alpha"]), int(row["resolution"]), row["epoch"]) == (m["alpha"], m["resolution"], "1")
        assert row["in_progress"] == "False" and row["paper_top1"] == ""  # shapes runs: no ImageNet numbers
        md_row = next(line for line in md.splitlines() if f"| {row['name']} |" in line)
        assert f"| {m['val_top1']:.2f} | {m['val_top5']:.2f} |" in md_row and f"| {m['resolution']} |" in md_row
    for name in OUTPUTS[2:]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # One TensorBoard run per sweep point, with its scalars and hparams.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert {p.name for p in (out / "tb").iterdir() if p.is_dir()} == SWEEP_DIRS
    acc = EventAccumulator(str(out / "tb" / "alpha=0.5,res=40"))
    acc.Reload()
    assert acc.Scalars("val/top1")[-1].value == pytest.approx(best_line(sweep / "alpha=0.5,res=40")["val_top1"])
    assert acc.PluginTagToContent("hparams")


@pytest.mark.parametrize("x", ["mult_adds", "params"])
def test_figures_hold_one_point_per_run_plus_the_published_points(sweep, x):
    results, skipped = find_results([str(sweep)])
    assert len(results) == 4 and skipped == []
    ax = figure(results, x).axes[0]

    def points(gid):
        return sorted(xy for line in ax.get_lines() if line.get_gid() == gid
                      for xy in zip(line.get_xdata(), line.get_ydata()))

    assert points("run") == sorted((getattr(r, x) / 1e6, r.top1) for r in results)
    for source, count in (("paper", 10), ("tf_slim", 16)):
        pts = points(f"published:{source}")
        assert len(pts) == count == len(published.unique_points(source))
        key = "mult_adds_m" if x == "mult_adds" else "params_m"
        assert pts == sorted((getattr(p, key), p.top1) for p in published.unique_points(source))
    assert points("frontier")
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert "Figure 4" in ax.get_title() if x == "mult_adds" else "Figure 5" in ax.get_title()
    assert ax.get_legend() is not None


def write_run(run_dir, model, val_top1, epochs_total, dataset="imagenet", bad_lines=()):
    """A run dir as mobilenet-train writes it: one metrics line per epoch (val_top1=None: not evaluated)."""
    c = complexity_of(ModelArgs(**model))
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, top1 in enumerate(val_top1, 1):
        line = {"epoch": epoch, "step": 100 * epoch, "train_loss": 1.0, "images_per_sec": 500.0 + epoch,
                "alpha": model.get("alpha", 1.0), "resolution": model.get("resolution", 224),
                "variant": model.get("variant", "separable"), **c, "dataset": dataset, "epochs_total": epochs_total}
        if top1 is not None:
            line.update(val_top1=top1, val_top5=top1 + 20, val_loss=1.5)
        lines.append(json.dumps(line))
    for i, text in bad_lines:
        lines.insert(i, text)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a1_224", {}, [50.0, 69.0, 68.5], 3)
    write_run(root / "conv", {"variant": "conv"}, [71.0], 1)
    write_run(root / "growing", {"alpha": 0.25, "resolution": 128}, [30.0, 38.5], 10)
    write_run(root / "corrupt", {"alpha": 0.75, "resolution": 192}, [60.0, 66.0], 2,
              bad_lines=[(1, '{"epoch": 2, "val_top1": 9'), (2, "[1, 2]")])
    write_run(root / "noval", {"alpha": 0.5}, [None], 5)
    write_run(root / "on_shapes", {}, [95.0], 1, dataset="shapes")
    evals = root / "evals"
    evals.mkdir()
    c = complexity_of(ModelArgs(alpha=0.5, resolution=160))
    (evals / "eval.json").write_text(json.dumps({
        "top1": 60.0, "top5": 82.5, "loss": 1.7, "num_images": 50000, **c, "images_per_sec": 900.0,
        "checkpoint": "best.pt", "alpha": 0.5, "resolution": 160, "variant": "separable", "dataset": "imagenet",
        "epoch": 150}))
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_published_numbers_in_progress_runs_and_skipped_input(runs):
    out = runs / "out"
    (runs / "notes.json").write_text("[1, 2]")
    paths = [str(runs / "runs"), str(runs / "empty"), str(runs / "missing"), str(runs / "notes.json")]
    table, skipped = write_report(paths, out)
    rows = {r["name"]: r for r in read_csv(out / "report.csv")}
    assert set(rows) == {"a1_224", "conv", "growing", "corrupt", "on_shapes", "evals/eval.json"}

    a1 = rows["a1_224"]  # best epoch, beside the paper (Tables 4, 6, 7) and TF-slim's 1.0_224
    assert (a1["epoch"], float(a1["top1"]), a1["in_progress"]) == ("2", 69.0, "False")
    assert (float(a1["paper_top1"]), a1["paper_tables"], float(a1["paper_top1_diff"])) == (
        70.6, "4, 6, 7", pytest.approx(-1.6))
    assert (float(a1["tfslim_top1"]), float(a1["tfslim_top5"])) == (70.9, 89.9)
    assert float(a1["tfslim_top1_diff"]) == pytest.approx(-1.9) and float(a1["tfslim_top5_diff"]) == pytest.approx(-0.9)
    conv = rows["conv"]
    assert (float(conv["paper_top1"]), conv["paper_tables"], conv["tfslim_top1"]) == (71.7, "4", "")
    growing = rows["growing"]  # 2 of 10 epochs: its best epoch so far, marked
    assert (growing["in_progress"], growing["epoch"], float(growing["top1"])) == ("True", "2", 38.5)
    assert (float(growing["tfslim_top1"]), float(growing["tfslim_top5"]), growing["paper_top1"]) == (41.5, 66.3, "")
    assert float(rows["corrupt"]["top1"]) == 66.0  # its good lines still count
    ev = rows["evals/eval.json"]
    assert (ev["source"], float(ev["paper_top1"]), ev["paper_tables"], float(ev["tfslim_top1"])) == (
        "eval", 60.2, "9", 59.1)
    assert rows["on_shapes"]["paper_top1"] == "" and rows["on_shapes"]["tfslim_top1"] == ""
    # Pareto frontiers are per dataset: 95% on shapes does not beat the ImageNet runs.
    assert all(r["pareto_mult_adds"] == "True" for r in rows.values())
    assert rows["conv"]["pareto_params"] == "True" and rows["a1_224"]["pareto_params"] == "True"

    text = "\n".join(skipped)
    assert "corrupt/metrics.jsonl line 2: not valid JSON" in text
    assert "corrupt/metrics.jsonl line 3: not an epoch record" in text
    assert "noval: no val metric yet (1 epoch(s) logged)" in text
    assert f"{runs / 'empty'}: no runs under it" in text
    assert f"{runs / 'missing'}: does not exist" in text
    assert f"{runs / 'notes.json'}: not a mobilenet-eval result" in text
    md = (out / "report.md").read_text()
    assert "2/10 (in progress: best so far)" in md and "| 70.6 (-1.6) |" in md and "## Skipped" in md
    assert "arxiv.org/abs/1704.04861" in md and "mobilenet_v1.md" in md


def run_report(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        report_cli(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, [line for line in err.splitlines() if line.strip()]


def test_errors_are_one_line_and_exit_2(runs, capsys):
    code, out, err = run_report(capsys, str(runs / "empty"), f"out={runs / 'out'}")
    assert code == 2 and len(err) == 1 and err[0].startswith("mobilenet-report: error: no runs to report")
    assert "no runs under it" in err[0] and not (runs / "out").exists()
    code, _, err = run_report(capsys, str(runs / "missing"))
    assert code == 2 and len(err) == 1 and "does not exist" in err[0]
    code, _, err = run_report(capsys, str(runs / "runs"), "out=")
    assert code == 2 and len(err) == 1 and "'out=' needs a directory" in err[0]
    foreign = runs / "foreign_tb"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run_report(capsys, str(runs / "runs"), f"out={runs / 'out'}", f"tb={foreign}")
    assert code == 2 and len(err) == 1 and "was not written by mobilenet-report" in err[0]
    assert (foreign / "notes.txt").read_text() == "mine"


def test_skipped_input_is_reported_and_the_rest_written(runs, capsys):
    report_cli([str(runs / "runs"), str(runs / "empty"), f"out={runs / 'out'}", f"tb={runs / 'tb'}"])
    out, err = capsys.readouterr()
    skipped = [line for line in err.splitlines() if line]
    assert len(skipped) == 4 and all(line.startswith("mobilenet-report: skipped ") for line in skipped)
    assert "6 result(s)" in out and (runs / "out" / "report.md").is_file()
    assert (runs / "tb" / ".mobilenet-report").is_file()
    report_cli([str(runs / "runs" / "conv"), f"out={runs / 'out'}", f"tb={runs / 'tb'}"])  # replaces its own tb dir
    assert {p.name for p in (runs / "tb").iterdir() if p.is_dir()} == {"runs"}  # runs/conv, named by its last parts
    assert len(read_csv(runs / "out" / "report.csv")) == 1


def test_published_data_file():
    slim = published.results("tf_slim")
    assert sorted((p.alpha, p.resolution) for p in slim) == sorted(
        (a, r) for a in (1.0, 0.75, 0.5, 0.25) for r in (224, 192, 160, 128))
    by_key = {(p.alpha, p.resolution): p for p in slim}
    assert (by_key[1.0, 224].top1, by_key[1.0, 224].top5) == (70.9, 89.9)
    assert (by_key[0.25, 128].top1, by_key[0.25, 128].top5, by_key[0.25, 128].mult_adds_m) == (41.5, 66.3, 14)
    paper = published.results("paper")
    assert {p.table for p in paper} == {"4", "5", "6", "7", "9"}
    assert {(p.model, p.top1) for p in paper if p.table in ("4", "5")} == {
        ("Conv MobileNet", 71.7), ("MobileNet", 70.6), ("0.75 MobileNet", 68.4), ("Shallow MobileNet", 65.3)}
    assert all(s["url"].startswith("https://") for s in published.data()["sources"].values())


def test_modern_recipes_are_published_points():
    timm = {(p.alpha, p.resolution): p.top1 for p in published.results("timm")}
    assert timm == {(1.0, 224): 75.38, (1.0, 256): 76.09, (1.25, 224): 76.92, (1.25, 256): 77.61}
    assert [(p.alpha, p.resolution, p.top1) for p in published.results("tf_model_garden")] == [(1.0, 224, 72.33)]
    assert {"timm", "tf_model_garden"} <= set(PUBLISHED_STYLE)


def test_fp32_ptq_and_qat_files_side_by_side_with_their_latency(tmp_path):
    """eval.json of a checkpoint and FILE.eval.json of its PTQ and QAT int8 files (mobilenet-eval FILE): one row
    each, with the quantization; the latency figure marks each int8 file's own top-1 at the int8 latency."""

    common = {"alpha": 0.5, "resolution": 160, "variant": "separable", "params": 1_300_000, "mult_adds": 77_000_000,
              "dataset": "imagenet", "top5": 90.0, "num_images": 1000, "images_per_sec": 50.0}
    for name, quantization, top1 in [("eval.json", "fp32", 66.0), ("best.int8.tflite.eval.json", "int8-ptq", 65.0),
                                     ("qat.int8.tflite.eval.json", "int8-qat", 65.9)]:
        (tmp_path / name).write_text(json.dumps({**common, "top1": top1, "quantization": quantization}))
    results = [{"backend": b, "precision": p, "threads": 1, "batch": 1, "median_ms": ms}
               for b, p, ms in [("pytorch", "fp32", 9.0), ("onnx", "fp32", 4.0), ("tflite", "int8", 2.0)]]
    (tmp_path / "latency.json").write_text(json.dumps({
        "format": "mobilenet-bench-latency", "machine": {"cpu": "test cpu"},
        "models": [{"alpha": 0.5, "resolution": 160, "variant": "separable", "results": results}]}))
    table, _ = write_report([str(tmp_path)], tmp_path / "report")
    assert sorted((r["quantization"], r["top1"], r["latency_int8_ms"]) for r in table) == [
        ("fp32", 66.0, 2.0), ("int8-ptq", 65.0, 2.0), ("int8-qat", 65.9, 2.0)]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| precision |" in text and "| int8-qat |" in text
    found, _ = find_results([str(tmp_path)])
    latency, _ = find_latency([str(tmp_path)])
    ax = latency_figure(found, latency).axes[0]
    marks = {line.get_gid(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines
             if str(line.get_gid()).startswith("quantized:")}
    assert marks == {"quantized:int8-ptq": ([2.0], [65.0]), "quantized:int8-qat": ([2.0], [65.9])}
