"""Quantization-aware training (qat.py through the trainer) and the export of its int8 state: the fake-quant
graph is there and trained, freezing happens at its steps, a QAT run resumes bit-identically on CPU, the
export equals the fake-quantized model on real images, and bad input is one line."""

from __future__ import annotations

import pytest
import torch
from helpers import fit_in_process, leftovers
from torchao.quantization.pt2e import FakeQuantizeBase

from mobilenet_train import qat
from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.cli.export import main as export_main
from mobilenet_train.deploy.export import export
from mobilenet_train.deploy.formats import FORMATS
from mobilenet_train.deploy.inputs import checkpoint_images
from mobilenet_train.deploy.verify import QAT_TOLERANCE
from mobilenet_train.errors import UserError
from mobilenet_train.evaluation import evaluate_checkpoint, evaluate_file

# 240 shapes images at batch 40: 6 steps an epoch. BN frozen after step 3, observers after step 8.
QAT = ["trainer.deterministic=true", "qat.enabled=true", "qat.target=executorch", "qat.freeze_bn_steps=3",
       "qat.freeze_observer_steps=8", "distill.alpha=1.0"]


# Each QAT fit captures and prepares the graph (tens of seconds on 2 cores): the tests on trained QAT runs are slow.
@pytest.fixture(scope="module")
def qat_runs(trained_run, tmp_path_factory):
    """{straight: 2 epochs, split: 1 epoch then resumed to 2, epoch1: split's checkpoint after epoch 1}."""
    before = torch.are_deterministic_algorithms_enabled()
    init = trained_run / "checkpoints" / "best.pt"
    common = [*QAT, f"model.init={init}", f"distill.teacher={init}"]
    root = tmp_path_factory.mktemp("qat")
    fit_in_process(root / "straight", *common, "trainer.epochs=2")
    fit_in_process(root / "split", *common, "trainer.epochs=1")
    epoch1 = load_checkpoint(root / "split" / "checkpoints" / "last.pt")
    fit_in_process(root / "split", *common, "trainer.epochs=2")
    torch.use_deterministic_algorithms(before)
    return {"straight": root / "straight", "split": root / "split", "epoch1": epoch1, "init": init}


def _last(run_dir) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def _entries(state: dict, part: str) -> dict:
    return {k: v for k, v in state.items() if part in k}


@pytest.mark.slow
def test_fake_quant_graph_is_trained_and_frozen_at_its_steps(qat_runs):
    first, last = qat_runs["epoch1"], _last(qat_runs["straight"])
    assert (first["step"], last["step"]) == (6, 12)
    model = qat.model_from_checkpoint(last)
    fake_quants = [m for m in model.modules() if isinstance(m, FakeQuantizeBase)]
    assert len(fake_quants) >= 28  # 27 convs + the classifier: weights and activations
    # Observers ran until step 8: the ranges moved between steps 6 and 12, and are switched off at 12.
    ranges = [k for k in _entries(last["model"], "activation_post_process") if k.endswith(".scale")]
    assert any(not torch.equal(first["model"][k], last["model"][k]) for k in ranges)
    observing = _entries(last["model"], "observer_enabled")
    assert observing and all(int(v) == 0 for v in observing.values())
    # Evaluating does not move them (step 6: still observing in training): eval mode gives the same logits twice.
    early, x = qat.model_from_checkpoint(first), torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(early(x), early(x))
    # BN statistics froze at step 3: equal at steps 6 and 12, moved away from the float model's before.
    init = load_checkpoint(qat_runs["init"])["model"]
    assert not torch.equal(first["model"]["qat.stem.bn.running_mean"], init["stem.bn.running_mean"])
    assert torch.equal(first["model"]["qat.stem.bn.running_mean"], last["model"]["qat.stem.bn.running_mean"])
    assert not torch.equal(first["model"]["qat.stem.conv.weight"], last["model"]["qat.stem.conv.weight"])


@pytest.mark.slow
def test_qat_checkpoint_resumes_bit_identically(qat_runs):
    a, b = _last(qat_runs["straight"]), _last(qat_runs["split"])
    assert a["model"].keys() == b["model"].keys()
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert different == []
    assert a["config"]["distill"]["teacher"] == str(qat_runs["init"])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["executorch", "onnx"])
def test_export_from_qat_equals_the_fake_quantized_model_on_real_images(qat_runs, fmt, tmp_path):
    ckpt = qat_runs["straight"] / "checkpoints" / "last.pt"
    val = next(p for p in checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if p.name == "val")
    out = tmp_path / f"q{FORMATS[fmt]}"
    r = export(str(ckpt), fmt, out=str(out), eval_dir=str(val), num_verify=16, max_batch=8)
    v = r.verification
    assert r.precision == "int8" and "of the checkpoint's data" in r.inputs and v["reference"] == "fake-quantized"
    assert v["top1_agreement"] == 1.0 and v["max_rel_error"] <= QAT_TOLERANCE and v["num_images"] == 16
    # All 80 val images: the file's top-1 is the fake-quantized model's, as mobilenet-eval scores both.
    assert r.accuracy["exported_top1"] == pytest.approx(r.accuracy["pytorch_fp32_top1"], abs=2.5)
    scored = evaluate_file(str(out), ["data.num_workers=0", "progress=false", f"out={tmp_path / 'f.json'}"])
    assert scored["top1"] == pytest.approx(r.accuracy["exported_top1"], abs=1e-9)
    fq = evaluate_checkpoint(str(ckpt), ["data.num_workers=0", "progress=false", f"out={tmp_path / 'c.json'}",
                                         "device=cpu"])
    assert fq["top1"] == pytest.approx(r.accuracy["pytorch_fp32_top1"], abs=1e-9)
    assert leftovers(tmp_path) == sorted(["c.json", "f.json", out.name])


def _fails(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        export_main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("mobilenet-export: error:"), err
    return err[0]


@pytest.mark.slow
def test_a_qat_checkpoint_where_it_does_not_fit_is_one_line(qat_runs, tmp_path, capsys):
    ckpt = str(qat_runs["straight"] / "checkpoints" / "last.pt")
    out = f"out={tmp_path / 'q.tflite'}"
    assert "trained for qat.target=executorch" in _fails([ckpt, "--format", "tflite", out], capsys)
    assert "drop calibration=" in _fails([ckpt, "--format", "executorch", out, f"calibration={tmp_path}"], capsys)
    assert leftovers(tmp_path) == []
    with pytest.raises(UserError, match="is a QAT checkpoint"):
        fit_in_process(tmp_path / "run", *QAT, f"model.init={ckpt}", f"distill.teacher={ckpt}")
    assert leftovers(tmp_path) == []


def test_a_float_checkpoint_where_a_qat_one_is_needed_is_refused(trained_run, tmp_path):
    float_ckpt = trained_run / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match="holds a float model, not a QAT one"):
        qat.model_from_checkpoint(load_checkpoint(float_ckpt))
    with pytest.raises(UserError, match=r"qat.enabled=false \(config: true\)"):  # a float run resumed as QAT
        fit_in_process(tmp_path / "run", *QAT, f"trainer.resume={float_ckpt}")
    with pytest.raises(UserError, match="does not combine with trainer.compile=true"):
        fit_in_process(tmp_path / "run", *QAT, "trainer.compile=true")
    with pytest.raises(UserError, match="does not combine with trainer.ema.enabled=true"):
        fit_in_process(tmp_path / "run", *QAT, "trainer.ema.enabled=true")
    assert leftovers(tmp_path) == []


def test_qat_keeps_the_float_models_input(trained_run, tmp_path):
    """The int8 model is for the float model's deployment: another input size or eval preprocessing is refused
    (the defaults of a fresh config would otherwise replace an imported model's 160 px and TF-slim preset)."""
    init = trained_run / "checkpoints" / "best.pt"
    with pytest.raises(UserError, match=r"was made for model.resolution=32, .*add model.resolution=32$"):
        fit_in_process(tmp_path / "run", *QAT, f"model.init={init}", "model.resolution=64")
    with pytest.raises(UserError, match=r"was made for data.eval_preset=default data.eval_crop_fraction=0.875, "):
        fit_in_process(tmp_path / "run", *QAT, f"model.init={init}", "data.eval_preset=tf",
                       "data.eval_crop_fraction=0.5")
    assert leftovers(tmp_path) == []


def test_experiment_qat_distils_from_the_float_model(compose):
    cfg = compose("+experiment=qat", "model.init=float.pt", "data.root=/data")
    assert cfg.qat.enabled and cfg.distill.teacher == "float.pt" and cfg.distill.alpha == 1.0


@pytest.mark.parametrize("target", ["tflite", pytest.param("executorch", marks=pytest.mark.slow)])
def test_the_int8_graph_computes_what_qat_trained(target):
    """convert_pt2e of a trained QatModel equals its fake-quantized forward; torch's fused fake-quant kernel
    (the quantizers' default for weights) trains single-sign channels on an affine grid and divides by 127.5,
    which the converted graph then does not reproduce."""
    from types import SimpleNamespace

    from mobilenet_train.model import MobileNetV1, ModelArgs

    torch.manual_seed(0)
    model = MobileNetV1(ModelArgs(alpha=0.25, resolution=32, num_classes=10))
    with torch.no_grad():  # depthwise filters of one sign, as trained ones often are
        model.blocks[0].dw.conv.weight.abs_()
    fq = qat.prepare(model, SimpleNamespace(target=target))
    opt = torch.optim.SGD(fq.parameters(), lr=0.01)
    fq.train()
    for _ in range(3):  # observe and train: ranges and weights move
        opt.zero_grad()
        fq(torch.randn(8, 3, 32, 32)).square().mean().backward()
        opt.step()
    fq.freeze_bn()
    fq.freeze_observers()
    fq.eval()
    weights = [m for m in fq.modules() if isinstance(m, FakeQuantizeBase) and m.qscheme == torch.per_channel_symmetric]
    assert len(weights) == 28 and all(int(m.zero_point.abs().max()) == 0 for m in weights)
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        want, got = fq(x), qat.convert(fq)(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-3


@pytest.mark.slow
def test_two_gloo_processes_train_qat_and_the_checkpoint_exports(trained_run, tmp_path):
    """QAT under DDP: rank 0's observer ranges and BN statistics are broadcast with the buffers, its
    checkpoint holds them, and the int8 export from it matches its fake-quantized model."""
    import os
    import subprocess

    from helpers import BIN, TINY

    init = trained_run / "checkpoints" / "best.pt"
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "mobilenet_train.train", *TINY, *QAT,
           "trainer.epochs=2", "optim.lr=0.004", f"+model.init={init}", f"distill.teacher={init}", "trainer.device=cpu",
           f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and ckpt["step"] == 12 and qat.is_qat(ckpt)
    observing = _entries(ckpt["model"], "observer_enabled")
    assert observing and all(int(v) == 0 for v in observing.values())  # frozen at step 8, as in one process
    r = export(str(run / "checkpoints" / "last.pt"), "executorch", out=str(tmp_path / "q.pte"), num_verify=8,
               max_batch=8)
    assert r.verification["top1_agreement"] == 1.0 and r.verification["max_rel_error"] <= QAT_TOLERANCE
