"""Ship a checkpoint and time it: `mobilenet-export` and `mobilenet-bench` (their CLIs are in cli/).

The model is put in eval mode and every BatchNorm is folded into the conv before it, so the
exported graph is conv -> ReLU all the way; the checkpoint's eval preprocessing is recorded in
the file. After writing, the file runs in its own runtime and is deleted again if it does not
match PyTorch. The modules, in the order an export uses them:

    export.py     ExportOptions, ExportResult, export(): checks every option, then the steps below
    formats.py    the format registry: suffix, runtime, packages; runner() and read_metadata()
    prepare.py    the model as deployed: BN folded, TF-same padding in TF-Lite's favourite form
    inputs.py     the images (calibration, verification, eval=) through mobilenet-eval's pipeline,
                  and the preprocessing metadata
    quantize.py   int8: bias correction, the PT2E flow, the ReLU6 annotation fixes
    onnx.py, executorch.py, tflite.py
                  write and run one format each; imported only when that format is asked for
    verify.py     the exported file against PyTorch, and top-1 on a labelled folder
    hub.py        --format safetensors: timm's Hub layout (float, BN kept), read back by timm and us
    latency.py    mobilenet-bench latency; profile.py: mobilenet-bench profile
    score.py      mobilenet-eval FILE.onnx|.pte|.tflite: an exported file scored in its runtime

A QAT checkpoint (qat.py) exports int8 from its trained ranges (export.export_qat), checked
against its fake-quantized model (verify.verify_qat).
"""
