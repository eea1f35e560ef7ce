"""Scores of the multi-label and embedding tasks, on tensors: average precision (scikit-learn's
definition), ROC-AUC, and retrieval / verification of embeddings.

Multi-label targets are 1 / 0 with NaN where a label is missing; a missing label takes no part.
Embeddings are compared by cosine similarity (unit vectors: the same order as FaceNet's L2 distance).
Verification pairs are every pair of images up to ALL_PAIRS_MAX images, above that a seeded sample
of positive and negative pairs per image, so a score is a pure function of the embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Up to this many images every pair is scored; above it, PAIRS_PER_IMAGE of each kind per image.
ALL_PAIRS_MAX = 4000
PAIRS_PER_IMAGE = 20
FAR_LEVELS = {"1e-2": 1e-2, "1e-3": 1e-3, "1e-4": 1e-4}  # the name in the metrics: the rate
SIM_CHUNK = 1024  # rows of the similarity matrix held at once


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """AP of one attribute as scikit-learn's `average_precision_score`: sum over thresholds of
    (R_n - R_{n-1}) P_n, tied scores forming one threshold. None without a positive label."""
    keep = ~torch.isnan(labels)
    scores, labels = scores[keep].double(), labels[keep].double()
    positives = labels.sum()
    if positives <= 0:
        return None
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    tp = torch.cumsum(y, 0)
    # The last index of each run of tied scores is a threshold.
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    tp = tp[last]
    seen = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    precision, recall = tp / seen, tp / positives
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, list[float | None]]:
    """(mean AP in percent over the attributes that have a positive label, AP in percent per attribute)."""
    per = [average_precision(scores[:, a], targets[:, a]) for a in range(targets.shape[1])]
    known = [100 * ap for ap in per if ap is not None]
    mean = sum(known) / len(known) if known else float("nan")
    return mean, [None if ap is None else 100 * ap for ap in per]


def label_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per image: the share of its known labels that the sign of the logit gets right (0 without any)."""
    known = ~torch.isnan(targets)
    right = ((logits > 0) == (targets > 0.5)) & known
    return right.sum(1) / known.sum(1).clamp(min=1)


def roc_auc(scores: torch.Tensor, same: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative (ties count half)."""
    scores, same = scores.double(), same.bool()
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    ranks_sorted = (ends - (counts.double() - 1) / 2)[inverse]  # average 1-based rank of each tie group
    ranks = torch.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return float((ranks[same].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tar_at_far(positive: torch.Tensor, negative: torch.Tensor, far: float) -> float:
    """Share of positive pairs accepted at the threshold that accepts at most `far` of the negatives."""
    allowed = math.floor(far * len(negative))
    top = torch.topk(negative.double(), min(allowed + 1, len(negative))).values
    threshold = top[-1] if allowed < len(negative) else -math.inf
    return float((positive.double() > threshold).double().mean())


def best_balanced_accuracy(scores: torch.Tensor, same: torch.Tensor) -> float:
    """max over thresholds of (TAR + TRR) / 2: verification accuracy, whatever the pair mix (tied
    scores are accepted or refused together)."""
    s, order = torch.sort(scores.double(), descending=True, stable=True)
    y = same.bool()[order].double()
    tpr = torch.cumsum(y, 0) / max(float(y.sum()), 1.0)
    fpr = torch.cumsum(1 - y, 0) / max(float((1 - y).sum()), 1.0)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    return float(torch.cat([torch.tensor([0.5], dtype=torch.float64), ((tpr + 1 - fpr) / 2)[last]]).max())


def verification_pairs(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) image indices of the pairs scored: every pair, or above ALL_PAIRS_MAX images up to
    PAIRS_PER_IMAGE same-label and PAIRS_PER_IMAGE other-label partners per image, drawn with `seed`."""
    n = len(labels)
    if n <= ALL_PAIRS_MAX:
        i, j = torch.triu_indices(n, n, offset=1)
        return i, j
    g = torch.Generator().manual_seed(seed)
    firsts, seconds = [], []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        others = torch.nonzero(labels != label).flatten()
        for partners in (members, others):
            if len(partners) < 2 and partners is members:
                continue
            pick = torch.randint(len(partners), (len(members), PAIRS_PER_IMAGE), generator=g)
            firsts.append(members.repeat_interleave(PAIRS_PER_IMAGE))
            seconds.append(partners[pick].flatten())
    i, j = torch.cat(firsts), torch.cat(seconds)
    keep = i != j
    return i[keep], j[keep]


def recall_at_k(embeddings: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Percent of images whose k nearest other images (cosine) include one of the same label."""
    e = F.normalize(embeddings.float(), dim=1)
    k_max = min(max(ks), len(e) - 1)
    hits = {k: 0 for k in ks}
    for start in range(0, len(e), SIM_CHUNK):
        sims = e[start:start + SIM_CHUNK] @ e.T
        rows = torch.arange(start, start + len(sims))
        sims[torch.arange(len(sims)), rows] = -math.inf  # not itself
        nearest = labels[torch.topk(sims, k_max, dim=1).indices] == labels[rows, None]
        for k in ks:
            hits[k] += int(nearest[:, :k].any(1).sum())
    return {k: 100 * hits[k] / len(e) for k in ks}


def embedding_scores(embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """Retrieval (recall@1, @5) and verification (ROC-AUC, TAR@FAR, best balanced accuracy) of labelled
    embeddings; percentages except roc_auc (0..1)."""
    if len(embeddings) < 2:
        return {"recall_at_1": float("nan"), "recall_at_5": float("nan"), "roc_auc": float("nan"),
                **{f"tar_at_far_{name}": float("nan") for name in FAR_LEVELS},
                "verification_accuracy": float("nan"), "num_pairs_positive": 0, "num_pairs_negative": 0}
    recall = recall_at_k(embeddings, labels)
    e = F.normalize(embeddings.float(), dim=1)
    i, j = verification_pairs(labels)
    sims = (e[i] * e[j]).sum(1)
    same = labels[i] == labels[j]
    out = {"recall_at_1": recall[1], "recall_at_5": recall[5], "roc_auc": roc_auc(sims, same)}
    positive, negative = sims[same], sims[~same]
    for name, far in FAR_LEVELS.items():
        ok = len(positive) and len(negative)
        out[f"tar_at_far_{name}"] = 100 * tar_at_far(positive, negative, far) if ok else float("nan")
    out["verification_accuracy"] = 100 * best_balanced_accuracy(sims, same)
    out["num_pairs_positive"], out["num_pairs_negative"] = int(same.sum()), int((~same).sum())
    return out
