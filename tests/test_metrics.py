"""metrics.py: average precision and ROC-AUC against scikit-learn on fixed examples (ties and missing
labels included), TAR@FAR, recall@k and the verification pairs."""

from __future__ import annotations

import math

import pytest
import torch

from mobilenet_train import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")

# A fixed example: 3 attributes x 10 images, tied scores, a missing label (NaN), an attribute with no positive.
SCORES = torch.tensor([[0.9, 0.2, 0.5], [0.8, 0.4, 0.5], [0.8, 0.1, 0.5], [0.6, 0.9, 0.5], [0.5, 0.3, 0.5],
                       [0.4, 0.3, 0.5], [0.3, 0.8, 0.5], [0.2, 0.7, 0.5], [0.2, 0.6, 0.5], [0.1, 0.5, 0.5]])
NAN = float("nan")
TARGETS = torch.tensor([[1, 0, 0], [0, NAN, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0],
                        [0, 1, 0], [0, 1, 0], [1, NAN, 0], [0, 0, 0], [1, 1, 0]], dtype=torch.float32)


def _sklearn_ap(column: int) -> float:
    known = ~torch.isnan(TARGETS[:, column])
    return sklearn_metrics.average_precision_score(TARGETS[known, column].numpy(), SCORES[known, column].numpy())


def test_average_precision_is_sklearns_on_a_fixed_example():
    for a in (0, 1):
        assert metrics.average_precision(SCORES[:, a], TARGETS[:, a]) == pytest.approx(_sklearn_ap(a), abs=1e-12)
    assert metrics.average_precision(SCORES[:, 2], TARGETS[:, 2]) is None  # no positive: not scored
    mean, per = metrics.mean_average_precision(SCORES, TARGETS)
    assert per[0] == pytest.approx(100 * _sklearn_ap(0)) and per[1] == pytest.approx(100 * _sklearn_ap(1))
    assert per[2] is None and mean == pytest.approx(50 * (_sklearn_ap(0) + _sklearn_ap(1)))


def test_average_precision_is_sklearns_on_random_tied_scores():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        scores = torch.randint(0, 5, (40,), generator=g).float()
        labels = (torch.rand(40, generator=g) < 0.3).float()
        if labels.sum() == 0:
            continue
        expected = sklearn_metrics.average_precision_score(labels.numpy(), scores.numpy())
        assert metrics.average_precision(scores, labels) == pytest.approx(expected, abs=1e-12)
        assert metrics.roc_auc(scores, labels.bool()) == pytest.approx(
            sklearn_metrics.roc_auc_score(labels.numpy(), scores.numpy()), abs=1e-12)


def test_label_accuracy_counts_only_known_labels():
    logits = torch.tensor([[2.0, -1.0, 3.0], [-2.0, -1.0, 1.0]])
    targets = torch.tensor([[1.0, 1.0, NAN], [0.0, NAN, NAN]])
    assert metrics.label_accuracy(logits, targets).tolist() == [0.5, 1.0]
    assert metrics.label_accuracy(logits, torch.full((2, 3), NAN)).tolist() == [0.0, 0.0]


def test_tar_at_far_and_balanced_accuracy():
    negative = torch.arange(1000, dtype=torch.float32) / 1000  # 0.000 .. 0.999
    positive = torch.tensor([0.9985, 0.995, 0.95, 0.5])
    # FAR 1e-3 allows one negative above the threshold: the threshold is the second highest (0.998).
    assert metrics.tar_at_far(positive, negative, 1e-3) == pytest.approx(0.25)
    assert metrics.tar_at_far(positive, negative, 1e-2) == pytest.approx(0.5)   # threshold 0.989
    assert metrics.tar_at_far(positive, negative, 1e-4) == pytest.approx(0.0)   # threshold 0.999: none above
    same = torch.tensor([True, True, False, False])
    assert metrics.best_balanced_accuracy(torch.tensor([0.9, 0.8, 0.7, 0.1]), same) == 1.0
    assert metrics.best_balanced_accuracy(torch.tensor([0.1, 0.2, 0.7, 0.9]), same) == 0.5
    assert metrics.best_balanced_accuracy(torch.ones(4), same) == 0.5  # all tied: no threshold tells them apart


def test_recall_at_k_on_known_neighbours():
    # Two tight clusters, one image of class 0 placed inside class 1's cluster.
    e = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0], [0.1, 0.99], [0.05, 1.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    r = metrics.recall_at_k(e, labels, ks=(1, 2))
    # 0, 1, 2 find their own; 3 and 4 find the stray image 5 first, then each other; 5 finds only class 1.
    assert r[1] == pytest.approx(100 * 3 / 6)
    assert r[2] == pytest.approx(100 * 5 / 6)


def test_embedding_scores_perfect_and_random():
    labels = torch.arange(6).repeat_interleave(5)
    perfect = torch.nn.functional.one_hot(labels, 6).float() + 0.01 * torch.randn(30, 6)
    s = metrics.embedding_scores(perfect, labels)
    assert s["recall_at_1"] == 100 and s["roc_auc"] == pytest.approx(1.0) and s["verification_accuracy"] == 100
    assert (s["num_pairs_positive"], s["num_pairs_negative"]) == (6 * 10, 435 - 60)
    g = torch.Generator().manual_seed(0)
    noise = metrics.embedding_scores(torch.randn(30, 6, generator=g), labels)
    assert 0.3 < noise["roc_auc"] < 0.7


def test_verification_pairs_sampled_deterministically_above_the_limit(monkeypatch):
    monkeypatch.setattr(metrics, "ALL_PAIRS_MAX", 50)
    labels = torch.arange(10).repeat_interleave(8)  # 80 images
    i, j = metrics.verification_pairs(labels)
    i2, j2 = metrics.verification_pairs(labels)
    assert torch.equal(i, i2) and torch.equal(j, j2) and bool((i != j).all())
    same = labels[i] == labels[j]
    assert 0 < int(same.sum()) <= 80 * metrics.PAIRS_PER_IMAGE and int((~same).sum()) > 0
    assert math.isclose(int((~same).sum()), 80 * metrics.PAIRS_PER_IMAGE, rel_tol=0.01)
