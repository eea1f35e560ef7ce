"""Fine-tuning: start from the weights of another checkpoint (`model.init=PATH`), such as one
written by `mobilenet-import`, and optionally freeze the backbone for the first epochs
(`trainer.freeze_backbone_epochs`; the paper's section 4.3 fine-grained recognition setting).

The network's architecture comes from the init checkpoint, so `model.init=imported.pt`
alone rebuilds the imported model; the classifier is replaced when the class count differs.
timm's weights as safetensors (a file or a Hub folder) are imported in memory on the way.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf
from torch import nn

from .errors import UserError
from .importer import load_weights

log = logging.getLogger("mobilenet_train")

# What the weights need: taken from the init checkpoint. Input size, class count, dropout and
# BN momentum stay as configured.
ARCH_KEYS = ("alpha", "variant", "activation", "padding", "round_to", "min_channels", "norm", "bn_eps")
HEAD_PREFIX = "fc."


def load_init(cfg: DictConfig) -> dict | None:
    """The `model.init` checkpoint (None if unset); copies its architecture into `cfg.model`.

    The key exists only where a config defines it: `+experiment=finetune` (required there), or
    `+model.init=PATH` with any other recipe.
    """
    if OmegaConf.is_missing(cfg.model, "init"):  # ??? (False where the key is absent)
        raise UserError("model.init is required: pass model.init=PATH (a checkpoint, e.g. from mobilenet-import)")
    path = cfg.model.get("init")
    if not path:
        return None
    init = load_weights(path, "model.init")
    if (init["config"].get("qat") or {}).get("enabled"):
        raise UserError(f"model.init={path} is a QAT checkpoint (a fake-quantized graph): start from a float "
                        f"checkpoint (resume a QAT run with trainer.resume=PATH; export it with mobilenet-export)")
    stored = init["model_args"]
    changed = []
    for key in ARCH_KEYS:
        if key in stored and cfg.model.get(key) != stored[key]:
            changed.append(f"model.{key}={stored[key]}")
            OmegaConf.update(cfg, f"model.{key}", stored[key], merge=False)
    if stored.get("task") == "detection" and cfg.get("task") == "detection":
        changed += detector_settings(cfg, init)
    if changed:
        log.info("model.init=%s: the architecture comes from it (%s)", path, " ".join(changed))
    if (cfg.get("qat") or {}).get("enabled"):
        same_input_as_init(cfg, init, path)
    return init


# A detector init's keys that give its weights their meaning: always taken from it. Its post-processing
# and its input normalisation: taken where the config leaves them at their defaults.
DETECTOR_ARCH_KEYS = ("head", "min_ratio", "max_ratio", "score_fn", "box_scales", "clip_anchors")
DETECTOR_POST_KEYS = ("nms_mode", "score_thresh", "nms_thresh", "detections_per_img", "topk_candidates")


def detector_settings(cfg: DictConfig, init: dict) -> list[str]:
    """Copy a detector init's detection.* settings (and its data.normalization) into `cfg`; returns them."""
    from .config.schema import DataConfig, DetectionConfig

    stored, changed = init["model_args"], []
    defaults = DetectionConfig()
    for key in DETECTOR_ARCH_KEYS + DETECTOR_POST_KEYS:
        value, now = stored.get(key), cfg.detection.get(key)
        now = list(now) if key == "box_scales" else now
        value = list(value) if key == "box_scales" and value is not None else value
        at_default = now == (list(getattr(defaults, key)) if key == "box_scales" else getattr(defaults, key))
        if value is not None and now != value and (key in DETECTOR_ARCH_KEYS or at_default):
            changed.append(f"detection.{key}={value}")
            OmegaConf.update(cfg, f"detection.{key}", value, merge=False)
    norm = (init["config"].get("data") or {}).get("normalization")
    if norm and cfg.data.normalization != norm and cfg.data.normalization == DataConfig().normalization:
        changed.append(f"data.normalization={norm}")
        OmegaConf.update(cfg, "data.normalization", norm, merge=False)
    return changed


# What a deployed model's input is: QAT must train and score the model on exactly that input.
QAT_INPUT_KEYS = ("model.resolution", "data.normalization", "data.eval_preset", "data.eval_crop_fraction",
                  "data.interpolation")


def init_input(init: dict) -> dict:
    """The input a float checkpoint was made for: {QAT_INPUT_KEYS key: its value}, the keys it records."""
    stored = OmegaConf.create({"model": {"resolution": init["model_args"]["resolution"]},
                               "data": dict(init["config"].get("data") or {})})
    values = {k: OmegaConf.select(stored, k) for k in QAT_INPUT_KEYS}
    return {k: v for k, v in values.items() if v is not None}


def same_input_as_init(cfg: DictConfig, init: dict, path) -> None:
    """QAT quantizes the float model for its deployment: its input size and eval preprocessing (which the
    export writes into the int8 file) must be the float checkpoint's, not this config's defaults."""
    diffs = [f"{k}={v}" for k, v in init_input(init).items() if OmegaConf.select(cfg, k) != v]
    if diffs:
        raise UserError(f"model.init={path} was made for {' '.join(diffs)}, and QAT trains the model for that input: "
                        f"add {' '.join(diffs)}")


def load_init_weights(model: nn.Module, init: dict, path: str, classes: list[str] | None = None) -> list[str]:
    """Copy `init`'s weights into `model`; a classifier of another shape is left as initialised.
    A detector takes its backbone from it (its `init_from_checkpoint`), and from a detector whatever fits,
    class-head rows by category name where the categories (`classes`) differ."""
    if hasattr(model, "init_from_checkpoint"):
        fresh = model.init_from_checkpoint(init, path, classes)
        log.info("model.init=%s: backbone loaded; %d detector tensors start afresh", path, len(fresh))
        kept = getattr(model, "kept_categories", None)
        if kept is not None:
            same = [c for c, row in kept.items() if row is not None]
            new = [c for c, row in kept.items() if row is None]
            log.info("model.init=%s: class-head rows kept for %d categories whose names match the init's (%s); "
                     "%d start fresh (%s)", path, len(same), ", ".join(same) or "none", len(new),
                     ", ".join(new) or "none")
        return fresh
    own = model.state_dict()
    kept = {k: v for k, v in init["model"].items() if k in own and own[k].shape == v.shape}
    fresh = [k for k in own if k not in kept]
    if any(not k.startswith(HEAD_PREFIX) for k in fresh):
        odd = [k for k in fresh if not k.startswith(HEAD_PREFIX)][:3]
        raise UserError(f"model.init={path} does not fit the model: no matching weights for {', '.join(odd)}, ...")
    model.load_state_dict({**own, **kept})
    if fresh:
        old = init["model_args"].get("num_classes")
        if model.args.embedding_dim:
            log.info("model.init=%s: weights loaded; the embedding head is new (%d -> %d)", path, model.num_features,
                     model.args.embedding_dim)
        else:
            log.info("model.init=%s: weights loaded; the classifier is new (%s -> %d classes)", path, old,
                     model.fc.out_features)
    else:
        log.info("model.init=%s: all weights loaded, classifier included", path)
    return fresh


def backbone(model: nn.Module) -> list[nn.Module]:
    """Everything but the classifier."""
    return [model.stem, model.blocks]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    for module in backbone(model):
        module.requires_grad_(not frozen)


def backbone_eval(model: nn.Module) -> None:
    """A frozen backbone keeps its BN statistics as well (BN in eval mode)."""
    for module in backbone(model):
        module.eval()
