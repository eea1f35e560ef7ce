"""deploy/inputs.py: export reads images exactly as mobilenet-eval does."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.inputs import checkpoint_images, data_config, eval_batches, labelled_folder, load_images
from mobilenet_train.errors import UserError


def _val_split(ckpt_path):
    return next(p for p in checkpoint_images(load_checkpoint(ckpt_path), "val")[0].parents if p.name == "val")


def test_calibration_images_are_the_eval_loaders(trained_run):
    """The images calibration and verification use are the tensors mobilenet-eval's loader gives."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    data = data_config(ckpt, ["data.eval_preset=tf"])
    dataset = labelled_folder(str(_val_split(trained_run / "checkpoints" / "best.pt")), ckpt, data)
    x, _ = next(eval_batches(dataset, data, batch=6))
    assert torch.equal(load_images([path for path, _ in dataset.samples[:6]], ckpt, data), x)
    assert not torch.equal(load_images([dataset.samples[0][0]], ckpt), x[:1])  # the preset matters
    with pytest.raises(UserError, match="data.nope is not a key of the checkpoint's config"):
        data_config(ckpt, ["data.nope=1"])


def test_eval_folder_keeps_an_empty_class(trained_run, tmp_path):
    """mobilenet-eval accepts a class directory without images (the class keeps its index); so does eval=."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    val = shutil.copytree(_val_split(trained_run / "checkpoints" / "best.pt"), tmp_path / "val")
    emptied = sorted(p for p in val.iterdir() if p.is_dir())[0]
    shutil.rmtree(emptied)
    emptied.mkdir()
    dataset = labelled_folder(str(val), ckpt)
    assert dataset.classes == list(ckpt["classes"]) and 0 not in dataset.targets


@pytest.mark.slow  # a mobilenet-eval run and an export
def test_eval_folder_with_an_empty_class_gives_mobilenet_evals_top1(trained_run, cli, tmp_path):
    """eval= accepts what mobilenet-eval accepts (an empty class directory), and its PyTorch fp32
    top-1 is mobilenet-eval's on the same folder."""
    ckpt = trained_run / "checkpoints" / "best.pt"
    val = shutil.copytree(_val_split(ckpt), tmp_path / "data" / "val")
    emptied = sorted(p for p in val.iterdir() if p.is_dir())[0]
    for image in emptied.iterdir():
        image.unlink()
    cli("mobilenet-eval", str(ckpt), "data.name=imagenet", f"data.root={tmp_path / 'data'}",
        f"out={tmp_path / 'eval.json'}", "device=cpu", "progress=false", cwd=tmp_path)
    want = json.loads((tmp_path / "eval.json").read_text())
    r = export(str(ckpt), "onnx", out=str(tmp_path / "m.onnx"), num_verify=2, eval_dir=str(val))
    assert r.accuracy["num_images"] == want["num_images"]
    assert r.accuracy["pytorch_fp32_top1"] == pytest.approx(want["top1"], abs=1e-6)
