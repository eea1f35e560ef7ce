"""mobilenet-report's tables of task=multilabel and task=embedding runs and eval.json files (hand-written
run dirs with the fields mobilenet-train and mobilenet-eval write), beside the paper's Tables 12 and 14."""

import csv
import json

import pytest

from mobilenet_train import published
from mobilenet_train.cli.report import main as report_cli
from mobilenet_train.report import TASK_CSV, find_all, make_report, write_report

IDENTITY = {"alpha": 0.25, "resolution": 64, "variant": "separable", "params": 218_000, "mult_adds": 3_400_000,
            "dataset": "shapes_attr", "epochs_total": 3}
TEACHER = {"teacher": "/runs/big/checkpoints/best.pt", "teacher_sha256": "ab" * 32, "distill_alpha": 1.0,
           "distill_temperature": 1.0}


def write_lines(run_dir, lines):
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * m["epoch"], **m}) + "\n" for m in lines))


def attr_line(epoch, val_map, **extra):
    return {"epoch": epoch, "task": "multilabel", "train_loss": 0.4, "val_loss": 0.3, "val_map": val_map,
            "best_val_map": val_map, **IDENTITY, **extra}


def emb_line(epoch, recall, **extra):
    return {"epoch": epoch, "task": "embedding", "train_loss": 0.02, "val_recall_at_1": recall,
            "val_recall_at_5": recall + 10, "val_roc_auc": {1: 0.91, 2: 0.92}[epoch],
            "val_tar_at_far_1e-3": 30.0 + epoch, "val_tar_at_far_1e-4": None, "best_val_recall_at_1": recall,
            **IDENTITY, "dataset": "faces", "epochs_total": 2, **extra}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    # distilled on attributes: best epoch 2 (72.5), not the last
    write_lines(root / "attr_distilled", [attr_line(1, 60.0, **TEACHER, distill_target="attributes"),
                                          attr_line(2, 72.5, **TEACHER, distill_target="attributes"),
                                          attr_line(3, 70.0, **TEACHER, distill_target="attributes")])
    write_lines(root / "attr_labels", [attr_line(1, 55.25, epochs_total=5), attr_line(2, None, epochs_total=5)])
    write_lines(root / "emb", [emb_line(1, 40.0, teacher="timm:mobilenetv1_100", distill_alpha=1.0,
                                        distill_target="embedding"), emb_line(2, 55.5, teacher="timm:mobilenetv1_100",
                                                                              distill_alpha=1.0,
                                                                              distill_target="embedding")])
    write_lines(root / "attr_noval", [attr_line(1, None)])
    (root / "attr_distilled" / "eval.json").write_text(json.dumps({
        "task": "multilabel", "map": 71.25, "ap_per_attribute": {"has_circle": 90.0, "is_red": None, "large": 52.5},
        "label_accuracy": 88.0, "loss": 0.31, "num_images": 60, "num_attributes": 3, **IDENTITY,
        "checkpoint": "best.pt"}))
    (root / "emb" / "eval.json").write_text(json.dumps({
        "task": "embedding", "recall_at_1": 56.0, "recall_at_5": 70.0, "roc_auc": 0.9375, "tar_at_far_1e-2": 61.0,
        "tar_at_far_1e-3": 33.5, "tar_at_far_1e-4": 12.25, "verification_accuracy": 86.5, "num_images": 50,
        "num_pairs_positive": 400, "num_pairs_negative": 4000, "embedding_dim": 256, **IDENTITY, "dataset": "faces",
        "checkpoint": "best.pt"}))
    (root / "bad").mkdir()
    (root / "bad" / "eval.json").write_text(json.dumps({"task": "embedding", "recall_at_5": 1.0, **IDENTITY}))
    return root


def write_classification_run(run_dir):
    write_lines(run_dir, [{"epoch": 1, "train_loss": 1.0, "val_top1": 61.0, "val_top5": 85.0, "val_loss": 1.2,
                           **IDENTITY, "dataset": "shapes", "epochs_total": 1}])


def read_csv(path):
    with open(path, newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_task_runs_get_their_own_tables_beside_tables_12_and_14(runs, tmp_path):
    write_classification_run(runs / "cls")
    out = tmp_path / "out"
    table, skipped = write_report([str(runs)], out, tb=tmp_path / "tb")
    assert [r["name"] for r in table] == ["cls"]  # task runs have no top-1: not in the classification table
    assert set(read_csv(out / "report.csv")) == {"cls"}
    text = "\n".join(skipped)
    assert "attr_noval: no val metric yet (1 epoch(s) logged)" in text
    assert "bad/eval.json: not a mobilenet-eval result (no recall_at_1)" in text

    attrs = read_csv(out / TASK_CSV["multilabel"])
    assert set(attrs) == {"attr_distilled", "attr_labels", "attr_distilled/eval.json"}
    d = attrs["attr_distilled"]
    assert (float(d["map"]), d["epoch"], d["in_progress"], d["distill_target"], d["teacher"]) == (
        72.5, "2", "False", "attributes", TEACHER["teacher"])
    assert (float(attrs["attr_labels"]["map"]), attrs["attr_labels"]["in_progress"]) == (55.25, "True")
    ev = attrs["attr_distilled/eval.json"]
    assert (ev["source"], float(ev["map"]), float(ev["label_accuracy"]), ev["num_attributes"]) == (
        "eval", 71.25, 88.0, "3")
    embs = read_csv(out / TASK_CSV["embedding"])
    assert set(embs) == {"emb", "emb/eval.json"}
    assert (float(embs["emb"]["recall_at_1"]), float(embs["emb"]["roc_auc"]), embs["emb"]["tar_at_far_1e-4"]) == (
        55.5, 0.92, "")
    assert (float(embs["emb/eval.json"]["tar_at_far_1e-4"]), embs["emb/eval.json"]["embedding_dim"]) == (12.25, "256")

    md = (out / "report.md").read_text()
    classification = md[:md.index("## Face attributes")]
    assert "| cls |" in classification and "attr_distilled" not in classification and "emb" not in classification
    assert "## Detection" not in md  # a multi-label run's val_map is not a detector's
    assert ("| attr_distilled (train) | shapes_attr | 0.25 | 64 | 3.40 | 0.22 | 72.50 | – | best.pt (α 1.0, "
            "attributes) | 2/3 |") in md
    assert "| attr_labels (train) | shapes_attr | 0.25 | 64 | 3.40 | 0.22 | 55.25 | – | – | 1/5 (in progress" in md
    assert ("| attr_distilled/eval.json (eval) | shapes_attr | 0.25 | 64 | 3.40 | 0.22 | 71.25 | 88.00 | – | "
            "eval |") in md
    assert "| paper: 1.0 MobileNet-224 | – | 1.0 | 224 | 568 | 3.2 | 88.7 | | in-house attribute classifier | |" in md
    assert "| paper: Baseline | – |  |  | 1600 | 7.5 | 86.9 |" in md
    assert "| has_circle | 90.0 |" in md and "| is_red | n/a |" in md  # the eval.json's AP per attribute
    assert ("| emb (train) | faces | 0.25 | 64 | 3.40 | 0.22 | 55.50 | 0.9200 | 32.00 | – | "
            "timm:mobilenetv1_100 (α 1.0, embedding) | 2/2 |") in md
    assert ("| emb/eval.json (eval) | faces | 0.25 | 64 | 3.40 | 0.22 | 56.00 | 0.9375 | 33.50 | 12.25 | – | "
            "eval |") in md
    assert "| paper: 1.0 MobileNet-160 | – | 1.0 | 160 | 286 | 4.9 | | | | 79.4 | FaceNet | |" in md
    assert md.count("| paper: 0.75 MobileNet-128 |") == 2  # the paper prints two rows of that name

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb" / "attr_distilled"))
    acc.Reload()
    assert [s.value for s in acc.Scalars("val/map")] == [60.0, 72.5, 70.0]
    assert {"attr_distilled", "emb", "cls", "attr_labels"} <= {p.name for p in (tmp_path / "tb").iterdir()}


def test_task_runs_alone_write_only_their_sections(runs, tmp_path, capsys):
    report_cli([str(runs / "attr_distilled"), str(runs / "emb"), f"out={tmp_path / 'out'}"])
    stdout = capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["attributes.csv", "embeddings.csv", "report.md"]
    md = (out / "report.md").read_text()
    assert md.startswith("# MobileNet v1 face attributes and embeddings\n")
    assert "## Face attributes" in md and "## Embeddings" in md and "accuracy against cost" not in md
    assert "| runs/attr_distilled (train) |" in stdout and "| eval.json (eval) | faces |" in stdout
    assert "4 result(s); written: " in stdout and "report.csv" not in stdout


def test_a_multilabel_run_is_not_a_detection_run(runs):
    results, task_results, _ = find_all([str(runs / "attr_distilled")])
    assert results == [] and [(r.task, r.source, r.score) for r in task_results] == [
        ("multilabel", "eval", 71.25), ("multilabel", "train", 72.5)]
    report = make_report([str(runs / "attr_distilled")], runs.parent / "out")
    assert report.detections == [] and report.count == 2


def test_tables_12_and_14_in_the_published_file():
    t12 = {r["model"]: r for r in published.table12()["rows"]}
    assert (t12["1.0 MobileNet-224"]["map"], t12["1.0 MobileNet-224"]["mult_adds_m"]) == (88.7, 568)
    assert (t12["0.25 MobileNet-128"]["map"], t12["Baseline"]["params_m"]) == (86.4, 7.5)
    assert len(published.table12()["rows"]) == 7
    t14 = published.table14()["rows"]
    assert [(r["model"], r["accuracy_1e-4"]) for r in t14] == [
        ("FaceNet", 83), ("1.0 MobileNet-160", 79.4), ("1.0 MobileNet-128", 78.3), ("0.75 MobileNet-128", 75.2),
        ("0.75 MobileNet-128", 72.5)]
    assert published.table12()["source"] == published.table14()["source"] == "paper"


def test_a_run_with_only_checkpoints_goes_to_the_table_of_its_configs_task(tmp_path):
    """A run dir without metrics.jsonl: the metrics best.pt holds, in the table of the config's task."""
    import torch

    from mobilenet_train.checkpoint import FORMAT, FORMAT_VERSION

    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    metrics = {k: v for k, v in attr_line(4, 64.5).items() if k != "task"}
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "model": {}, "model_args": {},
                "config": {"task": "multilabel"}, "metrics": metrics}, ckpt_dir / "best.pt")
    results, task_results, skipped = find_all([str(tmp_path / "run")])
    assert results == [] and skipped == []
    assert [(r.task, r.score, r.epoch) for r in task_results] == [("multilabel", 64.5, 4)]
