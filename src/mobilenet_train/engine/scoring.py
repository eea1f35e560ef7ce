"""Evaluation per task: classification (loop.evaluate), multilabel (mean AP), embedding (retrieval and
verification on a labelled folder: the nearest neighbours and the same/different pairs of the outputs,
metrics.py); detection's is detection/evaluate.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed, metrics
from ..data import DataBundle, DevicePreprocess, eval_loader, resolve_root
from ..errors import UserError
from .loop import evaluate
from .setup import autocast
from .tasks import MaskedBCE


def _outputs(model: nn.Module, loader, prep: DevicePreprocess, amp, desc: str, progress: bool):
    """(outputs, targets) of the whole split, on the CPU, gathered from every rank; and seconds taken."""
    model.eval()
    outs, targets = [], []
    start = time.perf_counter()
    for images, y in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        with autocast(prep.device, amp):
            out = model(prep(images))
        outs.append(out.float().cpu())
        targets.append(y.cpu())
    elapsed = time.perf_counter() - start
    if not outs:
        raise UserError("the evaluation split holds no images")
    gathered = distributed.gather_objects((torch.cat(outs), torch.cat(targets)))
    return torch.cat([o for o, _ in gathered]), torch.cat([t for _, t in gathered]), elapsed


@torch.no_grad()
def evaluate_multilabel(model: nn.Module, loader, prep: DevicePreprocess, amp: torch.dtype | None = None,
                        desc: str = "eval", progress: bool = False) -> dict:
    """Loss, mean AP (percent, over attributes with a positive label), AP per attribute and label accuracy."""
    logits, targets, elapsed = _outputs(model, loader, prep, amp, desc, progress)
    mean_ap, per = metrics.mean_average_precision(torch.sigmoid(logits), targets)
    return {"loss": float(MaskedBCE()(logits, targets)), "map": mean_ap, "ap_per_attribute": per,
            "label_accuracy": 100 * float(metrics.label_accuracy(logits, targets).mean()),
            "num_images": len(logits), "num_attributes": logits.shape[1],
            "images_per_sec": len(logits) * distributed_world() / elapsed}


@torch.no_grad()
def evaluate_embedding(model: nn.Module, loader, prep: DevicePreprocess, amp: torch.dtype | None = None,
                       desc: str = "eval", progress: bool = False) -> dict:
    """Recall@1/@5 of the nearest other image, ROC-AUC, TAR@FAR and verification accuracy of the pairs."""
    embeddings, labels, elapsed = _outputs(model, loader, prep, amp, desc, progress)
    if not torch.isfinite(embeddings).all():
        return {"loss": float("nan"), "recall_at_1": float("nan"), "num_images": len(embeddings)}
    return {**metrics.embedding_scores(embeddings, labels.long()), "num_images": len(embeddings),
            "embedding_dim": embeddings.shape[1], "images_per_sec": len(embeddings) * distributed_world() / elapsed}


def distributed_world() -> int:
    return torch.distributed.get_world_size() if distributed.is_initialized() else 1


class PooledFeatures(nn.Module):
    """A classifier seen as an embedding network: its pooled features (the layer before the classifier),
    e.g. to score a teacher's embedding by retrieval (mobilenet-eval CKPT task=embedding)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_pooled(x)


def evaluator(task: str) -> Callable:
    """The evaluation of `task` (detection's lives in detection/evaluate.py)."""
    if task == "detection":
        from ..detection.evaluate import evaluate_detection

        return evaluate_detection
    return {"multilabel": evaluate_multilabel, "embedding": evaluate_embedding}.get(task, evaluate)


def embedding_data(cfg, resolution: int) -> DataBundle:
    """The labelled val split an embedding is scored on: any classes (identities), any number of them."""
    loader, classes = eval_loader(cfg.data, resolution, resolve_root(cfg.data), str(cfg.data.val_split),
                                  int(cfg.data.eval_batch_size), int(cfg.data.num_workers))
    return DataBundle(None, loader, classes)
