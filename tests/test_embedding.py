"""task=embedding end to end (section 4.7): a student trained only on a teacher's embeddings, its
head sized by the teacher, scored by retrieval and verification each epoch and by mobilenet-eval,
a classifier's pooled features scored the same way (embedding=true), and the embedding exported
as the output of an ONNX file."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import fit_in_process

from mobilenet_train.checkpoint import load_checkpoint, model_from_checkpoint
from mobilenet_train.deploy.export import export
from mobilenet_train.engine.trainer import SCORE_KEYS
from mobilenet_train.evaluation import evaluate_checkpoint, evaluate_file

STUDENT = ["task=embedding", "distill.target=embedding", "distill.alpha=1", "model.alpha=0.25",
           "distill.normalize=true", "model.l2_normalize=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-epoch classifier teacher (alpha 0.5: 512-d pooled features) and a student distilled from it."""
    root = tmp_path_factory.mktemp("embedding")
    fit_in_process(root / "teacher", "model.alpha=0.5")
    teacher = root / "teacher" / "checkpoints" / "last.pt"
    fit_in_process(root / "student", f"distill.teacher={teacher}", *STUDENT)
    return root, teacher


def test_student_head_takes_the_teachers_size_and_records_it(runs):
    root, teacher = runs
    ckpt = load_checkpoint(root / "student" / "checkpoints" / "last.pt")
    assert ckpt["model_args"]["embedding_dim"] == 512  # the alpha 0.5 teacher's pooled width
    model, _ = model_from_checkpoint(ckpt)
    assert model.fc.in_features == 256 and model.fc.out_features == 512  # the learned projection
    assert ckpt["teacher"]["target"] == "embedding" and ckpt["config"]["task"] == "embedding"
    line = json.loads((root / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["task"] == "embedding" and line["distill_target"] == "embedding"
    assert 0 <= line["val_recall_at_1"] <= 100 and 0 <= line["val_roc_auc"] <= 1
    assert line[f"best_{SCORE_KEYS['embedding']}"] == line["val_recall_at_1"]
    assert line["val_num_pairs_positive"] == 10 * 8 * 7 // 2  # shapes' 10 classes x 8 val images, all pairs


def test_mobilenet_eval_scores_an_embedding_checkpoint_as_training_did(runs, tmp_path):
    root, _ = runs
    ckpt = root / "student" / "checkpoints" / "last.pt"
    evaluate_checkpoint(str(ckpt), [f"out={tmp_path / 'eval.json'}", "device=cpu"])
    result = json.loads((tmp_path / "eval.json").read_text())
    line = json.loads((root / "student" / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["task"] == "embedding" and result["embedding_dim"] == 512
    for key in ("recall_at_1", "recall_at_5", "roc_auc", "tar_at_far_1e-3", "verification_accuracy"):
        assert result[key] == pytest.approx(line[f"val_{key}"], abs=1e-6)


def test_a_classifiers_pooled_features_are_scored_with_embedding_true(runs, tmp_path):
    from mobilenet_train.data import eval_images
    from mobilenet_train.metrics import embedding_scores

    root, teacher = runs
    evaluate_checkpoint(str(teacher), ["embedding=true", f"out={tmp_path / 'eval.json'}", "device=cpu"])
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["embedding_dim"] == 512 and result["embedding_of"].startswith("pooled features")
    # The same numbers from the pooled features computed here.
    ckpt = load_checkpoint(teacher)
    model, args = model_from_checkpoint(ckpt)
    from mobilenet_train.config import typed_config
    from mobilenet_train.data import DevicePreprocess, image_folder, resolve_root
    cfg = typed_config(ckpt["config"])
    folder = image_folder(resolve_root(cfg.data), "val", None)
    paths, labels = zip(*folder.samples, strict=True)
    x = DevicePreprocess(cfg.data.normalization, torch.device("cpu"), False)(eval_images(cfg.data, args.resolution,
                                                                                          paths))
    with torch.no_grad():
        expected = embedding_scores(model.eval().forward_pooled(x), torch.tensor(labels))
    assert result["recall_at_1"] == pytest.approx(expected["recall_at_1"])
    assert result["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)


def test_onnx_export_outputs_the_embedding_and_scores_as_the_checkpoint(runs, tmp_path):
    import onnxruntime as ort

    root, _ = runs
    ckpt_path = root / "student" / "checkpoints" / "last.pt"
    out = tmp_path / "student.onnx"
    export(str(ckpt_path), "onnx", out=str(out))
    model, args = model_from_checkpoint(load_checkpoint(ckpt_path))
    x = torch.randn(2, 3, args.resolution, args.resolution)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(x)
    assert got.shape == (2, 512)
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-5)
    assert torch.allclose(torch.from_numpy(got).norm(dim=1), torch.ones(2), atol=1e-5)  # model.l2_normalize

    from_file = evaluate_file(str(out), [f"out={tmp_path / 'file.json'}"])
    from_ckpt = evaluate_checkpoint(str(ckpt_path), [f"out={tmp_path / 'ckpt.json'}", "device=cpu"])
    assert from_file["task"] == "embedding" and from_file["embedding_dim"] == 512
    for key in ("recall_at_1", "roc_auc", "num_pairs_positive"):
        assert from_file[key] == pytest.approx(from_ckpt[key], abs=1e-4)
