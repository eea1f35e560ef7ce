"""`mobilenet-import SRC [SRC ...] OUT.pt [key=value ...]`: Google's MobileNet v1 weights as a checkpoint.

The result is a normal, self-describing toolkit checkpoint: `mobilenet-eval OUT.pt
data.root=...` evaluates it, and `+experiment=finetune model.init=OUT.pt` fine-tunes from it.
Width multiplier, input size, padding, class count and eval preprocessing come from the file.

Sources (recognised by content):
  Keras HDF5 weights          mobilenet_7_5_224_tf.h5 (keras.applications.MobileNet)
  TF.js layers model          model.json (or its directory), its weight shards beside it
  TF-Lite flatbuffer(s)       one .tflite, or the pieces of a split model in order
                              (mobilenet-import extractor.tflite head.tflite OUT.pt)
Overrides:
  keep_background=true        keep TF-slim's background logit (1001 classes, 'background' first)
  model.resolution=N          input side, where the file does not record it (Keras HDF5 weights
                              outside the keras.applications file names; default 224)
  model.padding=symmetric     pad symmetrically instead of TensorFlow's SAME (to measure the cost)
  model.dropout, model.bn_momentum   used when fine-tuning
  any other config key        stored in the checkpoint's config, e.g. data.root=/datasets/imagenet,
                              data.eval_preset=default
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError, fail

log = logging.getLogger("mobilenet_train")

PROG = "mobilenet-import"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Model settings the user may choose; the rest describe the weights and are read from the file.
FREE_MODEL_KEYS = ("resolution", "padding", "dropout", "bn_momentum")
DEFAULT_RESOLUTION = 224  # keras.applications' default input size


def read_source(paths: list[Path]):
    """Recognise the format of `paths` and read them into `SourceWeights`."""
    from .weights.keras import read_hdf5, read_tfjs
    from .weights.tflite_model import read_tflite

    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
    first = paths[0]
    if first.is_dir() or first.suffix == ".json":
        kind = "tfjs"
    else:
        try:
            with open(first, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise UserError(f"cannot read {first}: {e.strerror or e}") from None
        if head == HDF5_SIGNATURE:
            kind = "hdf5"
        elif head[4:8] == b"TFL3":
            kind = "tflite"
        else:
            raise UserError(f"{first} is neither Keras HDF5 weights, a TF.js model.json nor a TF-Lite flatbuffer")
    if kind != "tflite" and len(paths) > 1:
        raise UserError(f"several sources given, but {first} is {'a TF.js model' if kind == 'tfjs' else 'Keras HDF5'}: "
                        f"only a TF-Lite model split into pieces takes several files")
    if kind == "tfjs":
        return read_tfjs(first)
    if kind == "hdf5":
        return read_hdf5(first)
    return read_tflite(paths)


def imagenet_classes(num_classes: int) -> list[str] | None:
    """ImageNet wnids in the standard order (from timm), with TF-slim's 'background' first if kept."""
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo().label_names())
    if num_classes == len(wnids):
        return wnids
    if num_classes == len(wnids) + 1:
        return ["background", *wnids]
    return None  # a head for some other dataset: no names to give


def _split_overrides(items: list[str]) -> tuple[bool, dict, list[str]]:
    """(keep_background, model settings, config overrides for Hydra)."""
    from .cli import _parse_overrides

    keep_background = False
    model_opts: dict = {}
    config_overrides = []
    for item in items:
        (key, value), = _parse_overrides([item]).items()
        if key == "keep_background":
            if not isinstance(value, bool):
                raise UserError(f"keep_background={value} must be true or false")
            keep_background = value
        elif key.startswith("model."):
            name = key.removeprefix("model.")
            if name not in FREE_MODEL_KEYS:
                raise UserError(f"{key} is read from the weights file and cannot be set; settable: "
                                f"{', '.join('model.' + k for k in FREE_MODEL_KEYS)}")
            model_opts[name] = value
        elif key in ("data.num_classes", "data.normalization"):
            raise UserError(f"{key} is read from the weights file and cannot be set"
                            f"{' (keep_background=true gives 1001 classes)' if key == 'data.num_classes' else ''}")
        else:
            config_overrides.append(item)
    return keep_background, model_opts, config_overrides


def import_weights(sources: list[str], out: str, override_items: list[str] = ()) -> dict:
    """Read `sources`, write the checkpoint `out` atomically; returns a summary."""
    from .checkpoint import model_payload, save_checkpoint
    from .cli import compose_config
    from .complexity import measure_complexity
    from .data import EVAL_PRESETS
    from .model import ModelArgs
    from .weights import to_model

    keep_background, model_opts, config_overrides = _split_overrides(list(override_items))
    out_path = Path(out)
    paths = [Path(s) for s in sources]
    if out_path.is_dir():
        raise UserError(f"the output {out_path} is a directory: give a file name, e.g. {out_path / 'imported.pt'}")
    if any(out_path.resolve() == p.resolve() for p in paths):
        raise UserError(f"the output {out_path} is one of the sources: give another file name")

    src = read_source(paths)
    if "resolution" in model_opts:
        resolution, resolution_from = model_opts["resolution"], "override"
    elif src.resolution:
        resolution, resolution_from = src.resolution, src.details.get("resolution_from", "file")
    else:
        resolution, resolution_from = DEFAULT_RESOLUTION, "default (the file does not record it)"
    if not isinstance(resolution, int):
        raise UserError(f"model.resolution={resolution} must be an integer")
    model, args, info = to_model(src, resolution, padding=model_opts.get("padding", "tf_same"),
                                 keep_background=keep_background, dropout=model_opts.get("dropout", 0.0),
                                 bn_momentum=model_opts.get("bn_momentum", ModelArgs.bn_momentum))

    # The config a training run of this model would have had, so that eval and fine-tuning use it.
    inferred = {f"model.{k}": v for k, v in args.to_dict().items() if k != "num_classes"}
    inferred.update({"data.num_classes": args.num_classes, "data.normalization": "inception",
                     "data.eval_preset": src.eval_preset})
    user_keys = {item.partition("=")[0].lstrip("+") for item in config_overrides}
    overrides = [f"{k}={v}" for k, v in inferred.items() if k not in user_keys] + config_overrides
    cfg = compose_config(overrides)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        config = OmegaConf.to_container(job, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:  # an override whose interpolation cannot resolve
        raise UserError(f"the configuration does not resolve: {e}") from None
    if config["data"]["eval_preset"] not in EVAL_PRESETS:
        raise UserError(f"data.eval_preset={config['data']['eval_preset']} is unknown: use one of {', '.join(EVAL_PRESETS)}")
    if ModelArgs.from_config(config["model"]) != args:
        raise UserError(f"the overrides {' '.join(config_overrides)} change the model the file describes: "
                        f"drop the model-related ones")

    complexity = measure_complexity(model, args.resolution)
    classes = imagenet_classes(args.num_classes)
    record = {
        "format": src.format,
        "sources": [str(Path(s).resolve()) for s in src.sources],
        "resolution_from": resolution_from,
        "dropped_background": info["dropped_background"],
        "eval_preset": config["data"]["eval_preset"],
        **{k: v for k, v in src.details.items() if k != "resolution_from"},
    }
    save_checkpoint(out_path, model_payload(model, args, config, classes, complexity, **{"import": record}))
    return {"out": str(out_path), "args": args, "complexity": complexity, "classes": classes, **record}


def import_cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} SRC [SRC ...] OUT.pt [key=value ...]",
        description="Import Google's MobileNet v1 weights (Keras HDF5, TF.js layers model, TF-Lite float or 8-bit) "
                    "as a mobilenet-train checkpoint.",
        epilog="SRC: a Keras .h5 weights file, a TF.js model.json (or its directory), or a .tflite file; a TF-Lite "
               "model split into pieces takes each piece in order. Overrides: keep_background=true, "
               "model.resolution=N, model.padding=symmetric, model.dropout=P, and any config key to store "
               "(data.root=..., data.eval_preset=tf|keras|default).",
    )
    parser.add_argument("paths", nargs="+", metavar="SRC|OUT.pt|key=value",
                        help="the source file(s), then the output checkpoint; overrides anywhere")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # key=value items may come anywhere; everything else is a path, the last one the output.
    overrides = [a for a in ns.paths if "=" in a and not Path(a).exists()]
    paths = [a for a in ns.paths if a not in overrides]
    try:
        if len(paths) < 2:
            raise UserError("give at least one source and the output file: mobilenet-import SRC [SRC ...] OUT.pt")
        r = import_weights(paths[:-1], paths[-1], overrides)
    except UserError as e:
        fail(PROG, e)
    a = r["args"]
    bn = "BN folded into conv biases" if a.norm == "none" else f"BN (eps {a.bn_eps:g})"
    print(f"imported    {r['format']}: {', '.join(r['sources'])}")
    print(f"model       MobileNet v1 alpha={a.alpha} resolution={a.resolution} ({r['resolution_from']}), "
          f"{a.padding} padding, {a.activation}, {bn}: {r['complexity']['params'] / 1e6:.2f}M params, "
          f"{r['complexity']['mult_adds'] / 1e6:.1f}M mult-adds")
    dropped = ", background logit dropped" if r["dropped_background"] else ""
    names = "ImageNet wnids" if r["classes"] else "no class names"
    print(f"classes     {a.num_classes} ({names}{dropped})")
    print(f"eval        data.eval_preset={r['eval_preset']}, data.normalization=inception (x/127.5 - 1)")
    print(f"written     {r['out']}")


if __name__ == "__main__":
    import_cli(sys.argv[1:])
