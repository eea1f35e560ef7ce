"""deploy/tflite.py: Google's converter, fully integer int8, Google's op list for TF-same weights."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tflite_ops

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import read_metadata
from mobilenet_train.deploy.inputs import checkpoint_images
from mobilenet_train.deploy.verify import INT8_MIN_COSINE


def test_tflite_int8_export_is_fully_integer(trained_run, tmp_path):
    """Google's converter: int8 weights, int8 input and output (as Google's own quantised models), the
    preprocessing in the metadata table, accuracy on the real (shapes) images close to fp32."""
    from ai_edge_litert.interpreter import Interpreter

    ckpt = trained_run / "checkpoints" / "best.pt"
    root = next(p for p in checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if (p / "val").is_dir())
    r = export(str(ckpt), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=32, num_verify=8,
               eval_dir=str(root / "val"))
    assert r.verification["min_cosine"] >= INT8_MIN_COSINE and "of the checkpoint's data" in r.calibration
    assert r.accuracy["num_images"] == 80 and abs(r.accuracy["top1_change"]) <= 5.0, r.accuracy
    details = Interpreter(model_path=r.out).get_input_details()[0]
    assert details["dtype"] == np.int8 and list(details["shape"]) == [1, 3, 32, 32]
    # x/127.5 - 1 spans [-1, 1]: the input scale the converter recorded covers exactly that
    assert details["quantization"][0] == pytest.approx(2 / 255, rel=0.01)
    fp32 = export(str(ckpt), "tflite", out=str(tmp_path / "f.tflite"), num_verify=2)
    assert r.size_bytes < 0.6 * fp32.size_bytes
    meta = read_metadata(r.out)
    assert (meta["precision"], meta["format"], meta["batch"], meta["input_size"]) == ("int8", "tflite", 1, 32)
    assert meta["classes"] == load_checkpoint(ckpt)["classes"]


def test_tflite_int8_of_tf_same_weights_has_googles_op_list(arch_ckpts, tmp_path):
    """TF-same padding (Google's weights): without pad_channels_last, litert-torch's int8 graph wraps each
    pad in two TRANSPOSEs and a requantising QUANTIZE (78 ops instead of 32; 0.49 vs 0.29 ms at 0.25_128)."""
    r = export(str(arch_ckpts[(0.25, 96)]), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=8,
               num_verify=2, min_cosine=0.5)  # random weights: nothing to agree on beyond the direction
    ops = tflite_ops(r.out)
    assert ops["TRANSPOSE"] == 1 and ops.get("PAD", 0) <= 1 and ops.get("QUANTIZE", 0) <= 2, ops
    assert ops["CONV_2D"] == 14 and ops["DEPTHWISE_CONV_2D"] == 13 and sum(ops.values()) <= 33, ops
