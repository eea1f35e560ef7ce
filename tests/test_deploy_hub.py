"""mobilenet-export --format safetensors (deploy/hub.py): timm's Hub layout that timm loads with
pretrained_cfg_overlay and with local-dir (its model_args where the toolkit's model differs from timm's
default), that this toolkit reads back for every width, and that model.init= and distill.teacher= take;
bad requests are one line and write nothing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_one_line_error, fit_in_process, leftovers, random_timm_model, run_main, save_safetensors

from mobilenet_train.checkpoint import load_checkpoint, model_from_checkpoint
from mobilenet_train.importer import load_weights


def _logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _export(ckpt, out, cwd, *extra):
    return run_main("mobilenet-export", str(ckpt), "--format", "safetensors", f"out={out}", "num_verify=2", *extra,
                    cwd=cwd)


def test_an_import_exported_loads_in_timm_with_pretrained_cfg_overlay(tmp_path):
    import timm

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    src = save_safetensors(random_timm_model("mobilenetv1_125", x), tmp_path / "model.safetensors")
    run_main("mobilenet-import", str(src), str(tmp_path / "imported.pt"), cwd=tmp_path)
    proc = _export(tmp_path / "imported.pt", tmp_path / "hub", tmp_path)
    assert "mobilenetv1_125" in proc.stdout and "timm.create_model('local-dir:" in proc.stdout
    assert leftovers(tmp_path / "hub") == ["config.json", "model.safetensors"]
    theirs = timm.create_model("mobilenetv1_125", pretrained=True,
                               pretrained_cfg_overlay={"file": str(tmp_path / "hub" / "model.safetensors")})
    ours, _ = model_from_checkpoint(load_checkpoint(tmp_path / "imported.pt"))
    want = _logits(ours, x)
    assert (_logits(theirs, x) - want).abs().max() <= 1e-5 * want.abs().max()
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())["pretrained_cfg"]
    # The import's eval (timm's test size and crop) is what the export records as its eval.
    assert (cfg["input_size"], cfg["crop_pct"], cfg["interpolation"], cfg["mean"]) == ([3, 256, 256], 1.0,
                                                                                       "bicubic", [0.5, 0.5, 0.5])
    again = load_weights(tmp_path / "hub", "model.init")
    assert all(torch.equal(again["model"][k], v) for k, v in ours.state_dict().items() if v.is_floating_point())


def test_the_toolkits_own_model_goes_to_timm_with_its_model_args(arch_ckpts, tmp_path):
    """alpha 1.0 with ReLU and TF-same padding (the toolkit's, not timm's defaults): timm builds it from
    config.json's model_args (act_layer, pad_type)."""
    import timm

    ckpt_path = arch_ckpts[(1.0, 96)]
    _export(ckpt_path, tmp_path / "hub", tmp_path)
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["architecture"] == "mobilenetv1_100"
    assert config["model_args"] == {"num_classes": 10, "act_layer": "relu", "pad_type": "same"}
    theirs = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True)
    ours, _ = model_from_checkpoint(load_checkpoint(ckpt_path))
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    want = _logits(ours, x)
    assert (_logits(theirs, x) - want).abs().max() <= 1e-5 * want.abs().max()


def test_widths_timm_lacks_round_trip_and_teach_and_initialise(trained_run, tmp_path):
    """The quickstart (alpha 0.25): timm has no such architecture, the toolkit's reader rebuilds it exactly,
    and the safetensors file is a teacher and a starting point."""
    best = trained_run / "checkpoints" / "best.pt"
    proc = _export(best, tmp_path / "hub", tmp_path)
    assert "timm has no MobileNet v1 of these widths" in proc.stdout
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["architecture"] == "mobilenetv1_025"
    ckpt = load_checkpoint(best)
    read = load_weights(tmp_path / "hub" / "model.safetensors", "distill.teacher")
    assert {k: read["model_args"][k] for k in ("alpha", "activation", "padding", "resolution")} == \
        {k: ckpt["model_args"][k] for k in ("alpha", "activation", "padding", "resolution")}
    assert all(torch.equal(read["model"][k], v) for k, v in ckpt["model"].items() if v.is_floating_point())
    run = tmp_path / "run"
    fit_in_process(run, f"model.init={tmp_path / 'hub'}", f"distill.teacher={tmp_path / 'hub' / 'model.safetensors'}",
                   "distill.alpha=0.5")
    student = load_checkpoint(run / "checkpoints" / "last.pt")
    assert student["teacher"]["path"].endswith("model.safetensors") and student["teacher"]["sha256"]
    assert student["model_args"]["alpha"] == 0.25


@pytest.mark.parametrize("extra, needles", [
    (["--quantize", "int8"], ("writes the float weights", "drop --quantize")),
    (["calibration=/tmp"], ("calibration= does not apply",)),
])
def test_bad_requests_are_one_line_and_write_nothing(trained_run, extra, needles, tmp_path):
    best = trained_run / "checkpoints" / "best.pt"
    proc = run_main("mobilenet-export", str(best), "--format", "safetensors", f"out={tmp_path / 'hub'}", *extra,
                    cwd=tmp_path, check=False)
    assert_one_line_error(proc, *needles)
    assert leftovers(tmp_path) == []


def test_an_occupied_folder_is_refused(trained_run, tmp_path):
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "notes.txt").write_text("mine")
    proc = run_main("mobilenet-export", str(trained_run / "checkpoints" / "best.pt"), "--format", "safetensors",
                    f"out={tmp_path / 'hub'}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "holding other files")
    assert leftovers(tmp_path / "hub") == ["notes.txt"]
