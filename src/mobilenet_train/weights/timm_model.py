"""timm's MobileNet v1 (`mobilenetv1_100`, `mobilenetv1_125`): its state dict in, and out in the Hub layout.

timm builds MobileNet v1 as an EfficientNet (timm/models/efficientnet.py, `_gen_mobilenet_v1`): ReLU6,
symmetric padding (k // 2), BN eps 1e-5, widths rounded to multiples of 8, and 13 `dsa` blocks (depthwise
separable, activation after the pointwise conv, no residual) in five stages of 1, 2, 2, 6 and 2 blocks:

    conv_stem, bn1                       the stem
    blocks.S.J.conv_dw, blocks.S.J.bn1   block J of stage S: its depthwise conv
    blocks.S.J.conv_pw, blocks.S.J.bn2   and its pointwise conv
    classifier                           Linear(features, classes)

`mobilenetv1_100h` adds a 1x1 conv with BN (conv_head, bn2) before the pool, a layer this toolkit's network
does not have: refused by name. Files: model.safetensors, or a torch file (pytorch_model.bin, read with
weights_only=True), alone or in a Hub folder with its config.json. The eval preprocessing comes from the
config's pretrained_cfg, else from timm's pretrained cfg of the architecture the widths name, resolved as
timm's validate.py resolves it (the test input size and crop where the cfg has them).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model import MobileNetV1, ModelArgs
from .common import MODULES, ConvWeights, SourceWeights

# Blocks per stage of timm's MobileNet v1, and the timm (conv, bn) names of the 27 convs in Table 1 order.
STAGES = (1, 2, 2, 6, 2)
BLOCK_NAMES = [f"blocks.{s}.{j}" for s, n in enumerate(STAGES) for j in range(n)]
TIMM_LAYERS = (("conv_stem", "bn1"),
               *((f"{b}.{conv}", f"{b}.{bn}") for b in BLOCK_NAMES for conv, bn in (("conv_dw", "bn1"),
                                                                                      ("conv_pw", "bn2"))))
BN_PARTS = ("weight", "bias", "running_mean", "running_var")
BN_SHORT = dict(zip(BN_PARTS, ("gamma", "beta", "mean", "var")))
CLASSIFIER = "classifier"
HEAD_CONV = "conv_head.weight"  # mobilenetv1_100h's extra 1x1 conv before the pool
# timm's MobileNet v1 architectures by their (stem, last) widths; the `h` variant is told apart by conv_head.
ARCHITECTURES = {(32, 1024): "mobilenetv1_100", (40, 1280): "mobilenetv1_125"}
TIMM_BN_EPS = 1e-5
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"
OWN_SECTION = "mobilenet_train"  # config.json's record of what timm's keys cannot say (written by to_hub)
# The toolkit's normalizations as timm's (mean, std), and eval presets as timm's crop modes.
NORMALIZATIONS = {"inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


# ----------------------------------------------------------------------------- reading files


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian) and the header's '{'."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30)


def weights_file(path: Path) -> tuple[Path, Path | None]:
    """(the weights file, the config.json beside it or None) of a file or a Hub folder."""
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise UserError(f"{path} holds none of {', '.join(WEIGHT_FILES)}: not a model folder in the Hub layout")
        path = found[0]
    config = path.parent / CONFIG_FILE
    return path, config if config.is_file() else None


def read_state_dict(path: Path, what: str = "") -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (weights_only=True); a training checkpoint's
    `state_dict` (or `model`, `state_dict_ema`) entry is taken, DDP's `module.` prefix dropped."""
    name = f"{what}={path}" if what else str(path)
    if path.suffix == ".safetensors" or is_safetensors(path):
        state = _read_safetensors(path, name)
    else:
        state = _read_torch(path, name)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{name} holds no state dict (a mapping of names to tensors): save one with "
                        f"safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _read_safetensors(path: Path, name: str) -> dict:
    from safetensors.torch import load_file

    if not is_safetensors(path):
        raise UserError(f"{name} is not a safetensors file (no safetensors header): give model.safetensors "
                        f"as saved by timm or safetensors, or a pytorch_model.bin")
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type and OSError for short files
        raise UserError(f"{name} is not a readable safetensors file (truncated or corrupt: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None


def _read_torch(path: Path, name: str):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        holds = f" (it holds a {found.group(1)})" if found else ""
        raise UserError(f"{name} is a pickle that needs code to load, which weights_only=True refuses{holds}: "
                        f"save the state dict alone, e.g. as model.safetensors") from None
    except Exception as e:  # noqa: BLE001 - truncated zips and garbage raise many different types
        raise UserError(f"{name} is neither a safetensors file nor a readable torch file (truncated or corrupt: "
                        f"{type(e).__name__})") from None
    if isinstance(state, dict) and state.get("format") == "mobilenet-train":
        raise UserError(f"{name} is a mobilenet-train checkpoint already: use it as it is")
    return state


def read_config(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not readable JSON ({type(e).__name__}): fix or remove it") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a timm model config (a JSON object with architecture and pretrained_cfg)")
    return config


# ----------------------------------------------------------------------------- timm -> the common form


def _check_keys(state: dict, source: str) -> None:
    """The keys are timm's MobileNet v1's, or one line says what the file holds instead."""
    expected = {f"{conv}.weight" for conv, _ in TIMM_LAYERS} | {f"{bn}.{p}" for _, bn in TIMM_LAYERS for p in BN_PARTS}
    expected |= {f"{CLASSIFIER}.weight", f"{CLASSIFIER}.bias"}
    held = {k for k in state if not k.endswith("num_batches_tracked")}
    if held == expected:
        return
    if held == expected | {HEAD_CONV, *(f"bn2.{p}" for p in BN_PARTS)}:
        raise UserError(f"{source} is timm's mobilenetv1_100h (a 1x1 conv_head before the pool), which this "
                        f"toolkit's MobileNet v1 does not have: import mobilenetv1_100 or mobilenetv1_125 instead")
    stages = {}
    for key in held:
        parts = key.split(".")
        if parts[0] == "blocks" and len(parts) > 2 and parts[1].isdigit() and parts[2].isdigit():
            stages[int(parts[1])] = max(stages.get(int(parts[1]), 0), int(parts[2]) + 1)
    layout = ", ".join(str(stages[s]) for s in sorted(stages)) or "none"
    odd = sorted(held - expected)[:2] or sorted(expected - held)[:2]
    raise UserError(f"{source} is not a timm MobileNet v1: blocks per stage {layout} where mobilenetv1 has "
                    f"{', '.join(map(str, STAGES))}, and keys like {', '.join(odd)} do not fit "
                    f"(mobilenet-import takes timm's mobilenetv1_100 and mobilenetv1_125)")


def _numpy(state: dict, key: str) -> np.ndarray:
    return state[key].detach().to(torch.float32).numpy()


def _own_model_args(config: dict | None) -> dict:
    """What a config.json written by `to_hub` records beyond timm's keys (activation, padding, BN eps)."""
    own = (config or {}).get(OWN_SECTION) or {}
    return own.get("model_args") or {}


def eval_data(pretrained_cfg: dict, source: str) -> tuple[int, dict]:
    """(the eval resolution, the data.* settings) of a timm pretrained cfg, as validate.py resolves it."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config(pretrained_cfg=dict(pretrained_cfg), use_test_size=True)
    _, height, width = cfg["input_size"]
    if height != width:
        raise UserError(f"{source}: the pretrained cfg's eval input is {height}x{width}; the toolkit scores square "
                        f"inputs")
    mean_std = (tuple(round(float(m), 4) for m in cfg["mean"]), tuple(round(float(s), 4) for s in cfg["std"]))
    norm = [name for name, pair in NORMALIZATIONS.items() if pair == mean_std]
    if not norm:
        raise UserError(f"{source}: the pretrained cfg's mean {mean_std[0]} and std {mean_std[1]} are neither "
                        f"inception's (0.5) nor imagenet's: not a normalization this toolkit has")
    if cfg["interpolation"] not in ("bilinear", "bicubic"):
        raise UserError(f"{source}: the pretrained cfg's interpolation {cfg['interpolation']} is not bilinear or "
                        f"bicubic, the filters this toolkit has")
    crop_mode, crop = cfg["crop_mode"], float(cfg["crop_pct"])
    if crop_mode == "center":
        data = {"eval_preset": "default", "eval_crop_fraction": crop, "interpolation": cfg["interpolation"]}
    elif crop_mode == "squash":  # the whole image squashed then centre-cropped: TF-slim's central crop
        data = {"eval_preset": "tf" if crop < 1 else "keras", "eval_crop_fraction": crop}
    else:
        raise UserError(f"{source}: the pretrained cfg's crop_mode {crop_mode} is not center or squash, the crops "
                        f"this toolkit has")
    # timm decodes whole images; libjpeg's DCT downscaling would change the pixels it scores.
    return int(height), {"normalization": norm[0], **data, "jpeg_draft": False}


def read_timm(path: Path) -> SourceWeights:
    """A timm MobileNet v1 state dict (a file or a Hub folder) in the common form."""
    weights, config_path = weights_file(path)
    state = read_state_dict(weights)
    source = str(weights)
    _check_keys(state, source)
    config = read_config(config_path)
    arch = (config or {}).get("architecture")
    if arch is not None and not str(arch).startswith("mobilenetv1_"):
        raise UserError(f"{config_path} names architecture {arch}, but the weights are timm's MobileNet v1: "
                        f"fix its \"architecture\" or remove it")
    widths = (state["conv_stem.weight"].shape[0], state[f"{TIMM_LAYERS[-1][0]}.weight"].shape[0])
    known = ARCHITECTURES.get(tuple(int(w) for w in widths))
    convs = [ConvWeights(conv, _numpy(state, f"{conv}.weight"), bn={BN_SHORT[p]: _numpy(state, f"{bn}.{p}")
                                                                    for p in BN_PARTS})
             for conv, bn in TIMM_LAYERS]
    if config and isinstance(config.get("pretrained_cfg"), dict):
        pretrained_cfg, cfg_from = config["pretrained_cfg"], str(config_path)
    else:
        from timm.models import get_pretrained_cfg

        pretrained_cfg = get_pretrained_cfg(known or "mobilenetv1_100").to_dict()
        cfg_from = f"timm's pretrained cfg of {known or 'mobilenetv1_100'}"
    resolution, data = eval_data(pretrained_cfg, source)
    own = _own_model_args(config)
    details = {"architecture": arch or known, "pretrained_cfg_from": cfg_from, "resolution_from": cfg_from,
               "config": str(config_path) if config_path else None}
    return SourceWeights(format="timm", sources=[source], convs=convs, fc_weight=_numpy(state, "classifier.weight"),
                         fc_bias=_numpy(state, "classifier.bias"), resolution=int(own.get("resolution", resolution)),
                         eval_preset=data["eval_preset"], bn_eps=float(own.get("bn_eps", TIMM_BN_EPS)),
                         details=details, activation=str(own.get("activation", "relu6")),
                         padding=str(own.get("padding", "symmetric")), eval_data=data)


# ----------------------------------------------------------------------------- the toolkit -> timm's Hub layout


def timm_state(model: MobileNetV1) -> dict[str, torch.Tensor]:
    """The toolkit model's weights under timm's names; BN folded into a conv (model.norm=none) becomes an
    identity BN holding the conv's bias."""
    args, state = model.args, model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for module, (conv, bn) in zip(MODULES, TIMM_LAYERS):
        out[f"{conv}.weight"] = state[f"{module}.conv.weight"]
        if args.norm == "none":
            bias = state[f"{module}.conv.bias"]
            identity = (torch.ones_like(bias), bias, torch.zeros_like(bias),
                        torch.full_like(bias, 1.0 - args.bn_eps))
            out.update({f"{bn}.{p}": v for p, v in zip(BN_PARTS, identity)})
        else:
            out.update({f"{bn}.{p}": state[f"{module}.bn.{p}"] for p in BN_PARTS})
    out[f"{CLASSIFIER}.weight"], out[f"{CLASSIFIER}.bias"] = state["fc.weight"], state["fc.bias"]
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def timm_architecture(args: ModelArgs) -> str | None:
    """The timm architecture with exactly these widths (None: timm has none)."""
    probe = ModelArgs(alpha=args.alpha, round_to=args.round_to, min_channels=args.min_channels)
    return ARCHITECTURES.get((probe.channels(32), probe.channels(1024)))


def timm_model_args(args: ModelArgs) -> dict:
    """timm's create_model arguments for what mobilenetv1_* does not do by default."""
    extra: dict = {}
    if args.activation != "relu6":
        extra["act_layer"] = args.activation
    if args.padding == "tf_same":
        extra["pad_type"] = "same"
    if args.bn_eps != TIMM_BN_EPS and args.norm != "none":
        extra["bn_eps"] = args.bn_eps
    return extra


def hub_config(args: ModelArgs, data: dict, classes: list[str] | None) -> dict:
    """config.json in timm's Hub layout; `data`: the checkpoint's data config (eval preprocessing)."""
    mean, std = NORMALIZATIONS[data["normalization"]]
    preset, crop = data["eval_preset"], float(data["eval_crop_fraction"])
    pretrained_cfg = {
        "input_size": [3, args.resolution, args.resolution], "fixed_input_size": False,
        "interpolation": data["interpolation"] if preset == "default" else "bilinear",
        "crop_pct": 1.0 if preset == "keras" else crop, "crop_mode": "center" if preset == "default" else "squash",
        "mean": list(mean), "std": list(std), "num_classes": args.num_classes, "first_conv": "conv_stem",
        "classifier": CLASSIFIER,
    }
    arch = timm_architecture(args) or f"mobilenetv1_{round(args.alpha * 100):03d}"
    config = {"architecture": arch, "num_classes": args.num_classes, "num_features": args.channels(1024),
              "global_pool": "avg", "model_args": {"num_classes": args.num_classes, **timm_model_args(args)}}
    if classes:
        config["label_names"] = list(classes)
    config["pretrained_cfg"] = pretrained_cfg
    own = {k: v for k, v in args.to_dict().items() if k not in ("num_classes", "dropout", "bn_momentum")}
    config[OWN_SECTION] = {"model_args": own}
    return config


def write_hub(folder: Path, model: MobileNetV1, data: dict, classes: list[str] | None) -> dict:
    """model.safetensors and config.json into `folder` (which must exist); returns the config."""
    from safetensors.torch import save_file

    config = hub_config(model.args, data, classes)
    save_file(timm_state(model), str(folder / WEIGHT_FILES[0]), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return config
