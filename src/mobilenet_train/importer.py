"""`mobilenet-import SRC [SRC ...] OUT.pt [key=value ...]`: Google's MobileNet v1 weights as a checkpoint.

The result is a normal, self-describing toolkit checkpoint: `mobilenet-eval OUT.pt
data.root=...` evaluates it, and `+experiment=finetune model.init=OUT.pt` fine-tunes from it.
Width multiplier, input size, padding, class count and eval preprocessing come from the file.

Sources (recognised by content):
  Keras HDF5 weights          mobilenet_7_5_224_tf.h5 (keras.applications.MobileNet)
  TF.js layers model          model.json (or its directory), its weight shards beside it
  TF-Lite flatbuffer(s)       one .tflite, or the pieces of a split model in order
                              (mobilenet-import extractor.tflite head.tflite OUT.pt)
  TF-Lite SSD detector        Google's COCO detect.tflite (a TFLite_Detection_PostProcess op):
                              a task=detection checkpoint (detection/imported.py), its
                              post-processing settings in detection.*, its anchors checked
  timm state dict             mobilenetv1_100 / mobilenetv1_125: model.safetensors, pytorch_model.bin
                              (weights_only=True), or their Hub folder with config.json
Overrides:
  keep_background=true        keep TF-slim's background logit (1001 classes, 'background' first)
  model.resolution=N          input side, where the file does not record it (Keras HDF5 weights
                              outside the keras.applications file names; default 224)
  model.padding=symmetric     pad symmetrically instead of TensorFlow's SAME (to measure the cost; timm's
                              weights are symmetric already)
  model.dropout, model.bn_momentum   used when fine-tuning
  any other config key        stored in the checkpoint's config, e.g. data.root=/datasets/imagenet,
                              data.eval_preset=default
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import UserError

log = logging.getLogger("mobilenet_train")

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Model settings the user may choose; the rest describe the weights and are read from the file.
FREE_MODEL_KEYS = ("resolution", "padding", "dropout", "bn_momentum")
DEFAULT_RESOLUTION = 224  # keras.applications' default input size
TORCH_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


KIND_NAMES = {"tfjs": "a TF.js model", "hdf5": "Keras HDF5", "timm": "a timm state dict"}


def source_kind(first: Path) -> str:
    """tfjs | hdf5 | tflite | timm, from the path and the file's first bytes."""
    from .weights.timm_model import WEIGHT_FILES, is_safetensors

    if first.is_dir():
        return "timm" if any((first / name).is_file() for name in WEIGHT_FILES) else "tfjs"
    if first.suffix == ".json":
        return "tfjs"
    try:
        with open(first, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise UserError(f"cannot read {first}: {e.strerror or e}") from None
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head[4:8] == b"TFL3":
        return "tflite"
    # safetensors, a torch zip, or a legacy torch pickle (protocol 2+)
    if first.suffix in TORCH_SUFFIXES or is_safetensors(first) or head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "timm"
    raise UserError(f"{first} is neither Keras HDF5 weights, a TF.js model.json, a TF-Lite flatbuffer nor a timm "
                    f"state dict (.safetensors, pytorch_model.bin)")


def read_source(paths: list[Path]):
    """Recognise the format of `paths` and read them into `SourceWeights`."""
    from .weights.keras import read_hdf5, read_tfjs
    from .weights.tflite_model import read_tflite
    from .weights.timm_model import read_timm

    for path in paths:
        if not path.exists():
            raise UserError(f"{path} does not exist")
    first = paths[0]
    kind = source_kind(first)
    if kind != "tflite" and len(paths) > 1:
        raise UserError(f"several sources given, but {first} is {KIND_NAMES[kind]}: "
                        f"only a TF-Lite model split into pieces takes several files")
    if kind == "tfjs":
        return read_tfjs(first)
    if kind == "hdf5":
        return read_hdf5(first)
    if kind == "timm":
        return read_timm(first)
    if is_tflite_detector(first):
        if len(paths) > 1:
            raise UserError(f"{first} is a TF-Lite detector, which comes in one file: give it alone")
        from .weights.tflite_detect import read_detect_tflite

        return read_detect_tflite(first)
    return read_tflite(paths)


def is_tflite_detector(path: Path) -> bool:
    """A TF-Lite file with TF's detection post-processing op (Google's detect.tflite)."""
    from .weights.tflite_detect import has_postprocess
    from .weights.tflite_model import read_graph

    return has_postprocess(read_graph(path)[0])


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
    """(keep_background, model settings, config overrides), each value checked by the schema."""
    from .config import parse_options, parse_overrides
    from .config.compose import check_override_value
    from .config.schema import ImportOptions, TrainConfig, check_value, find_field

    opts, rest = parse_options(ImportOptions, list(items), others=True)
    model_opts: dict = {}
    config_overrides = []
    for o in parse_overrides(rest):
        key = o.key_or_group
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if name not in FREE_MODEL_KEYS:
                raise UserError(f"{key} is read from the weights file and cannot be set; settable: "
                                f"{', '.join('model.' + k for k in FREE_MODEL_KEYS)}")
            f = find_field(TrainConfig, key)
            check_override_value(key, o.value(), f)
            check_value(key, o.value(), f)
            model_opts[name] = o.value()
            continue
        if key in ("data.num_classes", "data.normalization"):
            raise UserError(f"{key} is read from the weights file and cannot be set"
                            f"{' (keep_background=true gives 1001 classes)' if key == 'data.num_classes' else ''}")
        config_overrides.append(o.input_line)
    return opts.keep_background, model_opts, config_overrides


def build_import(paths: list[Path], model_opts: dict, keep_background: bool, src=None):
    """Read `paths` (unless already read as `src`) into the toolkit's classifier: (source, model, args, data.*
    settings, resolution_from, info)."""
    from .model import ModelArgs
    from .weights import to_model

    src = src if src is not None else read_source(paths)
    if "resolution" in model_opts:
        resolution, resolution_from = model_opts["resolution"], "override"
    elif src.resolution:
        resolution, resolution_from = src.resolution, src.details.get("resolution_from", "file")
    else:
        resolution, resolution_from = DEFAULT_RESOLUTION, "default (the file does not record it)"
    model, args, info = to_model(src, resolution, padding=model_opts.get("padding"),
                                 keep_background=keep_background, dropout=model_opts.get("dropout", 0.0),
                                 bn_momentum=model_opts.get("bn_momentum", ModelArgs.bn_momentum))
    data = {"num_classes": args.num_classes, "eval_preset": src.eval_preset, **src.eval_data}
    return src, model, args, data, resolution_from, info


def import_weights(sources: list[str], out: str, override_items: list[str] = ()) -> dict:
    """Read `sources`, write the checkpoint `out` atomically; returns a summary."""
    from .checkpoint import model_payload, save_checkpoint
    from .complexity import measure_complexity
    from .config import compose, resolved
    from .model import ModelArgs

    keep_background, model_opts, config_overrides = _split_overrides(list(override_items))
    out_path = Path(out)
    paths = [Path(s) for s in sources]
    if out_path.is_dir():
        raise UserError(f"the output {out_path} is a directory: give a file name, e.g. {out_path / 'imported.pt'}")
    if any(out_path.resolve() == p.resolve() for p in paths):
        raise UserError(f"the output {out_path} is one of the sources: give another file name")

    src = read_source(paths)
    if not hasattr(src, "fc_weight"):  # a DetectorSource
        return import_detector(src, out_path, keep_background, model_opts, config_overrides)
    src, model, args, data, resolution_from, info = build_import(paths, model_opts, keep_background, src)
    # The config a training run of this model would have had, so that eval and fine-tuning use it.
    inferred = {f"model.{k}": v for k, v in args.to_dict().items() if k != "num_classes"}
    inferred.update({f"data.{k}": v for k, v in data.items()})
    user_keys = {item.partition("=")[0].lstrip("+") for item in config_overrides}
    overrides = [f"{k}={v}" for k, v in inferred.items() if k not in user_keys] + config_overrides
    config = resolved(compose(overrides))
    if ModelArgs.from_config(config["model"]) != args:
        raise UserError(f"the overrides {' '.join(config_overrides)} change the model the file describes: "
                        f"drop the model-related ones")

    complexity = measure_complexity(model, args.resolution)
    classes = imagenet_classes(args.num_classes)
    eval_keys = ("eval_preset", "normalization", "eval_crop_fraction", "interpolation")
    record = {
        "format": src.format,
        "sources": [str(Path(s).resolve()) for s in src.sources],
        "resolution_from": resolution_from,
        "dropped_background": info["dropped_background"],
        **{k: config["data"][k] for k in eval_keys},
        **{k: v for k, v in src.details.items() if k != "resolution_from"},
    }
    save_checkpoint(out_path, model_payload(model, args, config, classes, complexity, **{"import": record}))
    return {"out": str(out_path), "args": args, "complexity": complexity, "classes": classes, **record}



def import_detector(src, out_path: Path, keep_background: bool, model_opts: dict, config_overrides: list[str]) -> dict:
    """A TF-Lite SSD as a task=detection checkpoint: weights, COCO categories by id, post-processing settings."""
    from omegaconf import OmegaConf

    from .checkpoint import model_payload, save_checkpoint
    from .config import compose, resolved
    from .detection.imported import coco_categories, config_overrides_of, postprocess_record, to_detector
    from .detection.model import DetArgs
    from .detection.train import detector_complexity

    if keep_background or model_opts:
        given = ["keep_background=true"] * keep_background + [f"model.{k}" for k in model_opts]
        raise UserError(f"{', '.join(given)}: a detector's model is read from {src.sources[0]} as it is; drop it")
    if src.input.get("scale") is not None and (abs(src.input["scale"] - 1 / 128) > 1e-6 or
                                               src.input["zero_point"] != 128):
        raise UserError(f"{src.sources[0]}: the input quantization (scale {src.input['scale']}, zero point "
                        f"{src.input['zero_point']}) is not (x - 128)/128 (data.normalization=uint8_128)")
    model, args, anchor_check = to_detector(src)
    categories = coco_categories(args.num_classes)
    user_keys = {item.partition("=")[0].lstrip("+") for item in config_overrides}
    overrides = [o for o in config_overrides_of(args) if o.partition("=")[0] not in user_keys] + config_overrides
    config = resolved(compose(overrides))
    if DetArgs.from_config(OmegaConf.create(config)) != args:
        raise UserError(f"the overrides {' '.join(config_overrides)} change the detector the file describes: "
                        f"drop the model- and detection-related ones")
    complexity = detector_complexity(model, args.resolution)
    record = {"format": "tflite-detect", "sources": [str(Path(s).resolve()) for s in src.sources],
              "resolution_from": "input tensor", "postprocess": postprocess_record(src), "anchors": anchor_check,
              "input": src.input, "score_fn": src.score_fn, **src.details}
    classes, category_ids = categories if categories else (None, None)
    save_checkpoint(out_path, model_payload(model, args, config, classes, complexity, category_ids=category_ids,
                                            **{"import": record}))
    return {"out": str(out_path), "args": args, "complexity": complexity, "classes": classes,
            "category_ids": category_ids, "task": "detection", **record}


def load_weights(path: str | Path, what: str) -> dict:
    """What model.init= and distill.teacher= read: a toolkit checkpoint, or timm weights (a .safetensors
    file or a Hub folder, e.g. from mobilenet-export --format safetensors) imported in memory."""
    from .checkpoint import load_checkpoint
    from .weights.timm_model import is_safetensors

    p = Path(str(path)).expanduser()
    if not (p.is_dir() or p.suffix == ".safetensors" or is_safetensors(p)):
        return load_checkpoint(p)
    if not p.exists():
        raise UserError(f"{what}={path} does not exist")
    try:
        src, model, args, data, _, info = build_import([p], {}, keep_background=False)
    except UserError as e:
        raise UserError(f"{what}={path}: {e}") from None
    record = {"format": src.format, "sources": [str(Path(s).resolve()) for s in src.sources], **src.details}
    return {"model": model.state_dict(), "model_args": args.to_dict(), "classes": imagenet_classes(args.num_classes),
            "config": {"model": args.to_dict(), "data": data}, "metrics": {}, "import": record}


if __name__ == "__main__":  # python -m mobilenet_train.importer: the same as mobilenet-import
    from .cli.importer import main

    main()
