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
    if changed:
        log.info("model.init=%s: the architecture comes from it (%s)", path, " ".join(changed))
    if (cfg.get("qat") or {}).get("enabled"):
        same_input_as_init(cfg, init, path)
    return init


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


def load_init_weights(model: nn.Module, init: dict, path: str) -> list[str]:
    """Copy `init`'s weights into `model`; a classifier of another shape is left as initialised.
    A detector takes its backbone from it (its `init_from_checkpoint`)."""
    if hasattr(model, "init_from_checkpoint"):
        fresh = model.init_from_checkpoint(init, path)
        log.info("model.init=%s: backbone loaded; %d detector tensors start afresh", path, len(fresh))
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
