"""mobilenet-export and mobilenet-bench latency: exported files match PyTorch in their own runtimes,
broken exports leave nothing behind, int8 keeps Google's accuracy, latency.json feeds the report."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import run_cli, shared_or_skip
from mobilenet_train import export as E
from mobilenet_train.bench import random_checkpoint, run_latency
from mobilenet_train.checkpoint import load_checkpoint
from mobilenet_train.errors import UserError
from mobilenet_train.report import LATENCY_OUTPUT, write_report
from test_cli_errors import assert_one_line_error

SAMPLES = ("data", "imagenet-samples")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Two shared cores: OpenMP's spinning threads make small models much slower, not faster.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def arch_ckpts(tmp_path_factory):
    """Random-weight checkpoints (BN statistics measured) of alpha 1.0 and 0.25 at two resolutions."""
    root = tmp_path_factory.mktemp("arch")
    return {(a, r): random_checkpoint([f"model.alpha={a}", f"model.resolution={r}", "model.num_classes=10",
                                       "data.num_classes=10", *(["model.padding=tf_same"] if r == 96 else [])],
                                      root / f"a{a}_r{r}.pt")
            for a in (1.0, 0.25) for r in (64, 96)}


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


# ExecuTorch's lowering of alpha 1.0 takes ~25 s on the shared 2-core machine: one such case in the fast set.
@pytest.mark.parametrize("fmt,alpha,res", [
    *[("onnx", a, r) for a in (1.0, 0.25) for r in (64, 96)],
    ("executorch", 1.0, 64), pytest.param("executorch", 1.0, 96, marks=pytest.mark.slow),
    ("executorch", 0.25, 64), ("executorch", 0.25, 96),
    *[("tflite", a, r) for a in (1.0, 0.25) for r in (64, 96)],
])
def test_fp32_export_matches_pytorch(arch_ckpts, fmt, alpha, res, tmp_path):
    out = tmp_path / f"m{E.FORMATS[fmt]}"
    r = E.export(str(arch_ckpts[(alpha, res)]), fmt, out=str(out), num_verify=4, max_batch=4)
    assert leftovers(tmp_path) == [out.name]
    assert r.verification["max_rel_error"] <= 1e-4 and r.verification["top1_agreement"] == 1.0
    # Independently of the built-in check: a batch of 3 (the batch axis is dynamic) in the file's runtime.
    ckpt = load_checkpoint(arch_ckpts[(alpha, res)])
    x = E.generated_images(3, ckpt, seed=5)
    with torch.no_grad():
        want = E.deploy_model(ckpt)(x).numpy()
    got = E.runner(fmt, out, threads=1)(x.numpy())
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    meta = E.read_metadata(out)
    assert meta["input_size"] == res and meta["model_args"]["alpha"] == alpha and meta["precision"] == "fp32"
    assert meta["normalization"] == "inception" and meta["mean"] == [0.5] * 3 and meta["std"] == [0.5] * 3
    if fmt == "tflite":
        # No layout shuffling: one TRANSPOSE (the NCHW input). tf_same (96 px) has Google's op list, every
        # pad folded into a SAME conv but the stem's; symmetric stride-2 convs need an explicit PAD each.
        ops = tflite_ops(out)
        assert ops["CONV_2D"] == 14 and ops["DEPTHWISE_CONV_2D"] == 13 and ops["TRANSPOSE"] == 1, ops
        assert ops.get("PAD", 0) == (1 if res == 96 else 5), ops


def tflite_operators(path) -> list[tuple[str, object, object]]:
    """(operator name, operator, subgraph) of a .tflite file's main graph, in order."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = flatbuffer_utils.read_model(str(path))
    codes, graph = model.operatorCodes, model.subgraphs[0]
    return [(names[max(codes[op.opcodeIndex].builtinCode, codes[op.opcodeIndex].deprecatedBuiltinCode)], op, graph)
            for op in graph.operators]


def tflite_ops(path) -> dict:
    from collections import Counter

    return Counter(name for name, _, _ in tflite_operators(path))


def test_batchnorm_is_folded(arch_ckpts):
    model = E.deploy_model(load_checkpoint(arch_ckpts[(0.25, 64)]))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_bias_correction_removes_the_mean_shift_of_int8_weights():
    torch.manual_seed(0)
    # No padding: zeros at the borders make the correction approximate there, exact elsewhere.
    for layer, shape in [(torch.nn.Conv2d(8, 8, 3, groups=8), (64, 8, 10, 10)),
                         (torch.nn.Conv2d(8, 16, 1), (64, 8, 10, 10)), (torch.nn.Linear(16, 10), (64, 16))]:
        x = torch.rand(shape) + 0.5  # positive inputs, as after a ReLU: rounding shifts the mean
        corrected = E.correct_int8_bias(torch.nn.Sequential(layer), x)[0]
        with torch.no_grad():
            dims = (0, 2, 3) if x.dim() == 4 else (0,)
            want = layer(x).mean(dims)
            shift = {}
            for name, m in (("plain", layer), ("corrected", corrected)):
                w = m.weight + E.int8_weight_error(m.weight)
                out = (torch.nn.functional.linear(x, w, m.bias) if isinstance(m, torch.nn.Linear)
                       else m._conv_forward(x, w, m.bias))
                shift[name] = (out.mean(dims) - want).abs().max()
        assert shift["corrected"] < 0.05 * shift["plain"], (layer, shift)


@pytest.mark.parametrize("fmt", ["onnx", "executorch", "tflite"])
def test_wrong_shaped_export_is_caught_and_nothing_left(arch_ckpts, fmt, tmp_path, monkeypatch):
    # Traced at 32 px, half the model's input: the runtime refuses the real input (ExecuTorch takes
    # smaller inputs than planned for, so the wrong shape must be the smaller one).
    monkeypatch.setattr(E, "_example", lambda ckpt, batch=2: torch.zeros(batch, 3, 32, 32))
    with pytest.raises(UserError, match="does not run in its runtime"):
        E.export(str(arch_ckpts[(0.25, 64)]), fmt, out=str(tmp_path / "m.x"), num_verify=2, max_batch=2)
    assert leftovers(tmp_path) == []


def test_wrong_logits_are_caught_and_nothing_left(arch_ckpts, tmp_path, monkeypatch):
    # BN dropped instead of folded in the file only: it runs, but its logits are wrong.
    write = E.write_onnx

    def broken(model, path, *args):
        import copy

        bad = copy.deepcopy(model)
        bad.fc.bias.data += 1.0
        return write(bad, path, *args)

    monkeypatch.setattr(E, "write_onnx", broken)
    with pytest.raises(UserError, match="does not match PyTorch: logits differ"):
        E.export(str(arch_ckpts[(0.25, 64)]), "onnx", out=str(tmp_path / "m.onnx"), num_verify=2)
    assert leftovers(tmp_path) == []


def test_cli_on_a_trained_run_int8_with_accuracy(trained_run, cli, tmp_path):
    """The console script end to end: real shapes images for calibration, check and accuracy."""
    ckpt = trained_run / "checkpoints" / "best.pt"
    root = next(p for p in E.checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if (p / "val").is_dir())
    out = tmp_path / "best.int8.onnx"
    proc = cli("mobilenet-export", str(ckpt), "--format", "onnx", "--quantize", "int8", f"out={out}",
               "num_calibration=32", f"eval={root / 'val'}", cwd=tmp_path)
    assert f"exported    onnx int8" in proc.stdout and "images of the checkpoint's data" in proc.stdout
    line = next(s for s in proc.stdout.splitlines() if s.startswith("accuracy"))
    assert "80 images" in line and "PyTorch fp32 top-1" in line
    assert E.read_metadata(out)["precision"] == "int8"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops and "BatchNormalization" not in ops


def test_executorch_int8_export(trained_run, tmp_path):
    # Trained weights and real (shapes) images: random weights at alpha 0.25 quantise too erratically to check.
    ckpt = trained_run / "checkpoints" / "best.pt"
    r = E.export(str(ckpt), "executorch", "int8", out=str(tmp_path / "q.pte"), num_calibration=16, num_verify=8,
                 max_batch=8)
    assert r.precision == "int8" and r.verification["min_cosine"] >= E.INT8_MIN_COSINE
    assert "of the checkpoint's data" in r.calibration
    fp32 = E.export(str(ckpt), "executorch", out=str(tmp_path / "f.pte"), num_verify=1, max_batch=8)
    assert r.size_bytes < 0.6 * fp32.size_bytes  # int8 weights
    assert E.read_metadata(tmp_path / "q.pte")["precision"] == "int8"


def test_tflite_int8_export_is_fully_integer(trained_run, tmp_path):
    """Google's converter: int8 weights, int8 input and output (as Google's own quantised models), the
    preprocessing in the metadata table, accuracy on the real (shapes) images close to fp32."""
    from ai_edge_litert.interpreter import Interpreter

    ckpt = trained_run / "checkpoints" / "best.pt"
    root = next(p for p in E.checkpoint_images(load_checkpoint(ckpt), "val")[0].parents if (p / "val").is_dir())
    r = E.export(str(ckpt), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=32, num_verify=8,
                 eval_dir=str(root / "val"))
    assert r.verification["min_cosine"] >= E.INT8_MIN_COSINE and "of the checkpoint's data" in r.calibration
    assert r.accuracy["num_images"] == 80 and abs(r.accuracy["top1_change"]) <= 5.0, r.accuracy
    details = Interpreter(model_path=r.out).get_input_details()[0]
    assert details["dtype"] == np.int8 and list(details["shape"]) == [1, 3, 32, 32]
    # x/127.5 - 1 spans [-1, 1]: the input scale the converter recorded covers exactly that
    assert details["quantization"][0] == pytest.approx(2 / 255, rel=0.01)
    fp32 = E.export(str(ckpt), "tflite", out=str(tmp_path / "f.tflite"), num_verify=2)
    assert r.size_bytes < 0.6 * fp32.size_bytes
    meta = E.read_metadata(r.out)
    assert (meta["precision"], meta["format"], meta["batch"], meta["input_size"]) == ("int8", "tflite", 1, 32)
    assert meta["classes"] == load_checkpoint(ckpt)["classes"]


def test_tflite_int8_of_tf_same_weights_has_googles_op_list(arch_ckpts, tmp_path):
    """TF-same padding (Google's weights): without pad_channels_last, litert-torch's int8 graph wraps each
    pad in two TRANSPOSEs and a requantising QUANTIZE (78 ops instead of 32; 0.49 vs 0.29 ms at 0.25_128)."""
    r = E.export(str(arch_ckpts[(0.25, 96)]), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=8,
                 num_verify=2, min_cosine=0.5)  # random weights: nothing to agree on beyond the direction
    ops = tflite_ops(r.out)
    assert ops["TRANSPOSE"] == 1 and ops.get("PAD", 0) <= 1 and ops.get("QUANTIZE", 0) <= 2, ops
    assert ops["CONV_2D"] == 14 and ops["DEPTHWISE_CONV_2D"] == 13 and sum(ops.values()) <= 33, ops


def test_tflite_int8_relu6_is_quantised_after_the_clamp(tmp_path):
    """litert-torch's quantizer, left alone, makes ReLU6 share the conv's observer: every conv output is
    then quantised over its pre-activation range (zero points near 0, ranges of 8-17; the Keras 0.75_224
    weights score 3.5% top-1). Annotated like ReLU, each fused conv+ReLU6 output spans [0, <= 6]."""
    ckpt = random_checkpoint(["model.alpha=0.25", "model.resolution=64", "model.activation=relu6",
                              "model.num_classes=10", "data.num_classes=10"], tmp_path / "relu6.pt")
    r = E.export(str(ckpt), "tflite", "int8", out=str(tmp_path / "q.tflite"), num_calibration=16, num_verify=2,
                 min_cosine=0.0)
    conv_outputs = [graph.tensors[op.outputs[0]].quantization for name, op, graph in tflite_operators(r.out)
                    if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(conv_outputs) == 27
    for q in conv_outputs:
        assert int(q.zeroPoint[0]) == -128 and float(q.scale[0]) * 255 <= 6.0 + 1e-3, (q.zeroPoint, q.scale)


# ----------------------------------------------------------------------------- bad input


def run_export(*args, cwd):
    return run_cli("mobilenet-export", *args, cwd=cwd, check=False)


def test_bad_input_is_one_line_exit_2_nothing_written(arch_ckpts, tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    proc = run_export(str(foreign), "--format", "onnx", cwd=tmp_path)
    assert_one_line_error(proc, "not a mobilenet-train checkpoint")
    proc = run_export(str(arch_ckpts[(0.25, 64)]), "--format", "coreml", f"out={tmp_path / 'x'}", cwd=tmp_path)
    assert_one_line_error(proc, "--format coreml is unknown", "onnx, executorch, tflite")
    proc = run_export(str(arch_ckpts[(0.25, 64)]), "--format", "onnx", "--quantize", "int4", cwd=tmp_path)
    assert_one_line_error(proc, "--quantize int4 is unknown")
    proc = run_export(str(arch_ckpts[(0.25, 64)]), "--format", "onnx", "colour=red", cwd=tmp_path)
    assert_one_line_error(proc, "unknown option 'colour'")
    assert leftovers(tmp_path) == ["foreign.pt"]


def test_missing_runtime_package_is_one_line(arch_ckpts, tmp_path, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    missing = {"executorch", "litert_torch"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    for fmt, package in (("executorch", "executorch"), ("tflite", "litert_torch")):
        with pytest.raises(SystemExit) as exit_info:
            E.export_cli([str(arch_ckpts[(0.25, 64)]), "--format", fmt, f"out={tmp_path / ('m' + E.FORMATS[fmt])}"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"needs the Python package(s) {package}" in err[0] and "[deploy]" in err[0]
    assert leftovers(tmp_path) == []
    # backends=all leaves out what is not installed, and says so; naming one is an error.
    from mobilenet_train.bench import _parse_backends

    assert {b for b, _ in _parse_backends("all")} == {"pytorch", "compile", "onnx"}
    with pytest.raises(UserError, match="tflite"):
        from mobilenet_train.bench import bench_model

        bench_model(arch_ckpts[(0.25, 64)], {"backends": "tflite-int8"}, tmp_path)


# ----------------------------------------------------------------------------- Google's weights, int8


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "executorch", "tflite"])
def test_int8_keras_weights_keep_top1(fmt, tmp_path):
    """Keras 0.75_224, imported, int8 through our flow: within 1.5 points of fp32 on the 1000 samples."""
    from mobilenet_train.importer import import_weights

    src = shared_or_skip("weights", "keras-tfjs-mobilenet_v1_0.75_224")
    samples = shared_or_skip(*SAMPLES)
    ckpt = tmp_path / "keras.pt"
    import_weights([str(src)], str(ckpt))
    r = E.export(str(ckpt), fmt, "int8", out=str(tmp_path / f"q{E.FORMATS[fmt]}"), calibration=str(samples),
                 eval_dir=str(samples))
    a = r.accuracy
    assert a["num_images"] == 1000 and a["pytorch_fp32_top1"] == pytest.approx(82.4, abs=0.5)
    assert a["exported_top1"] >= a["pytorch_fp32_top1"] - 1.5, a


# ----------------------------------------------------------------------------- latency


def test_latency_bench_writes_json_and_report_reads_it(arch_ckpts, trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.pt"
    out = tmp_path / "lat" / "latency.json"
    report, path = run_latency([str(ckpt), "runs=3", "warmup=1", "batch=2", "threads=1,2",
                                "backends=pytorch,compile,onnx-fp32,onnx-int8,executorch-fp32,tflite-int8", f"out={out}"],
                               False)
    data = json.loads(out.read_text())
    assert path == out and data["format"] == "mobilenet-bench-latency"
    assert data["machine"]["cpu"] and data["machine"]["logical_cpus"] >= 1 and data["threads"] == [1, 2]
    (m,) = data["models"]
    assert (m["alpha"], m["resolution"]) == (0.25, 32) and m["checkpoint"] == str(ckpt.resolve())
    combos = {(r["backend"], r["precision"], r["threads"], r["batch"]) for r in m["results"]}
    assert combos == {(b, p, t, n) for b, p in [("pytorch", "fp32"), ("compile", "fp32"), ("onnx", "fp32"),
                                               ("onnx", "int8"), ("executorch", "fp32"), ("tflite", "int8")]
                      for t in (1, 2) for n in (1, 2)}
    for r in m["results"]:
        assert r["runs"] == 3 and 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["images_per_sec"] == pytest.approx(r["batch"] * 1e3 / r["median_ms"])
        assert r["ratio_to_eager"] > 0
    # The report: latency columns for the run of that architecture, a latency section and plot.
    table, _ = write_report([str(trained_run), str(out)], tmp_path / "report")
    (row,) = table
    assert row["latency_threads"] == 1 and row["latency_eager_ms"] > 0 and row["latency_int8_backend"] in ("onnx", "tflite")
    assert row["latency_fp32_backend"] in ("compile", "onnx", "executorch")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Latency" in text and "latency ms eager / fp32 / int8" in text
    assert (tmp_path / "report" / LATENCY_OUTPUT).stat().st_size > 10_000


def test_latency_bench_cli_architecture_and_bad_input(tmp_path):
    proc = run_cli("mobilenet-bench", "latency", "model.alpha=0.25", "model.resolution=32", "runs=2", "warmup=0",
                   "batch=2", "threads=1", "backends=pytorch,onnx", cwd=tmp_path)
    data = json.loads((tmp_path / "latency.json").read_text())
    assert data["models"][0]["weights"].startswith("random") and len(data["models"][0]["results"]) == 4
    assert "| onnx | fp32 | 1 | 2 |" in proc.stdout
    for args, needle in [(["threads=zero"], "threads=zero"), (["backends=tpu"], "'tpu' is unknown"),
                         (["nothing.pt"], "neither a checkpoint"), (["trainer.epochs=3"], "not a model.* or data.*")]:
        proc = run_cli("mobilenet-bench", "latency", *args, cwd=tmp_path / "..", check=False)
        assert_one_line_error(proc, needle)
