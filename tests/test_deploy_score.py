"""mobilenet-eval of exported files (deploy/score.py): each format scored in its own runtime through the
eval pipeline equals the export's own verified top-1; Google's TF-Lite files score too; bad input is one line."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import leftovers, shared_or_skip

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.cli.eval import main as eval_main
from mobilenet_train.deploy import formats
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import FORMATS, RUNTIMES
from mobilenet_train.deploy.inputs import checkpoint_images
from mobilenet_train.evaluation import evaluate_file


def _val_dir(ckpt_path):
    return next(p for p in checkpoint_images(load_checkpoint(ckpt_path), "val")[0].parents if p.name == "val")


# ExecuTorch's and TF-Lite's int8 conversions take tens of seconds on 2 cores: ONNX in the fast set.
@pytest.mark.parametrize("fmt", ["onnx", pytest.param("executorch", marks=pytest.mark.slow),
                                 pytest.param("tflite", marks=pytest.mark.slow)])
def test_eval_of_each_int8_format_equals_the_exports_top1(trained_run, fmt, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.pt"
    out = tmp_path / f"m.int8{FORMATS[fmt]}"
    r = export(str(ckpt), fmt, "int8", out=str(out), num_calibration=16, eval_dir=str(_val_dir(ckpt)),
               num_verify=2, max_batch=8)
    got = evaluate_file(str(out), ["data.num_workers=0", "data.batch_size=16", "progress=false", "threads=1"])
    assert got["num_images"] == r.accuracy["num_images"] == 80
    assert got["top1"] == pytest.approx(r.accuracy["exported_top1"], abs=1e-9)
    assert (got["format"], got["runtime"], got["quantization"]) == (fmt, RUNTIMES[fmt], "int8-ptq")
    assert got["params"] == load_checkpoint(ckpt)["complexity"]["params"] and got["mult_adds"] > 0
    assert got["out"] == str(out) + ".eval.json"
    assert json.loads((tmp_path / f"{out.name}.eval.json").read_text())["top1"] == got["top1"]


def test_googles_tflite_file_scores_with_its_own_input_quantization(tmp_path):
    google = shared_or_skip("weights", "tflite-quant", "mobilenet_v1_0.25_128_quant.tflite")
    samples = shared_or_skip("data", "imagenet-samples")
    out = tmp_path / "google.json"
    got = evaluate_file(str(google), [f"data.root={samples}", "data.num_workers=0", f"out={out}", "progress=false"])
    # ../shared/README.md: 42.0% with the TFLite interpreter on the same 1000 images (its own decoding).
    assert got["num_images"] == 1000 and abs(got["top1"] - 42.0) < 1.0, got["top1"]
    assert got["eval_preset"] == "tf" and got["quantization"] == "uint8-google" and got["alpha"] == 0.25
    assert json.loads(out.read_text())["runtime"] == RUNTIMES["tflite"]


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        eval_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("mobilenet-eval: error:"), err
    return err[0]


def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, monkeypatch):
    for fmt in FORMATS:  # importing executorch logs a torch deprecation warning once per process: not ours
        formats.load(fmt)
    capsys.readouterr()
    for suffix in FORMATS.values():
        wrong = tmp_path / f"notes{suffix}"
        wrong.write_text("not a model")
        assert f"notes{suffix} is not a readable" in _fails([str(wrong)], capsys)
        wrong.unlink()
    assert "does not exist" in _fails([str(tmp_path / "absent.onnx")], capsys)
    (tmp_path / "m.tflite").write_bytes(b"")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert"
                        else find_spec(name, *a))
    assert "ai_edge_litert" in _fails([str(tmp_path / "m.tflite")], capsys)
    assert leftovers(tmp_path) == ["m.tflite"]


def test_model_overrides_and_a_directory_as_out_are_refused(trained_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    export(str(trained_run / "checkpoints" / "best.pt"), "onnx", out=str(out), num_verify=2)
    assert "model is fixed by the file" in _fails([str(out), "model.alpha=0.5"], capsys)
    (tmp_path / "folder").mkdir()
    assert "is a directory" in _fails([str(out), f"out={tmp_path / 'folder'}"], capsys)
    assert leftovers(tmp_path) == ["folder", "m.onnx"] and leftovers(tmp_path / "folder") == []
