"""mobilenet-import of timm's MobileNet v1 (weights/timm_model.py): random-weight timm models saved as timm
saves them, imported, give timm's logits on real images; the eval preprocessing comes from the pretrained
cfg (timm's, or a Hub folder's config.json); mobilenet-eval of the import scores as timm's validate.py does;
fine-tuning, QAT with its int8 TF-Lite export, and the SSD backbone start from an import; bad input is one line
and writes nothing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import (
    SAMPLES,
    TINY_DET,
    assert_one_line_error,
    fit_in_process,
    random_timm_model,
    run_main,
    save_safetensors,
    shared_or_skip,
    timm_batch,
)

from mobilenet_train.checkpoint import load_checkpoint, model_from_checkpoint
from mobilenet_train.deploy.inputs import image_files, load_images, spread
from mobilenet_train.errors import UserError

ARCHS = ("mobilenetv1_100", "mobilenetv1_125")
# Per architecture: alpha, and the eval its ra4 pretrained cfg gives (test size 256; test crop, bicubic, inception).
EXPECTED = {"mobilenetv1_100": (1.0, 0.95), "mobilenetv1_125": (1.25, 1.0)}
# The tiny runs with fewer images still: alpha 1.0 is 16 times the quickstart's alpha 0.25.
FEW_IMAGES = ["data.generate.train_per_class=8", "data.generate.val_per_class=4"]


def _sample_paths(n: int) -> list:
    return spread(image_files(shared_or_skip(*SAMPLES, "val")), n)


def _generated_batch(n: int = 4) -> torch.Tensor:
    """Random inputs for BN statistics, where the test needs no photos."""
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("name", ARCHS)
def test_the_import_gives_timms_logits_on_real_images(name, tmp_path):
    paths = _sample_paths(8)
    model = random_timm_model(name, timm_batch(paths))
    src = save_safetensors(model, tmp_path / "model.safetensors")
    proc = run_main("mobilenet-import", str(src), str(tmp_path / "imported.pt"), cwd=tmp_path)
    assert "relu6" in proc.stdout and "symmetric padding" in proc.stdout
    ckpt = load_checkpoint(tmp_path / "imported.pt")
    alpha, crop = EXPECTED[name]
    a, data = ckpt["model_args"], ckpt["config"]["data"]
    assert (a["alpha"], a["activation"], a["padding"], a["bn_eps"], a["resolution"]) == (alpha, "relu6", "symmetric",
                                                                                          1e-5, 256)
    assert (data["eval_preset"], data["eval_crop_fraction"], data["interpolation"], data["normalization"]) == \
        ("default", crop, "bicubic", "inception")
    assert ckpt["import"]["architecture"] == name and len(ckpt["classes"]) == 1000
    ours, _ = model_from_checkpoint(ckpt)
    x = load_images(paths, ckpt)  # mobilenet-eval's preprocessing of these photos, at 256 px
    with torch.no_grad():
        want, got = model(x), ours.eval()(x)
    assert want.argmax(1).unique().numel() >= 3  # the random model tells the photos apart
    print(f"{name}: max abs logit error {float((got - want).abs().max()):.3g}, max |logit| "
          f"{float(want.abs().max()):.3g}")
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_a_hub_folder_and_a_torch_file_import_alike_with_the_configs_preprocessing(tmp_path):
    """save_for_hf's folder (timm's own writer) with an edited pretrained_cfg, and pytorch_model.bin."""
    from timm.models import save_for_hf

    model = random_timm_model("mobilenetv1_100", _generated_batch(), num_classes=10)
    folder = tmp_path / "hub"
    save_for_hf(model, str(folder), safe_serialization="both")
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"].update(test_input_size=[3, 192, 192], test_crop_pct=0.9, interpolation="bilinear",
                                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    (folder / "config.json").write_text(json.dumps(config))
    run_main("mobilenet-import", str(folder), str(tmp_path / "folder.pt"), cwd=tmp_path)
    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    os.replace(folder / "pytorch_model.bin", bin_only / "pytorch_model.bin")
    run_main("mobilenet-import", str(bin_only / "pytorch_model.bin"), str(tmp_path / "bin.pt"), cwd=tmp_path)
    a, b = load_checkpoint(tmp_path / "folder.pt"), load_checkpoint(tmp_path / "bin.pt")
    assert a["import"]["pretrained_cfg_from"].endswith("config.json") and b["classes"] is None
    assert (a["model_args"]["resolution"], a["config"]["data"]["eval_crop_fraction"],
            a["config"]["data"]["interpolation"], a["config"]["data"]["normalization"]) == (192, 0.9, "bilinear",
                                                                                            "imagenet")
    assert b["model_args"]["resolution"] == 256 and b["config"]["data"]["normalization"] == "inception"
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["model_args"]["num_classes"] == 10


def _v2(tmp_path):
    import timm

    return save_safetensors(timm.create_model("mobilenetv2_050", pretrained=False), tmp_path / "v2.safetensors")


def _v1h(tmp_path):
    import timm

    return save_safetensors(timm.create_model("mobilenetv1_100h", pretrained=False), tmp_path / "v1h.safetensors")


def _truncated(tmp_path):
    import timm

    whole = save_safetensors(timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10),
                             tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    return tmp_path / "model.safetensors"


def _not_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_text("this is not a safetensors file\n")
    return tmp_path / "model.safetensors"


def _needs_code(tmp_path):
    """A timm train.py checkpoint: its argparse Namespace needs code to unpickle."""
    import timm

    state = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=10).state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(model="mobilenetv1_100")}, tmp_path / "ckpt.pth.tar")
    return tmp_path / "ckpt.pth.tar"


def _v2_bin(tmp_path):
    import timm

    torch.save(timm.create_model("mobilenetv2_050", pretrained=False).state_dict(), tmp_path / "pytorch_model.bin")
    return tmp_path / "pytorch_model.bin"


@pytest.mark.parametrize("make, needles", [
    (_v2, ("not a timm MobileNet v1", "blocks per stage 1, 2, 3, 4, 3, 3, 1")),
    (_v2_bin, ("not a timm MobileNet v1",)),
    (_v1h, ("mobilenetv1_100h", "conv_head")),
    (_truncated, ("not a readable safetensors file", "truncated")),
    (_not_safetensors, ("is not a safetensors file",)),
    (_needs_code, ("a pickle that needs code to load", "weights_only=True")),
])
def test_bad_input_is_one_line_and_nothing_written(make, needles, tmp_path):
    src = make(tmp_path)
    out = tmp_path / "out.pt"
    proc = run_main("mobilenet-import", str(src), str(out), cwd=tmp_path, check=False)
    assert_one_line_error(proc, *needles)
    assert not out.exists() and not list(tmp_path.glob(".out.pt*"))


# ----------------------------------------------------------------------------- downstream of an import


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    """A random-weight mobilenetv1_100 file as timm saves it, and its import at 32 px (the tiny runs' input)."""
    root = tmp_path_factory.mktemp("timm")
    src = save_safetensors(random_timm_model("mobilenetv1_100", _generated_batch()), root / "model.safetensors")
    run_main("mobilenet-import", str(src), str(root / "imported.pt"), "model.resolution=32", cwd=root)
    return src, root / "imported.pt"


def test_finetuning_starts_from_the_safetensors_file(timm_file, tmp_path):
    """model.init=model.safetensors: a frozen backbone keeps timm's weights exactly; the classifier is new."""
    src, _ = timm_file
    fit_in_process(tmp_path / "run", f"model.init={src}", "trainer.freeze_backbone_epochs=1", *FEW_IMAGES)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    from safetensors.torch import load_file

    timm_state = load_file(str(src))
    assert ckpt["model_args"]["activation"] == "relu6" and ckpt["model_args"]["alpha"] == 1.0
    assert torch.equal(ckpt["model"]["stem.conv.weight"], timm_state["conv_stem.weight"])
    assert torch.equal(ckpt["model"]["blocks.12.pw.bn.running_var"], timm_state["blocks.4.1.bn2.running_var"])
    assert ckpt["model"]["fc.weight"].shape[0] == ckpt["config"]["data"]["num_classes"] != 1000


def test_an_import_is_the_ssd_backbone(timm_file, tmp_path):
    from mobilenet_train.config import compose
    from mobilenet_train.engine import fit

    _, imported = timm_file
    fit(compose([*TINY_DET, f"model.init={imported}", "optim.lr=1e-9", "sched.warmup_epochs=0",
                 "data.shapes_det.train_images=8", "data.shapes_det.val_images=4"], hydra=False), tmp_path / "det")
    ckpt = load_checkpoint(tmp_path / "det" / "checkpoints" / "last.pt")
    init = load_checkpoint(imported)
    assert ckpt["model_args"]["task"] == "detection" and ckpt["model_args"]["activation"] == "relu6"
    w = ckpt["model"]["backbone.blocks.5.dw.conv.weight"]
    assert (w - init["model"]["blocks.5.dw.conv.weight"]).abs().max() < 1e-6  # lr 1e-9: the backbone as imported


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=UserError, reason="the int8 graph of the QAT flow (convert_pt2e) misses the "
                   "fake-quantized model by 7-26% of the largest logit on these random-weight models (timm's init, "
                   "or measured BN statistics; the toolkit's own init with BN statistics 0/1 matches exactly): "
                   "docs/benchmarks.md")
def test_qat_from_an_import_exports_int8_tflite_that_passes_its_check(tmp_path):
    """The path to a phone: import, fine-tune on the task's classes, QAT distilled from the fine-tuned model, int8
    TF-Lite whose parity check against the fake-quantized model must pass."""
    import timm

    from mobilenet_train.deploy.export import export
    from mobilenet_train.finetune import init_input

    src = save_safetensors(timm.create_model("mobilenetv1_100", pretrained=False), tmp_path / "model.safetensors")
    imported = tmp_path / "imported.pt"
    run_main("mobilenet-import", str(src), str(imported), "model.resolution=32", cwd=tmp_path)
    fit_in_process(tmp_path / "float", f"model.init={imported}", *FEW_IMAGES)
    tuned = tmp_path / "float" / "checkpoints" / "best.pt"
    same_input = [f"{k}={v}" for k, v in init_input(load_checkpoint(tuned)).items()]
    fit_in_process(tmp_path / "qat", "qat.enabled=true", "qat.target=tflite", "qat.freeze_bn_steps=2",
                   "qat.freeze_observer_steps=4", f"model.init={tuned}", f"distill.teacher={tuned}",
                   "distill.alpha=1.0", *FEW_IMAGES, *same_input)
    r = export(str(tmp_path / "qat" / "checkpoints" / "last.pt"), "tflite", out=str(tmp_path / "m.tflite"))
    assert r.precision == "int8" and (tmp_path / "m.tflite").is_file()
    assert r.verification["top1_agreement"] >= 0.75


# ----------------------------------------------------------------------------- timm's validate.py


def _relabelled(model, val, out):
    """`val`'s images under the class timm's own eval pipeline predicts for them (10 classes): validate.py scores
    100% there, and mobilenet-eval's top-1 is the share of images on which it predicts what timm predicts."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(model=model, use_test_size=True))
    files = image_files(val)
    logits = []
    with torch.no_grad():
        for i in range(0, len(files), 50):
            batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files[i:i + 50]])
            logits.append(model(batch))
    logits = torch.cat(logits)
    model.classifier.bias.data -= logits.mean(0)  # every class predicted for some images
    labels = (logits - logits.mean(0)).argmax(1)
    wnids = sorted(p.name for p in val.iterdir())
    for f, label in zip(files, labels.tolist()):
        (out / wnids[label]).mkdir(parents=True, exist_ok=True)
        (out / wnids[label] / f.name).symlink_to(f)
    assert len(list(out.iterdir())) == 10
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHS)
def test_mobilenet_eval_of_the_import_equals_timms_validate(name, tmp_path):
    val = shared_or_skip("data", "imagenette-mini", "val")
    validate = shared_or_skip("peers", "timm", "validate.py")
    # timm's own BN statistics: a random network whose predictions pixel-level differences do not flip.
    model = random_timm_model(name, timm_batch(spread(image_files(val), 64)), num_classes=10, measured_bn=False)
    folder = _relabelled(model, val, tmp_path / "relabelled" / "val")
    src = save_safetensors(model, tmp_path / "model.safetensors")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    subprocess.run([sys.executable, str(validate), str(folder), "--model", name, "--checkpoint", str(src),
                    "--num-classes", "10", "--device", "cpu", "--workers", "1", "-b", "50", "--results-file",
                    str(tmp_path / "timm.json"), "--results-format", "json"], check=True, cwd=tmp_path, env=env,
                   capture_output=True, timeout=900)
    timm_top1 = json.loads((tmp_path / "timm.json").read_text())["top1"]
    run_main("mobilenet-import", str(src), str(tmp_path / "imported.pt"), cwd=tmp_path)
    run_main("mobilenet-eval", str(tmp_path / "imported.pt"), f"data.root={tmp_path / 'relabelled'}",
             "data.num_workers=1", "data.eval_batch_size=50", "device=cpu", f"out={tmp_path / 'ours.json'}",
             "progress=false", cwd=tmp_path)
    ours = json.loads((tmp_path / "ours.json").read_text())
    print(f"{name}: validate.py top-1 {timm_top1:.2f}, mobilenet-eval top-1 {ours['top1']:.2f}")
    assert timm_top1 >= 99.9  # timm's pipeline predicts what it predicted: the relabelling is timm's own
    # Any real difference of preprocessing (size, crop, filter, normalization) moves tens of points here. The
    # two pipelines' pixels differ by one level in a few pixels (a box resampled vs resize-then-crop), which
    # flips a random model's near-ties: 2 and 0 of 1000 images measured (docs/benchmarks.md).
    assert abs(ours["top1"] - timm_top1) <= 0.3
