"""task=multilabel end to end (section 4.5) on a tiny embedded `shapes_attr`: best.pt by val mAP, the
scores of mobilenet-eval (mean AP, AP per attribute) equal to the training run's, and a student
distilled from the run's attribute outputs on the unlabelled folder (distill.target=attributes,
alpha 1), with a classifier refused as the teacher of attributes."""

from __future__ import annotations

import json

import pytest
from helpers import fit_in_process

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.data.shapes_attr import ATTRIBUTES
from mobilenet_train.errors import UserError
from mobilenet_train.evaluation import evaluate_checkpoint

SMALL = ["data.shapes_attr.image_size=40", "data.shapes_attr.train_images=48", "data.shapes_attr.unlabelled_images=40",
         "data.shapes_attr.val_images=24", "data.batch_size=16", "data.eval_batch_size=24", "data.num_workers=0",
         "model.resolution=32", "trainer.epochs=2", "trainer.log_every_steps=1", "trainer.progress=false"]


def _fit(run_dir, *overrides):
    from mobilenet_train.config import compose
    from mobilenet_train.engine import fit

    return fit(compose(["+experiment=attributes", *SMALL, *overrides], hydra=False), run_dir)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("multilabel") / "teacher"
    _fit(run, "model.alpha=0.5")
    return run


def test_best_checkpoint_by_val_map_and_eval_agrees(teacher, tmp_path):
    lines = [json.loads(line) for line in (teacher / "metrics.jsonl").read_text().splitlines()]
    assert [line["task"] for line in lines] == ["multilabel"] * 2
    best = max(lines, key=lambda line: line["val_map"])
    assert lines[-1]["best_val_map"] == best["val_map"] and 0 < best["val_map"] <= 100
    ckpt = load_checkpoint(teacher / "checkpoints" / "best.pt")
    assert ckpt["epoch"] == best["epoch"] and ckpt["classes"] == list(ATTRIBUTES)
    result = evaluate_checkpoint(str(teacher / "checkpoints" / "best.pt"), [f"out={tmp_path / 'eval.json'}",
                                                                            "device=cpu"])
    assert result["task"] == "multilabel" and result["map"] == pytest.approx(best["val_map"], abs=1e-6)
    assert list(result["ap_per_attribute"]) == list(ATTRIBUTES) and result["num_attributes"] == 16
    known = [ap for ap in result["ap_per_attribute"].values() if ap is not None]
    assert result["map"] == pytest.approx(sum(known) / len(known))
    assert result["label_accuracy"] == pytest.approx(best["val_label_accuracy"], abs=1e-6)


def test_student_distils_attributes_from_unlabelled_images(teacher, tmp_path):
    best = teacher / "checkpoints" / "best.pt"
    metrics = _fit(tmp_path / "student", f"distill.teacher={best}", "distill.alpha=1", "data.train_split=unlabelled",
                   "distill.temperature=2")
    assert metrics["train_loss"] >= 0 and metrics["distill_target"] == "attributes"
    record = load_checkpoint(tmp_path / "student" / "checkpoints" / "last.pt")["teacher"]
    assert record["target"] == "attributes" and record["temperature"] == 2.0
    assert record["val_top1"] == pytest.approx(load_checkpoint(best)["metrics"]["val_map"])  # the teacher's mAP
    log = (tmp_path / "student" / "metrics.jsonl").read_text()
    assert '"task": "multilabel"' in log


def test_a_classifier_cannot_teach_attributes(tmp_path):
    fit_in_process(tmp_path / "cls")
    with pytest.raises(UserError, match="is a task=classification model; distill.target=attributes needs a "
                                        "task=multilabel teacher"):
        _fit(tmp_path / "student", f"distill.teacher={tmp_path / 'cls' / 'checkpoints' / 'last.pt'}",
             "distill.alpha=1")
    assert not (tmp_path / "student" / "checkpoints").exists()


def test_unlabelled_training_without_a_teacher_is_refused(tmp_path):
    with pytest.raises(UserError, match="distill.alpha=1"):
        _fit(tmp_path / "run", "data.train_split=unlabelled")
    assert not (tmp_path / "run").exists()
