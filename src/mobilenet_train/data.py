"""Datasets, transforms and loaders.

Workers decode and augment on the CPU and hand over uint8 batches (4x less to copy than
float); normalisation, the float cast and channels_last happen on the device
(`DevicePreprocess`). Datasets: `imagenet` (ImageFolder layout), `imagenet_shards`
(WebDataset tar shards written by `mobilenet-data pack`, see shards.py), `shapes` (the
embedded dataset, generated on first use) and `fake` (random tensors, for benchmarks).

The decode path (`data.decode=cpu`): the crop is chosen on the image size read from the
header, the JPEG decoder is asked for the smallest 1/2, 1/4 or 1/8 scale that still covers
the crop at the output size (`Image.draft`, DCT-domain downscaling), and one PIL resize with
a source box crops and resizes (train crops that allow no downscale are decoded by
torchvision's libjpeg-turbo binding and resized as uint8 tensors, which is faster than PIL). Batches are stacked straight into shared memory as NHWC,
i.e. already channels_last. `data.decode=gpu` moves the JPEG decode and the augmentation
to the GPU (`GpuDecode`).

Bad images (truncated, unreadable) are replaced by another sample, logged once and counted
(`ImageLoader.bad_images`); an epoch stops when more than `data.max_bad_share` of it fails.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torchvision import datasets, transforms
from torchvision.transforms import v2

from . import shapes
from .errors import UserError

log = logging.getLogger("mobilenet_train")

LAYOUT_HINT = "expected ImageFolder layout ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, e.g. ROOT/train/n01440764/x.JPEG"
NORMALIZATION = {
    # TF-slim / Keras MobileNet: x / 127.5 - 1
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
INTERPOLATION = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}
PIL_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
DECODE_MODES = ("cpu", "gpu")
DEFAULT_MAX_BAD_SHARE = 0.001
# A sample that fails is replaced by another; after this many failures in a row, a black image.
REPLACEMENT_TRIES = 8


# ----------------------------------------------------------------------------- transforms


Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the original image


def draft_scale(img: Image.Image, box: Box, size: tuple[int, int]) -> int:
    """The JPEG downscale (1, 2, 4 or 8) `Image.draft` picks so that `box` still covers `size`."""
    left, top, right, bottom = box
    width, height = img.size
    request = (math.ceil(width * size[0] / max(right - left, 1e-6)), math.ceil(height * size[1] / max(bottom - top, 1e-6)))
    ratio = min(width // max(request[0], 1), height // max(request[1], 1))
    return next((s for s in (8, 4, 2) if ratio >= s), 1)


def decode_crop(img: Image.Image, box: Box, size: tuple[int, int], resample, draft: bool = True) -> Image.Image:
    """The `box` of `img` resized to `size` (w, h), as an RGB image; crop before resize.

    `img` should be freshly opened (not decoded): for a JPEG, `draft` then asks libjpeg for
    the largest 1/2, 1/4 or 1/8 downscale at which the box still covers `size`, so the
    decoder does the coarse downscaling in the DCT domain and only the rest is resampled.
    """
    left, top, right, bottom = box
    if draft and img.format == "JPEG" and not getattr(img, "decoderconfig", ()) and img.mode in ("RGB", "L", "CMYK"):
        width, height = img.size
        request = (math.ceil(width * size[0] / max(right - left, 1e-6)), math.ceil(height * size[1] / max(bottom - top, 1e-6)))
        drafted = img.draft(img.mode, request)
        if drafted is not None:
            scale = width / drafted[1][2]  # 1, 2, 4 or 8: original pixels per decoded pixel
            left, top, right, bottom = left / scale, top / scale, right / scale, bottom / scale
    if img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")  # palette / alpha / 16-bit: resampling needs a plain mode
    width, height = img.size
    box = (max(left, 0.0), max(top, 0.0), min(right, width), min(bottom, height))
    out = img.resize(size, resample, box=box)
    return out if out.mode == "RGB" else out.convert("RGB")  # greyscale, CMYK -> RGB after the resize


# torchvision 0.29 deprecates its image decoders (for TorchCodec) with a warning on every call.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def tensor_decode_crop(img: Image.Image, box: Box, size: tuple[int, int]) -> torch.Tensor | None:
    """The crop via torchvision's libjpeg-turbo decode and uint8 antialiased resize (about 25%
    faster than PIL's when no DCT downscale applies), or None where PIL must do it: not a plain
    RGB/greyscale JPEG, or no end-of-image marker (a truncated file: PIL reports it, libjpeg would
    fill it with grey)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if img.format != "JPEG" or img.mode not in ("RGB", "L") or getattr(img, "decoderconfig", ()) or img.fp is None:
        return None
    img.fp.seek(0)
    data = img.fp.read()
    if not data.rstrip(b"\0\r\n ")[-2:] == b"\xff\xd9":
        return None
    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    left, top, right, bottom = (int(v) for v in box)
    return v2.functional.resized_crop(image, top, left, bottom - top, right - left, [size[1], size[0]], antialias=True)


def to_chw_uint8(img: Image.Image) -> torch.Tensor:
    """uint8 CHW view of an HWC copy: `collate` stacks the HWC memory, giving NHWC batches."""
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class FastRandomResizedCrop:
    """Train transform: RandomResizedCrop + horizontal flip on an opened, undecoded PIL image.

    The crop is drawn as torchvision's RandomResizedCrop draws it (`get_params`, the same
    torch RNG calls), on the size from the image header. Where a DCT downscale applies, PIL
    decodes with draft (`decode_crop`); elsewhere torchvision's decoder (`tensor_decode_crop`).
    """

    def __init__(self, resolution: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 interpolation: str = "bilinear", draft: bool = True):
        self.size = (resolution, resolution)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), float(hflip)
        self.resample, self.draft = PIL_RESAMPLE[interpolation], draft

    def box(self, img) -> Box:
        top, left, h, w = transforms.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        return (left, top, left + w, top + h)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        box = self.box(img)
        if self.resample == Image.Resampling.BILINEAR and (not self.draft or draft_scale(img, box, self.size) == 1):
            out = tensor_decode_crop(img, box, self.size)
            if out is not None:
                return out.flip(-1) if self.hflip > 0 and torch.rand(1).item() < self.hflip else out
        out = decode_crop(img, box, self.size, self.resample, self.draft)
        if self.hflip > 0 and torch.rand(1).item() < self.hflip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_chw_uint8(out)


def eval_resize_size(resolution: int, crop_fraction: float) -> int:
    """Shorter side before the centre crop: 224 / 0.875 = 256."""
    return int(math.floor(resolution / crop_fraction))


class CentralFractionCrop(torch.nn.Module):
    """tf.image.central_crop: keep the central `fraction` of each side, whatever the aspect.

    Sides are rounded to whole pixels and centred as torchvision's center_crop does; this
    reproduces the reference accuracies of Google's models (../shared) to 0.2 points, where
    TensorFlow's truncated offsets (one pixel off for some images) land 0.3-0.4 points away.
    """

    def __init__(self, fraction: float):
        super().__init__()
        self.fraction = fraction

    def forward(self, image):
        height, width = v2.functional.get_size(image)
        return v2.functional.center_crop(image, [round(height * self.fraction), round(width * self.fraction)])


# Eval preprocessing, `data.eval_preset`:
#   default  resize the shorter side to resolution / eval_crop_fraction, centre crop (aspect kept)
#   tf       TF-slim's eval: central eval_crop_fraction (87.5%) of the whole image, bilinear
#            resize to resolution x resolution (aspect not kept); what Google's models were scored with
#   keras    framed as keras.utils.image_dataset_from_directory(image_size=...) loads images: the
#            whole image bilinearly resized to resolution x resolution, no crop
# tf and keras resample with PIL's antialiased bilinear filter, whatever data.interpolation says.
EVAL_PRESETS = ("default", "tf", "keras")


class FastEvalCrop:
    """Eval transform: the preset's framing as one source box, resized with draft decoding.

    Without draft (non-JPEG images, or crops too small for it) the pixels equal resize-then-crop:
    PIL resamples a box with the same scale and sample positions as the whole image.
    """

    def __init__(self, resolution: int, preset: str = "default", fraction: float = 0.875,
                 interpolation: str = "bilinear", draft: bool = True):
        if preset not in EVAL_PRESETS:
            raise UserError(f"data.eval_preset={preset} is unknown: use one of {', '.join(EVAL_PRESETS)}")
        self.size = (resolution, resolution)
        self.preset, self.fraction, self.draft = preset, fraction, draft
        self.resample = PIL_RESAMPLE[interpolation] if preset == "default" else Image.Resampling.BILINEAR

    def box(self, img) -> Box:
        width, height = img.size if isinstance(img, Image.Image) else (img.shape[-1], img.shape[-2])
        res = self.size[0]
        if self.preset == "default":
            # torchvision Resize(shorter side) then CenterCrop, in original pixels.
            short, long = min(width, height), max(width, height)
            new_short = eval_resize_size(res, self.fraction)
            new_long = int(new_short * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
            top, left = int(round((new_h - res) / 2.0)), int(round((new_w - res) / 2.0))
            sx, sy = width / new_w, height / new_h
            return (left * sx, top * sy, (left + res) * sx, (top + res) * sy)
        if self.preset == "tf":
            h, w = round(height * self.fraction), round(width * self.fraction)
            top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))
            return (left, top, left + w, top + h)
        return (0, 0, width, height)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return to_chw_uint8(decode_crop(img, self.box(img), self.size, self.resample, self.draft))


def train_transform(data_cfg, resolution: int) -> FastRandomResizedCrop:
    return FastRandomResizedCrop(resolution, scale=(float(data_cfg.min_crop_area), 1.0), ratio=tuple(data_cfg.crop_ratio),
                                 hflip=float(data_cfg.hflip), interpolation=_interpolation_name(data_cfg),
                                 draft=bool(data_cfg.get("jpeg_draft", True)))


def eval_transform(data_cfg, resolution: int) -> FastEvalCrop:
    return FastEvalCrop(resolution, data_cfg.get("eval_preset", "default"), float(data_cfg.eval_crop_fraction),
                        _interpolation_name(data_cfg), draft=bool(data_cfg.get("jpeg_draft", True)))


def _interpolation_name(data_cfg) -> str:
    _interpolation(data_cfg)
    return str(data_cfg.interpolation)


def _interpolation(data_cfg):
    try:
        return INTERPOLATION[data_cfg.interpolation]
    except KeyError:
        raise UserError(f"data.interpolation={data_cfg.interpolation} is unknown: use bilinear or bicubic") from None


class DevicePreprocess:
    """uint8 NCHW batch -> normalised float on the device, channels_last if asked."""

    def __init__(self, normalization: str, device: torch.device, channels_last: bool):
        if normalization not in NORMALIZATION:
            raise UserError(f"data.normalization={normalization} is unknown: use one of {', '.join(NORMALIZATION)}")
        mean, std = NORMALIZATION[normalization]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0)
        self.device = device
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (x.float() - self.mean) * self.inv_std


# ----------------------------------------------------------------------------- GPU decode


class GpuDecode:
    """`data.decode=gpu`: a batch of encoded JPEGs -> uint8 NCHW on the GPU.

    Workers only read file bytes; nvJPEG decodes the whole batch in one call
    (`torchvision.io.decode_jpeg(device='cuda')`), then each image is cropped and resized on
    the GPU with the same crop geometry as the CPU path (`box`). Images nvJPEG cannot decode
    (PNG named .JPEG, CMYK) go through the CPU decoder; unreadable ones are replaced by another
    image of the batch and reported as bad. Not exercised by the test suite (no GPU there):
    keep it this small.
    """

    def __init__(self, transform, device: torch.device):
        self.transform, self.device = transform, device
        self.size = list(transform.size[::-1])

    def _decode_one(self, data: torch.Tensor) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return decode_image(data, mode=ImageReadMode.RGB).to(self.device)

    def __call__(self, encoded: list[torch.Tensor], paths: list[str]) -> tuple[torch.Tensor, list]:
        from torchvision.io import ImageReadMode, decode_jpeg

        bad, images = [], []
        try:
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one non-JPEG or broken file fails the batch call: decode one by one
            for data, path in zip(encoded, paths):
                try:
                    images.append(self._decode_one(data))
                except RuntimeError as e:
                    images.append(None)
                    bad.append((path, f"{type(e).__name__}: {e}".splitlines()[0]))
        good = [im for im in images if im is not None]
        if not good:
            raise UserError(f"no image of a batch could be decoded (e.g. {bad[0][0]}: {bad[0][1]})")
        out = torch.empty(len(images), 3, *self.size, dtype=torch.uint8, device=self.device)
        flip = self.transform.hflip if isinstance(self.transform, FastRandomResizedCrop) else 0.0
        for i, img in enumerate(images):
            img = img if img is not None else good[i % len(good)]
            left, top, right, bottom = self.transform.box(img)
            crop = v2.functional.resized_crop(img, int(top), int(left), max(int(bottom - top), 1), max(int(right - left), 1),
                                              self.size, antialias=True)
            out[i] = crop.flip(-1) if flip > 0 and torch.rand(1).item() < flip else crop
        return out.contiguous(memory_format=torch.channels_last), bad


# ----------------------------------------------------------------------------- samples and batches


class Sample(tuple):
    """(image, target) from a dataset, carrying the (path, reason) of images it replaced."""

    bad: tuple = ()
    path: str = ""

    def __new__(cls, image, target, bad=()):
        self = super().__new__(cls, (image, target))
        self.bad = tuple(bad)
        return self


class Batch:
    """A collated batch: unpacks as (images, targets); `bad` lists the replaced images.

    Images are uint8 NCHW views of NHWC memory (channels_last), or for `data.decode=gpu` a
    list of encoded files (`paths` name them for error reports).
    """

    def __init__(self, images, targets: torch.Tensor, bad=(), paths=()):
        self.images, self.targets, self.bad, self.paths = images, targets, list(bad), list(paths)

    def __iter__(self):
        return iter((self.images, self.targets))

    def pin_memory(self, device=None):
        if isinstance(self.images, torch.Tensor):
            self.images = self.images.pin_memory()
        self.targets = self.targets.pin_memory()
        return self


def collate(samples: list) -> Batch:
    """Stack uint8 images straight into (worker shared) memory as NHWC: one copy, channels_last."""
    targets = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
    bad = [b for s in samples for b in getattr(s, "bad", ())]
    first = samples[0][0]
    if first.dim() == 1:  # encoded files for data.decode=gpu
        return Batch([s[0] for s in samples], targets, bad, [getattr(s, "path", "") for s in samples])
    hwc = [s[0].permute(1, 2, 0) for s in samples]
    out = None
    if torch.utils.data.get_worker_info() is not None:
        # In a worker, stack into shared memory: the main process gets it without a copy.
        numel = sum(x.numel() for x in hwc)
        storage = hwc[0]._typed_storage()._new_shared(numel, device=hwc[0].device)
        out = hwc[0].new(storage).resize_(len(hwc), *hwc[0].shape)
    return Batch(torch.stack(hwc, 0, out=out).permute(0, 3, 1, 2), targets, bad)


class EncodedSample(Sample):
    """An encoded file (1-D uint8) for data.decode=gpu."""


def read_encoded(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def describe_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def blank_like(transform) -> torch.Tensor:
    """What a sample becomes when even its replacements fail (the bad-share check then stops the epoch)."""
    w, h = getattr(transform, "size", (32, 32))
    return torch.zeros(3, h, w, dtype=torch.uint8)


# ----------------------------------------------------------------------------- datasets


class FakeImages(Dataset):
    """Deterministic random uint8 images: benchmarks without decode or disk."""

    def __init__(self, size: int, num_classes: int, resolution: int, seed: int = 0):
        self.size, self.num_classes, self.resolution, self.seed = size, num_classes, resolution, seed
        self.classes = [f"class_{i:04d}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = torch.randint(0, 256, (3, self.resolution, self.resolution), dtype=torch.uint8, generator=g)
        return image, index % self.num_classes


def is_image_file(path: str) -> bool:
    """Image extensions only; hidden files (.DS_Store, ._x.JPEG from macOS) are not images."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(datasets.folder.IMG_EXTENSIONS)


class ImageFiles(datasets.ImageFolder):
    """ImageFolder that decodes with `decode_crop`, skips hidden entries, keeps empty class
    directories as classes, and replaces images that fail to load (see module docstring)."""

    def __init__(self, root: str, transform, encoded: bool = False):
        super().__init__(root, transform=transform, is_valid_file=is_image_file, allow_empty=True)
        self.encoded = encoded

    def find_classes(self, directory):
        classes = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class directories in {directory}")
        return classes, {c: i for i, c in enumerate(classes)}

    def load(self, index: int):
        path, target = self.samples[index]
        if self.encoded:
            return read_encoded(path), target
        with Image.open(path) as img:
            return self.transform(img), target

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> Sample:
        return load_with_replacement(self, index)


def load_with_replacement(dataset, index: int) -> Sample:
    """dataset.load(index), or when that fails the next sample that loads; the failures ride along."""
    bad = []
    n = len(dataset)
    for attempt in range(REPLACEMENT_TRIES):
        try:
            image, target = dataset.load(index)
            sample = (EncodedSample if dataset.encoded else Sample)(image, target, bad)
            sample.path = dataset.describe(index)
            return sample
        except Exception as e:  # noqa: BLE001 - any decode failure: replace the sample
            bad.append((dataset.describe(index), describe_error(e)))
            index = (index * 7919 + 104729 + attempt) % n  # another sample, the same in every run
    blank = torch.zeros(0, dtype=torch.uint8) if dataset.encoded else blank_like(dataset.transform)
    return (EncodedSample if dataset.encoded else Sample)(blank, 0, bad)


def resolve_root(data_cfg) -> Path:
    """The dataset directory; for `shapes`, generated on first use."""
    if data_cfg.name == "shapes":
        gen = data_cfg.generate
        root = Path(data_cfg.root).expanduser() if data_cfg.root else shapes.default_root(
            gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
        return shapes.generate(root, gen.seed, gen.image_size, gen.train_per_class, gen.val_per_class)
    if not data_cfg.root:
        what = "SHARDS (written by mobilenet-data pack)" if is_shards(data_cfg) else f"/path/to/{data_cfg.name}"
        raise UserError(f"data.root is not set: pass data.root={what} ({LAYOUT_HINT if not is_shards(data_cfg) else 'a directory with index.json'})")
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={root} does not exist or is not a directory ({LAYOUT_HINT})")
    return root


def is_shards(data_cfg) -> bool:
    return str(data_cfg.get("format", "folder")) == "shards"


def split_dir(root: Path, split: str) -> Path:
    path = root / split
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))[:5]
        held = f"it holds: {', '.join(found)}" if found else "it holds no directories"
        raise UserError(f"data.root={root} has no '{split}/' directory ({held}); {LAYOUT_HINT}")
    return path


def image_folder(root: Path, split: str, transform, encoded: bool = False) -> ImageFiles:
    path = split_dir(root, split)
    try:
        dataset = ImageFiles(str(path), transform, encoded=encoded)
    except FileNotFoundError as e:
        raise UserError(f"{path} holds no class directories with images ({e}); {LAYOUT_HINT}") from None
    if not len(dataset):
        raise UserError(f"{path} holds no images (class directories: {len(dataset.classes)}); {LAYOUT_HINT}")
    return dataset


def decode_mode(data_cfg) -> str:
    mode = str(data_cfg.get("decode", "cpu"))
    if mode not in DECODE_MODES:
        raise UserError(f"data.decode={mode} is unknown: use cpu or gpu")
    if mode == "gpu" and not torch.cuda.is_available():
        raise UserError("data.decode=gpu needs CUDA (nvJPEG), which is not available here: use data.decode=cpu")
    return mode


def build_dataset(data_cfg, resolution: int, split: str, train: bool, root: Path | None = None) -> Dataset:
    """One split of the configured dataset; `train` selects the augmenting transform."""
    if data_cfg.name == "fake":
        size = data_cfg.fake.train_size if train else data_cfg.fake.val_size
        return FakeImages(size, int(data_cfg.num_classes), resolution, seed=0 if train else 1)
    root = root or resolve_root(data_cfg)
    transform = train_transform(data_cfg, resolution) if train else eval_transform(data_cfg, resolution)
    encoded = decode_mode(data_cfg) == "gpu"
    if is_shards(data_cfg):
        from . import shards

        if train:
            return shards.ShardStream(root, split, transform, encoded=encoded,
                                      buffer_size=int(data_cfg.get("shuffle_buffer", 2000)))
        return shards.ShardFiles(root, split, transform, encoded=encoded)
    return image_folder(root, split, transform, encoded=encoded)


def check_classes(dataset: Dataset, num_classes: int, where: str) -> list[str]:
    classes = list(dataset.classes)
    if len(classes) != num_classes:
        raise UserError(f"{where} has {len(classes)} classes but the model has {num_classes}: "
                        f"set data.num_classes={len(classes)} (or point data.root at the full dataset)")
    return classes


# ----------------------------------------------------------------------------- loaders


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch shuffle, split across ranks, resumable mid-epoch.

    Epoch e uses the permutation seeded by (seed, e), so every rank and every restart agrees;
    rank r takes every world_size-th index; `set_epoch(e, start)` skips the first `start`
    samples of this rank's share (those already trained on before an interruption).
    """

    def __init__(self, size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True,
                 keyed: bool = False):
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.keyed = keyed  # yield (epoch, index) keys for `SeededSamples`
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.size % self.world_size:
            # Equal shares for every rank (as DistributedSampler): repeat a few samples.
            order += order[: self.world_size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        indices = self._indices()[self.start :]
        return iter([(self.epoch, i) for i in indices] if self.keyed else indices)

    def __len__(self) -> int:
        share = math.ceil(self.size / self.world_size) if self.pad else len(range(self.rank, self.size, self.world_size))
        return max(share - self.start, 0)


class SeededSamples(Dataset):
    """Augmentation as a pure function of (seed, epoch, index).

    Each sample is transformed under RNGs seeded from its key, so the random crop and flip of
    an image do not depend on which worker, rank or restart produced it: a run resumed mid-epoch,
    or spread over another number of processes, sees exactly the same augmented images.
    The caller's RNG states are restored afterwards (with 0 workers that is the training process).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):  # classes, samples, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index = key
        sample_seed = (self.seed * 1_000_003 + epoch) * 100_000_007 + index
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            random.seed(sample_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


class ImageLoader:
    """A DataLoader that yields (images, targets), counts and logs bad images, and stops an
    epoch in which more than `max_bad_share` of the images failed.

    Everything else (`sampler.set_epoch`, `batch_size`, `dataset`, `len`) is the DataLoader's;
    for shards, `sampler` is the stream itself (its `set_epoch(epoch, start)`).
    """

    def __init__(self, loader: DataLoader, sampler, max_bad_share: float = DEFAULT_MAX_BAD_SHARE,
                 gpu_decode: GpuDecode | None = None):
        self.loader, self.sampler, self.max_bad_share, self.gpu_decode = loader, sampler, max_bad_share, gpu_decode
        self.bad_images = 0        # this epoch (so far)
        self.bad_images_total = 0  # since the loader was built
        self._logged: set[str] = set()

    def __getattr__(self, name):
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.bad_images = 0
        planned = max(len(self) * (self.loader.batch_size or 1), 1)
        for batch in self.loader:
            images, targets = batch
            bad = list(getattr(batch, "bad", ()))
            if self.gpu_decode is not None:
                images, gpu_bad = self.gpu_decode(images, batch.paths)
                bad += gpu_bad
            if bad:
                self._count(bad, planned)
            yield images, targets

    def _count(self, bad: list, planned: int) -> None:
        for path, reason in bad:
            if path not in self._logged:
                self._logged.add(path)
                log.warning("bad image replaced by another sample: %s (%s)", path, reason)
        self.bad_images += len(bad)
        self.bad_images_total += len(bad)
        if self.bad_images > self.max_bad_share * planned:
            path, reason = bad[-1]
            raise UserError(f"{self.bad_images} of this epoch's {planned} images failed to load, more than "
                            f"data.max_bad_share={self.max_bad_share:g} (last: {path}: {reason}); repair the dataset "
                            f"(e.g. mobilenet-data prepare again) or raise data.max_bad_share")


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker; python's `random` (used by some transforms) must follow it.
    random.seed(torch.initial_seed() % 2**32)


def build_loader(dataset: Dataset, batch_size: int, train: bool, num_workers: int, seed: int,
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 max_bad_share: float = DEFAULT_MAX_BAD_SHARE, gpu_decode: GpuDecode | None = None) -> ImageLoader:
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, collate_fn=collate,
                  prefetch_factor=4 if num_workers > 0 else None, worker_init_fn=_seed_worker,
                  # The loader draws its workers' base seed from here, not from the global RNG, which
                  # would otherwise advance once per epoch (or once per restart) and shift dropout.
                  generator=torch.Generator().manual_seed(seed))
    if isinstance(dataset, IterableDataset):
        # The stream splits itself per rank and worker; workers are rebuilt each epoch so they
        # see the epoch set by `set_epoch` (persistent workers would keep a stale copy).
        dataset.configure(batch_size=batch_size, num_workers=num_workers, seed=seed, rank=rank, world_size=world_size)
        loader = DataLoader(dataset, drop_last=False, persistent_workers=False, **common)
        return ImageLoader(loader, dataset, max_bad_share, gpu_decode)
    # Training samples are keyed (epoch, index) and augmented under RNGs seeded from the key.
    sampler = EpochSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, pad=train,
                           keyed=train)
    loader = DataLoader(SeededSamples(dataset, seed) if train else dataset, sampler=sampler, drop_last=train,
                        persistent_workers=num_workers > 0, **common)
    return ImageLoader(loader, sampler, max_bad_share, gpu_decode)


@dataclass
class DataBundle:
    train_loader: ImageLoader | None
    val_loader: ImageLoader
    classes: list[str]


def per_process_batch(global_batch: int, world_size: int, accum_steps: int, what: str = "data.batch_size") -> int:
    parts = world_size * accum_steps
    if global_batch < 1 or global_batch % parts:
        raise UserError(f"{what}={global_batch} is not divisible by world size x trainer.accum_steps = "
                        f"{world_size} x {accum_steps}: choose a multiple of {parts}")
    return global_batch // parts


def build_data(cfg, resolution: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
               train: bool = True) -> DataBundle:
    """Train and val loaders for `cfg.data`; `train=False` builds only the val side (eval)."""
    data_cfg = cfg.data
    root = None if data_cfg.name == "fake" else resolve_root(data_cfg)
    num_classes = int(cfg.model.num_classes)
    if root is not None:
        for split in ([data_cfg.train_split] if train else []) + [data_cfg.val_split]:
            if is_shards(data_cfg):
                from . import shards

                shards.check_split(root, split)
            else:
                split_dir(root, split)  # report a missing split before anything is read
    max_bad = float(data_cfg.get("max_bad_share", DEFAULT_MAX_BAD_SHARE))
    gpu = decode_mode(data_cfg) == "gpu" and data_cfg.name != "fake"
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else None

    def loader(dataset, batch, is_train):
        decoder = GpuDecode(dataset.transform, device) if gpu else None
        return build_loader(dataset, batch, is_train, int(data_cfg.num_workers), cfg.seed, rank, world_size,
                            pin_memory, max_bad, decoder)

    val_set = build_dataset(data_cfg, resolution, data_cfg.val_split, train=False, root=root)
    classes = check_classes(val_set, num_classes, f"{data_cfg.val_split} split of data.root={root}")
    eval_batch = max(1, int(data_cfg.eval_batch_size) // world_size)
    val_loader = loader(val_set, eval_batch, False)
    train_loader = None
    if train:
        train_set = build_dataset(data_cfg, resolution, data_cfg.train_split, train=True, root=root)
        train_classes = check_classes(train_set, num_classes, f"{data_cfg.train_split} split of data.root={root}")
        if train_classes != classes:
            raise UserError(f"data.root={root}: the {data_cfg.train_split}/ and {data_cfg.val_split}/ class "
                            f"directories differ; both must hold the same classes")
        batch = per_process_batch(int(data_cfg.batch_size), world_size, int(cfg.trainer.accum_steps))
        if len(train_set) < batch * world_size:
            raise UserError(f"the training split has {len(train_set)} images, fewer than one batch "
                            f"(data.batch_size={data_cfg.batch_size}): lower data.batch_size")
        train_loader = loader(train_set, batch, True)
    return DataBundle(train_loader, val_loader, classes)
