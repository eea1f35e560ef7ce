"""mobilenet-export (deploy/export.py and its CLI): exported files match PyTorch in their own runtimes,
every option is checked before any conversion, broken exports leave nothing behind."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, leftovers, run_export, run_main, tflite_ops

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.cli.export import main as export_main
from mobilenet_train.deploy import export as export_module
from mobilenet_train.deploy import onnx as onnx_format
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import FORMATS, read_metadata, runner
from mobilenet_train.deploy.inputs import checkpoint_images, generated_images
from mobilenet_train.deploy.prepare import deploy_model
from mobilenet_train.errors import UserError


# ExecuTorch's lowering of alpha 1.0 takes ~25 s on the shared 2-core machine: one such case in the fast set.
@pytest.mark.parametrize("fmt,alpha,res", [
    *[("onnx", a, r) for a in (1.0, 0.25) for r in (64, 96)],
    ("executorch", 1.0, 64), pytest.param("executorch", 1.0, 96, marks=pytest.mark.slow),
    ("executorch", 0.25, 64), ("executorch", 0.25, 96),
    *[("tflite", a, r) for a in (1.0, 0.25) for r in (64, 96)],
])
def test_fp32_export_matches_pytorch(arch_ckpts, fmt, alpha, res, tmp_path):
    out = tmp_path / f"m{FORMATS[fmt]}"
    r = export(str(arch_ckpts[(alpha, res)]), fmt, out=str(out), num_verify=4, max_batch=4)
    assert leftovers(tmp_path) == [out.name]
    assert r.verification["max_rel_error"] <= 1e-4 and r.verification["top1_agreement"] == 1.0
    # Independently of the built-in check: a batch of 3 (the batch axis is dynamic) in the file's runtime.
    ckpt = load_checkpoint(arch_ckpts[(alpha, res)])
    x = generated_images(3, ckpt, seed=5)
    with torch.no_grad():
        want = deploy_model(ckpt)(x).numpy()
    got = runner(fmt, out, threads=1)(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    meta = read_metadata(out)
    assert meta["input_size"] == res and meta["model_args"]["alpha"] == alpha and meta["precision"] == "fp32"
    assert meta["normalization"] == "inception" and meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    if fmt == "tflite":
        # No layout shuffling: one TRANSPOSE (the NCHW input). tf_same (96 px) has Google's op list, every
        # pad folded into a SAME conv but the stem's; symmetric stride-2 convs need an explicit PAD each.
        ops = tflite_ops(out)
        assert ops["CONV_2D"] == 14 and ops["DEPTHWISE_CONV_2D"] == 13 and ops["TRANSPOSE"] == 1, ops
        assert ops.get("PAD", 0) == (1 if res == 96 else 5), ops


@pytest.mark.parametrize("fmt", ["onnx", "executorch", "tflite"])
def test_wrong_shaped_export_is_caught_and_nothing_left(arch_ckpts, fmt, tmp_path, monkeypatch):
    # Traced at 32 px, half the model's input: the runtime refuses the real input (ExecuTorch takes
    # smaller inputs than planned for, so the wrong shape must be the smaller one).
    monkeypatch.setattr(export_module, "example_input", lambda ckpt, batch=2: torch.zeros(batch, 3, 32, 32))
    with pytest.raises(UserError, match="does not run in its runtime"):
        export(str(arch_ckpts[(0.25, 64)]), fmt, out=str(tmp_path / "m.x"), num_verify=2, max_batch=2)
    assert leftovers(tmp_path) == []


def test_wrong_logits_are_caught_and_nothing_left(arch_ckpts, tmp_path, monkeypatch):
    # BN dropped instead of folded in the file only: it runs, but its logits are wrong.
    write = onnx_format.write

    def broken(model, path, *args):
        import copy

        bad = copy.deepcopy(model)
        bad.fc.bias.data += 1.0
        return write(bad, path, *args)

    monkeypatch.setattr(onnx_format, "write", broken)
    with pytest.raises(UserError, match="does not match PyTorch: logits differ"):
        export(str(arch_ckpts[(0.25, 64)]), "onnx", out=str(tmp_path / "m.onnx"), num_verify=2)
    assert leftovers(tmp_path) == []


def test_cli_on_a_trained_run_int8_with_accuracy(trained_run, cli, tmp_path):
    """The console script end to end: real shapes images for calibration, check and accuracy."""
    ckpt = trained_run / "checkpoints" / "best.pt"
    root = next(p for p in checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if (p / "val").is_dir())
    out = tmp_path / "best.int8.onnx"
    proc = cli("mobilenet-export", str(ckpt), "--format", "onnx", "--quantize", "int8", f"out={out}",
               "num_calibration=32", f"eval={root / 'val'}", cwd=tmp_path)
    assert "exported    onnx int8" in proc.stdout and "images of the checkpoint's data" in proc.stdout
    line = next(s for s in proc.stdout.splitlines() if s.startswith("accuracy"))
    assert "80 images" in line and "PyTorch fp32 top-1" in line
    assert read_metadata(out)["precision"] == "int8"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops


def test_data_overrides_reach_the_images_and_the_metadata(trained_run, tmp_path):
    """data.* options apply to the checkpoint's config.data: the preset is recorded and used."""
    ckpt = trained_run / "checkpoints" / "best.pt"
    export_main([str(ckpt), "--format", "onnx", f"out={tmp_path / 'tf.onnx'}", "num_verify=2",
                 "data.eval_preset=tf", "data.eval_crop_fraction=0.5"])
    meta = read_metadata(tmp_path / "tf.onnx")
    assert (meta["eval_preset"], meta["crop_fraction"]) == ("tf", 0.5) and "central 0.5" in meta["resize"]


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_exit_2_nothing_written(arch_ckpts, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    proc = run_export(str(foreign), "--format", "onnx", cwd=tmp_path)
    assert_one_line_error(proc, "not a mobilenet-train checkpoint")
    # The installed script once (above), end to end; the other cases in this process.
    proc = run_main("mobilenet-export", str(arch_ckpts[(0.25, 64)]), "--format", "coreml", f"out={tmp_path / 'x'}",
                    cwd=tmp_path, check=False)
    assert_one_line_error(proc, "--format coreml is unknown", "onnx, executorch, tflite")
    proc = run_main("mobilenet-export", str(arch_ckpts[(0.25, 64)]), "--format", "onnx", "--quantize", "int4",
                    cwd=tmp_path, check=False)
    assert_one_line_error(proc, "--quantize int4 is unknown")
    proc = run_main("mobilenet-export", str(arch_ckpts[(0.25, 64)]), "--format", "onnx", "colour=red", cwd=tmp_path,
                    check=False)
    assert_one_line_error(proc, "'colour=red' is not an option of mobilenet-export")
    assert leftovers(tmp_path) == ["foreign.pt"]


def test_bad_data_override_is_one_line(arch_ckpts, tmp_path, capsys):
    for option, needle in [("data.colour=red", "data.colour is not a key of the checkpoint's config"),
                           ("data.eval_preset=square", "data.eval_preset=square is not allowed")]:
        with pytest.raises(SystemExit) as exit_info:
            export_main([str(arch_ckpts[(0.25, 64)]), "--format", "onnx", f"out={tmp_path / 'm.onnx'}", option])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert leftovers(tmp_path) == []


def test_bad_eval_folder_is_refused_before_any_conversion(trained_run, tmp_path, monkeypatch, capsys):
    """eval= is checked with the other options: one line, exit 2, nothing converted or written."""
    ckpt = trained_run / "checkpoints" / "best.pt"
    val = next(p for p in checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if p.name == "val")
    flat = tmp_path / "flat"  # images, but no class directories
    flat.mkdir()
    shutil.copy(next(p for p in val.rglob("*") if p.is_file()), flat)
    (tmp_path / "empty").mkdir()
    other = tmp_path / "other" / "val"  # labelled, but other classes than the checkpoint's
    for name in ("cat", "dog"):
        shutil.copytree(next(p for p in val.iterdir() if p.is_dir()), other / name)
    converted = []
    monkeypatch.setattr(onnx_format, "write", lambda *a: converted.append(a))
    out = tmp_path / "out" / "m.onnx"
    for folder, needle in [(tmp_path / "missing", "is not a directory"), (flat, "not a labelled image folder"),
                           (other.parent, "differ from the checkpoint's"),
                           (tmp_path / "empty", "not a labelled image folder")]:
        with pytest.raises(SystemExit) as exit_info:
            export_main([str(ckpt), "--format", "onnx", "--quantize", "int8", f"out={out}", f"eval={folder}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert converted == [] and not out.parent.exists()


def test_missing_runtime_package_is_one_line(arch_ckpts, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {"executorch", "litert_torch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    for fmt, package in (("executorch", "executorch"), ("tflite", "litert_torch")):
        with pytest.raises(SystemExit) as exit_info:
            export_main([str(arch_ckpts[(0.25, 64)]), "--format", fmt, f"out={tmp_path / ('m' + FORMATS[fmt])}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"needs the Python package(s) {package}" in err[0] and "[deploy]" in err[0]
    assert leftovers(tmp_path) == []
