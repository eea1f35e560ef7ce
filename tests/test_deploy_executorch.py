"""deploy/executorch.py: int8 through PT2E and XNNPACK."""

from __future__ import annotations

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
    fp32 = export(str(ckpt), "executorch", out=str(tmp_path / "f.pte"), num_verify=1, max_batch=8)
    assert r.size_bytes < 0.6 * fp32.size_bytes  # int8 weights
    assert read_metadata(tmp_path / "q.pte")["precision"] == "int8"
