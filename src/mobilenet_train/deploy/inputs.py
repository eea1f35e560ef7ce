"""What the exported model is fed: the images for calibration, verification and `eval=`, and the
preprocessing recorded in the file.

Every image goes through mobilenet-eval's pipeline: the same ImageFiles dataset (hidden files
skipped, empty class directories kept as classes), the same eval transform with draft decoding,
the same normalisation (DevicePreprocess), all from the data config of the checkpoint with the
user's `data.*` overrides applied. This is the only module of the package that uses the data module.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from ..config import apply_overrides, check, typed_config
from ..config.compose import first_line
from ..config.schema import DataConfig
from ..data import (
    NORMALIZATION,
    DevicePreprocess,
    ImageFiles,
    build_loader,
    eval_resize_size,
    eval_transform,
    is_image_file,
    resolve_root,
)
from ..errors import UserError


def data_config(ckpt: dict, items: list[str] = ()) -> DictConfig:
    """The checkpoint's config.data with `data.*` overrides (["data.eval_preset=tf"], ["data=imagenet"])
    applied as mobilenet-eval applies them: typed and checked by the schema."""
    bad = [i for i in items if not i.startswith("data")]
    if bad:
        raise UserError(f"'{bad[0]}' is not a data.* override of the checkpoint's config")
    return apply_overrides(typed_config(ckpt["config"]), list(items)).data


def checked(data) -> DictConfig:
    """`data` (a data config, possibly partial) on the schema: missing keys get their defaults, a bad
    value is refused in one line now."""
    try:
        data = OmegaConf.merge(OmegaConf.structured(DataConfig), data)
    except OmegaConfBaseException as e:
        raise UserError(f"the data config does not fit the schema: {first_line(e)}") from None
    check(DataConfig, OmegaConf.to_container(data), "data.")
    return data


def _data(ckpt: dict, data) -> DictConfig:
    return data_config(ckpt) if data is None else checked(data)


def preprocessing(ckpt: dict, data=None) -> dict:
    """What a deployment must do to an RGB image before the model: the eval preset of `data`."""
    data, args = _data(ckpt, data), ckpt["model_args"]
    resolution = int(args["resolution"])
    preset, fraction = data.eval_preset, float(data.eval_crop_fraction)
    interpolation = data.interpolation
    steps = {
        "default": f"resize the shorter side to {eval_resize_size(resolution, fraction)} ({interpolation}, "
                   f"antialiased), centre crop {resolution}x{resolution}",
        "tf": f"keep the central {fraction:g} of each side, resize to {resolution}x{resolution} "
              "(bilinear, antialiased)",
        "keras": f"resize the whole image to {resolution}x{resolution} (bilinear, antialiased)",
    }
    mean, std = NORMALIZATION[data.normalization]
    classes = ckpt.get("classes")
    return {
        "input_size": resolution,
        "input_layout": "NCHW float32, RGB",
        "eval_preset": preset,
        "resize": steps.get(preset, preset),
        "crop_fraction": fraction,
        "interpolation": interpolation,
        "normalization": data.normalization,
        "normalize": "x / 127.5 - 1" if data.normalization == "inception" else "(x / 255 - mean) / std",
        "mean": list(mean),
        "std": list(std),
        "num_classes": int(args["num_classes"]),
        "classes": list(classes) if classes else None,
        "model_args": dict(args),
    }


def normalize(images: torch.Tensor, normalization: str) -> torch.Tensor:
    """uint8 NCHW -> the normalised float batch the model takes, on the CPU, as mobilenet-eval does it."""
    return DevicePreprocess(normalization, torch.device("cpu"), channels_last=False)(images)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if is_image_file(str(p)) and p.is_file())


def spread(items: list, n: int) -> list:
    """n items evenly spaced over the list (every class of a sorted ImageFolder, not the first few)."""
    if n >= len(items):
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def load_images(paths: list[Path], ckpt: dict, data=None) -> torch.Tensor:
    """Images -> the normalised float NCHW batch the model takes, as mobilenet-eval reads them."""
    data = _data(ckpt, data)
    transform = eval_transform(data, int(ckpt["model_args"]["resolution"]))
    batch = []
    for path in paths:
        try:
            with Image.open(path) as im:  # freshly opened: the transform decodes with draft
                batch.append(transform(im))
        except OSError as e:
            raise UserError(f"cannot read image {path}: {e}") from None
    return normalize(torch.stack(batch), data.normalization)


def generated_images(n: int, ckpt: dict, seed: int = 0, data=None) -> torch.Tensor:
    """Smooth random colour images (noise upsampled): stand-ins when the checkpoint has no data."""
    res = int(ckpt["model_args"]["resolution"])
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g) * 255
    images = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=False)
    return normalize(images.round(), _data(ckpt, data).normalization)


def checkpoint_images(ckpt: dict, split: str = "val", data=None) -> list[Path]:
    """Image files of the checkpoint's own dataset (a split of data.root, or `shapes`, `shapes_attr` regenerated);
    [] if none."""
    data = _data(ckpt, data)
    if data.name == "fake" or (data.name not in ("shapes", "shapes_attr") and not data.root):
        return []
    try:
        root = resolve_root(data)
    except UserError:
        return []
    for name in (data.get(f"{split}_split", split), data.val_split):
        if (root / name).is_dir():
            return image_files(root / name)
    return []


def folder_images(folder: str, what: str) -> list[Path]:
    """The image files of a `what=DIR` option; refused in one line when there are none."""
    if not Path(folder).is_dir():
        raise UserError(f"{what}={folder} is not a directory of images")
    files = image_files(Path(folder))
    if not files:
        raise UserError(f"{what}={folder} holds no images")
    return files


def sample_inputs(ckpt: dict, n: int, folder: str | None = None, split: str = "val",
                  data=None) -> tuple[torch.Tensor, str]:
    """n images (folder, else the checkpoint's data, else generated) and where they came from."""
    if folder is not None:
        files = folder_images(folder, "calibration")
        return load_images(spread(files, n), ckpt, data), f"{min(n, len(files))} images from {folder}"
    files = checkpoint_images(ckpt, split, data)
    if files:
        return load_images(spread(files, n), ckpt, data), f"{min(n, len(files))} images of the checkpoint's data"
    return generated_images(n, ckpt, data=data), f"{n} generated images (the checkpoint's data is not here)"


def labelled_folder(folder: str, ckpt: dict, data=None) -> ImageFiles:
    """`eval=DIR` as mobilenet-eval reads a split: DIR/<class>/<image> (or DIR/val/<class>/<image>),
    checked here, before anything is converted."""
    data, root = _data(ckpt, data), Path(folder)
    if not root.is_dir():
        raise UserError(f"eval={folder} is not a directory")
    val = root / data.val_split
    if val.is_dir() and not any(is_image_file(str(p)) for p in root.iterdir() if p.is_file()):
        root = val
    try:
        dataset = ImageFiles(str(root), eval_transform(data, int(ckpt["model_args"]["resolution"])))
    except FileNotFoundError as e:
        raise UserError(f"eval={folder} is not a labelled image folder (ROOT/<class>/<image>): {e}") from None
    if not len(dataset):
        raise UserError(f"eval={folder} holds no images (class directories: {len(dataset.classes)})")
    classes = ckpt.get("classes")
    if classes and list(classes) != list(dataset.classes):
        raise UserError(f"eval={folder} has classes {dataset.classes[:3]}... that differ from the checkpoint's "
                        f"{list(classes)[:3]}...: give the dataset the model was trained on")
    return dataset


def eval_batches(dataset: ImageFiles, data: DictConfig, batch: int):
    """(normalised float images, targets) of a labelled folder, through mobilenet-eval's loader."""
    loader = build_loader(dataset, batch, train=False, num_workers=0, seed=0,
                          max_bad_share=float(data.max_bad_share))
    for images, targets in loader:
        yield normalize(images, data.normalization), targets
