"""The exported file against PyTorch, in the file's own runtime.

fp32: the logits may differ from PyTorch's by FP32_TOLERANCE relative (max |difference| / max
|PyTorch logit|), and the top-1 class not at all. Quantisation itself moves logits by a good share
of their range, so an int8 export is held to the direction of the logit vector instead: cosine
similarity >= INT8_MIN_COSINE with fp32 PyTorch on every image (a broken graph lands near 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from .formats import runner
from .inputs import eval_batches

FP32_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.9
# An export of a QAT model computes what its fake-quantized graph computes (qat.convert: the trained qparams),
# up to the runtime's int32 bias and requantisation rounding: a few steps of the int8 output, one step being
# about 1/128 of the largest logit.
QAT_TOLERANCE = 0.04


def compare(got: np.ndarray, want: np.ndarray, tolerance: float) -> dict:
    """Relative error, least cosine similarity, top-1 agreement and the images whose top-1 differs.
    Near-ties within the tolerance cannot decide a class, so they do not count as disagreements."""
    scale = float(np.abs(want).max()) or 1.0
    rel = float(np.abs(got - want).max()) / scale
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    cosine = float(np.min((got * want).sum(1) / np.maximum(norms, 1e-30)))
    top = np.sort(want, axis=1)
    margin = (top[:, -1] - top[:, -2]) if want.shape[1] > 1 else np.full(len(want), np.inf)
    differ = [i for i in range(len(want)) if got[i].argmax() != want[i].argmax() and margin[i] > 2 * tolerance * scale]
    agree = float(np.mean(got.argmax(1) == want.argmax(1)))
    return {"max_rel_error": rel, "min_cosine": cosine, "top1_agreement": agree, "top1_differs": differ}


def _run(fmt: str, path: Path, inputs: torch.Tensor, max_batch: int) -> np.ndarray:
    """The file's logits on `inputs`; any runtime failure is a broken export."""
    try:
        run = runner(fmt, path)
        return np.concatenate([run(inputs[i : i + max_batch].numpy()) for i in range(0, len(inputs), max_batch)])
    except Exception as e:  # noqa: BLE001 - any runtime failure means a broken export
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"the exported {fmt} model does not run in its runtime ({type(e).__name__}: {first}); "
                        f"nothing written") from None


def verify(fmt: str, path: Path, model: nn.Module, inputs: torch.Tensor, quantized: bool, max_batch: int,
           min_cosine: float = INT8_MIN_COSINE) -> dict:
    """Run the file in its runtime; raise UserError if it does not match PyTorch."""
    with torch.no_grad():
        want = model(inputs).numpy()
    got = _run(fmt, path, inputs, max_batch)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise UserError(f"the exported {fmt} model returns {got.shape} "
                        f"{'non-finite ' if not np.isfinite(got).all() else ''}"
                        f"logits where PyTorch returns {want.shape}; nothing written")
    c = compare(got, want, FP32_TOLERANCE)
    if quantized and c["min_cosine"] < min_cosine:
        what = f"int8 logits point elsewhere (cosine similarity {c['min_cosine']:.3f} < {min_cosine})"
    elif not quantized and c["max_rel_error"] > FP32_TOLERANCE:
        what = f"logits differ by {c['max_rel_error']:.2g} relative (tolerance {FP32_TOLERANCE:g})"
    elif not quantized and c["top1_differs"]:
        what = f"top-1 differs on image(s) {c['top1_differs']}"
    else:
        return {**c, "num_images": len(inputs)}
    raise UserError(f"the exported {fmt} model does not match PyTorch: {what}; nothing written")


def verify_qat(fmt: str, path: Path, fake_quantized: nn.Module, inputs: torch.Tensor, max_batch: int) -> dict:
    """An export of a QAT checkpoint against its fake-quantized PyTorch model: logits within QAT_TOLERANCE
    relative, and the same top-1 on every image (near-ties within the tolerance aside)."""
    with torch.no_grad():
        want = fake_quantized(inputs).numpy()
    got = _run(fmt, path, inputs, max_batch)
    if got.shape != want.shape or not np.isfinite(got).all():
        raise UserError(f"the exported {fmt} model returns {got.shape} logits where the fake-quantized model "
                        f"returns {want.shape}; nothing written")
    c = compare(got, want, QAT_TOLERANCE)
    if c["max_rel_error"] > QAT_TOLERANCE:
        what = f"logits differ by {c['max_rel_error']:.2g} relative (tolerance {QAT_TOLERANCE:g})"
    elif c["top1_differs"]:
        what = f"top-1 differs on image(s) {c['top1_differs']}"
    else:
        return {**c, "num_images": len(inputs), "reference": "fake-quantized"}
    raise UserError(f"the exported {fmt} model does not match the fake-quantized QAT model: {what}; nothing written")


def accuracy_on(dataset, data, model: nn.Module, run, batch: int) -> dict:
    """PyTorch fp32 top-1 and the exported model's top-1 (percent) on a labelled folder
    (inputs.labelled_folder), read as mobilenet-eval reads it."""
    correct_ref = correct = count = 0
    for x, targets in eval_batches(dataset, data, batch):
        with torch.no_grad():
            correct_ref += int((model(x).argmax(1) == targets).sum())
        correct += int((torch.from_numpy(run(x.numpy())).argmax(1) == targets).sum())
        count += len(targets)
    return {"eval_dir": str(dataset.root), "num_images": count, "pytorch_fp32_top1": 100 * correct_ref / count,
            "exported_top1": 100 * correct / count, "top1_change": 100 * (correct - correct_ref) / count}
