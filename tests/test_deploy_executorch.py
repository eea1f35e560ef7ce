"""deploy/executorch.py: int8 through PT2E and XNNPACK."""

from __future__ import annotations

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import read_metadata
from mobilenet_train.deploy.verify import INT8_MIN_COSINE


def test_executorch_int8_export(trained_run, tmp_path):
    # Trained weights and real (shapes) images: random weights at alpha 0.25 quantise too erratically to check.
    ckpt = trained_run / "checkpoints" / "best.pt"
    r = export(str(ckpt), "executorch", "int8", out=str(tmp_path / "q.pte"), num_calibration=16, num_verify=8,
               max_batch=8)
    assert r.precision == "int8" and r.verification["min_cosine"] >= INT8_MIN_COSINE
    assert "of the checkpoint's data" in r.calibration
    # int8 weights: against the fp32 weights' bytes (an fp32 .pte of this model is those plus ~2%: 876 kB for
    # 863 kB of weights, measured; exporting one here cost ~15 s, and test_deploy_export covers fp32 ExecuTorch).
    fp32_weight_bytes = 4 * load_checkpoint(ckpt)["complexity"]["params"]
    assert r.size_bytes < 0.6 * fp32_weight_bytes
    assert read_metadata(tmp_path / "q.pte")["precision"] == "int8"
