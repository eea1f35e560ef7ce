"""The export formats: file suffix, runtime, the packages each needs, and the module that writes and runs it.

A format module (onnx.py, executorch.py, tflite.py) imports its converter and runtime at its top
and is imported here only when its format is asked for: `import mobilenet_train.deploy` stays
light, and a missing package is one line. Each format module has `write(model, path, meta,
example, calibration, max_batch)`, `runner(path, threads)` and `read_metadata(path)`.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

from ..errors import UserError

FORMATS = {"onnx": ".onnx", "executorch": ".pte", "tflite": ".tflite"}
# The Python packages (import names) each format needs to write the file and to run it.
PACKAGES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "executorch": ("executorch",),
            "tflite": ("litert_torch", "ai_edge_litert")}
RUNTIMES = {"onnx": "ONNX Runtime", "executorch": "ExecuTorch (XNNPACK)", "tflite": "LiteRT (XNNPACK)"}
METADATA_KEY = "mobilenet_train.preprocessing"


def missing_packages(fmt: str) -> list[str]:
    """The Python packages of `fmt` that are not installed."""
    return [p for p in PACKAGES[fmt] if importlib.util.find_spec(p) is None]


def require(fmt: str) -> None:
    """A clear error when the runtime packages of `fmt` are not installed."""
    missing = missing_packages(fmt)
    if missing:
        raise UserError(f"--format {fmt} needs the Python package(s) {', '.join(missing)}, which are not installed: "
                        f"pip install 'mobilenet-train[deploy]'")


def load(fmt: str) -> ModuleType:
    """The module of `fmt` (onnx.py, executorch.py or tflite.py), once its packages are known to be there."""
    require(fmt)
    return importlib.import_module(f"{__package__}.{fmt}")


def runner(fmt: str, path: str | Path, threads: int = 0):
    """The exported file in its own runtime, as a function NCHW float32 array -> logits (0 threads: all)."""
    return load(fmt).runner(path, threads)


def read_metadata(path: str | Path) -> dict:
    """The preprocessing JSON recorded in an exported .onnx, .pte or .tflite file."""
    by_suffix = {suffix: fmt for fmt, suffix in FORMATS.items()}
    return load(by_suffix[Path(path).suffix]).read_metadata(path)
