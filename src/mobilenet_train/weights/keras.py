"""Keras MobileNet v1 (``keras.applications.MobileNet``): HDF5 weights and the TF.js layers format.

Both formats hold the same named Keras weights, and one mapping serves both:

    conv1, conv_dw_i, conv_pw_i (i = 1..13)   conv kernels HWIO, depthwise kernels HWC1
    <conv>_bn                                 gamma, beta, moving_mean, moving_variance
    conv_preds                                1x1 conv with bias, features -> classes

HDF5 (``model.save_weights`` / ``model.save``): the root (or its ``model_weights`` group) has
a ``layer_names`` attribute; each layer group lists its datasets in ``weight_names``
(``conv1/kernel:0`` at ``conv1/conv1/kernel:0``). TF.js layers format: ``model.json`` holds
the Keras topology and a ``weightsManifest`` of groups; each group's binary shards,
concatenated, hold its weights in manifest order, little-endian.
Keras' MobileNet pads the TensorFlow way (SAME; later versions use an equivalent explicit
ZeroPadding2D) and uses ReLU6 and BN with epsilon 1e-3.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .common import ConvWeights, SourceWeights

CONV_LAYERS = ("conv1", *(f"conv_{part}_{i}" for i in range(1, 14) for part in ("dw", "pw")))
CLASSIFIER = "conv_preds"
BN_WEIGHTS = {"gamma": "gamma", "beta": "beta", "moving_mean": "mean", "moving_variance": "var"}
KERAS_BN_EPS = 1e-3
# keras.applications file names: mobilenet_<alpha as 1_0, 7_5, 5_0, 2_5>_<rows>_tf[_no_top].h5
KERAS_FILE_NAME = re.compile(r"mobilenet_\d_\d+_(\d+)_tf")
TFJS_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}


def from_layers(layers: dict[str, dict[str, np.ndarray]], fmt: str, source: str, resolution: int | None,
                bn_eps: float, resolution_from: str | None) -> SourceWeights:
    """Keras layer name -> {weight name: array} to the common form (the one name mapping)."""
    if "conv1" not in layers or "conv_dw_1" not in layers:
        held = ", ".join(list(layers)[:6]) or "none"
        raise UserError(f"{source} has no layers conv1 and conv_dw_1 (it holds {held}, ...): "
                        f"not a Keras MobileNet v1")
    convs = []
    for name in CONV_LAYERS:
        depthwise = "_dw_" in name
        key = "depthwise_kernel" if depthwise else "kernel"
        weights = layers.get(name, {})
        if set(weights) != {key}:
            raise UserError(f"{source}: layer {name} holds weights {sorted(weights) or 'none'}, "
                            f"expected only {key}: not a Keras MobileNet v1")
        kernel = weights[key]
        if kernel.ndim != 4:
            raise UserError(f"{source}: {name}/{key} has shape {kernel.shape}, expected a 4-d kernel")
        # Keras: conv kernels HWIO -> OIHW; depthwise kernels HWC1 -> (C, 1, H, W).
        weight = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
        bn_layer = layers.get(f"{name}_bn", {})
        missing = [w for w in BN_WEIGHTS if w not in bn_layer]
        if missing:
            raise UserError(f"{source}: layer {name}_bn lacks {', '.join(missing)}: not a Keras MobileNet v1 with BN")
        bn = {short: bn_layer[w] for w, short in BN_WEIGHTS.items()}
        convs.append(ConvWeights(name, weight, bn=bn))
    head = layers.get(CLASSIFIER, {})
    if "kernel" not in head or "bias" not in head:
        raise UserError(f"{source} has no classifier layer {CLASSIFIER} with kernel and bias (an include_top=False "
                        f"file?): import needs the whole model")
    kernel = head["kernel"]
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1):
        raise UserError(f"{source}: {CLASSIFIER}/kernel has shape {kernel.shape}, expected (1, 1, features, classes)")
    return SourceWeights(format=fmt, sources=[source], convs=convs, fc_weight=kernel[0, 0].T, fc_bias=head["bias"],
                         resolution=resolution, eval_preset="keras", bn_eps=bn_eps,
                         details={"resolution_from": resolution_from if resolution else None})


def topology_info(model_config: dict | None) -> dict:
    """Input size and BN epsilon from a Keras model config, where the file has one."""
    info: dict = {}
    if not isinstance(model_config, dict):
        return info
    layers = (model_config.get("config") or {}).get("layers") or []
    for layer in layers:
        config = layer.get("config") or {}
        if layer.get("class_name") == "InputLayer" and "resolution" not in info:
            shape = config.get("batch_input_shape") or config.get("batch_shape")
            if shape and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
                info["resolution"] = int(shape[1])
        if layer.get("class_name") == "BatchNormalization" and "bn_eps" not in info:
            info["bn_eps"] = float(config.get("epsilon", KERAS_BN_EPS))
    return info


def _resolution_from_name(path: Path) -> int | None:
    match = KERAS_FILE_NAME.search(path.name)
    return int(match.group(1)) if match else None


# ----------------------------------------------------------------------------- HDF5


def _names(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def read_hdf5(path: Path) -> SourceWeights:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                raise UserError(f"{path} is an HDF5 file without the 'layer_names' attribute Keras writes: "
                                f"not a Keras weights file")
            layers = {}
            for layer in _names(root.attrs["layer_names"]):
                group = root[layer]
                # Datasets are named by weight_names ("conv1/kernel:0"); keep the last part, "kernel".
                layers[layer] = {name.split("/")[-1].split(":")[0]: np.asarray(group[name])
                                 for name in _names(group.attrs.get("weight_names", []))}
            config = f.attrs.get("model_config")
    except UserError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is not a readable HDF5 weights file (truncated or corrupt: {first})") from None
    info = topology_info(json.loads(config) if isinstance(config, (str, bytes)) else None)
    if "resolution" in info:
        resolution, resolution_from = info["resolution"], "model config"
    else:
        resolution, resolution_from = _resolution_from_name(path), "file name"
    return from_layers(layers, "keras-hdf5", str(path), resolution, info.get("bn_eps", KERAS_BN_EPS), resolution_from)


# ----------------------------------------------------------------------------- TF.js layers format


def _tfjs_array(entry: dict, data: bytes, offset: int, where: str) -> tuple[np.ndarray, int]:
    shape = [int(d) for d in entry["shape"]]
    quant = entry.get("quantization")
    stored = (quant or {}).get("dtype", entry.get("dtype", "float32"))
    if stored not in TFJS_DTYPES:
        raise UserError(f"{where}: weight {entry['name']} has dtype {stored}, which this importer does not read")
    dtype = np.dtype(TFJS_DTYPES[stored]).newbyteorder("<")
    count = int(np.prod(shape))
    end = offset + count * dtype.itemsize
    if end > len(data):
        raise UserError(f"{where}: the shards end at byte {len(data)} but weight {entry['name']} needs bytes up to "
                        f"{end}: a shard is truncated")
    array = np.frombuffer(data, dtype, count, offset).reshape(shape)
    if quant and stored in ("uint8", "uint16"):  # tfjs affine quantization: value = q * scale + min
        array = array * np.float32(quant["scale"]) + np.float32(quant["min"])
    return array.astype(np.float32), end


def read_tfjs(path: Path) -> SourceWeights:
    model_json = path / "model.json" if path.is_dir() else path
    try:
        spec = json.loads(model_json.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{model_json} is not a readable model.json ({type(e).__name__}: {e})") from None
    manifest = spec.get("weightsManifest") if isinstance(spec, dict) else None
    if not isinstance(manifest, list):
        raise UserError(f"{model_json} has no weightsManifest: not a TensorFlow.js layers model")
    if spec.get("format") == "graph-model":
        raise UserError(f"{model_json} is a TensorFlow.js graph model: import reads the layers format (Keras)")
    layers: dict[str, dict[str, np.ndarray]] = {}
    try:
        for group in manifest:
            where = f"{model_json} ({', '.join(group['paths'])})"
            chunks = []
            for shard in group["paths"]:
                shard_path = model_json.parent / shard
                if not shard_path.is_file():
                    raise UserError(f"weight shard {shard_path} listed in {model_json.name} is missing")
                chunks.append(shard_path.read_bytes())
            data = b"".join(chunks)
            offset = 0
            for entry in group["weights"]:
                array, offset = _tfjs_array(entry, data, offset, where)
                *_, layer, name = ["", *entry["name"].split("/")]
                layers.setdefault(layer, {})[name.split(":")[0]] = array
            if offset != len(data):
                raise UserError(f"{where}: the shards hold {len(data)} bytes but the manifest describes {offset}: "
                                f"shards and model.json do not belong together")
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{model_json} has a malformed weightsManifest ({type(e).__name__}: {e})") from None
    topology = spec.get("modelTopology") or {}
    info = topology_info(topology.get("model_config", topology))
    return from_layers(layers, "tfjs-layers", str(model_json), info.get("resolution"), info.get("bn_eps", KERAS_BN_EPS),
                       "model config")
