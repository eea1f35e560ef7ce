"""COCO-format detection data (task=detection): images plus an instances JSON, read with pycocotools.

    ROOT/<split>/<file_name>                    the images (data.train_split, data.val_split)
    ROOT/annotations/instances_<split>.json     COCO instances annotations

Category ids (COCO's run 1..90 with gaps) become labels 1..K in sorted id order; 0 is the background.
Augmentation is torchvision.transforms.v2's (photometric distort, zoom out, IoU crop, flip, resize),
which moves the boxes with the pixels. Bad annotations (a box outside the image, zero area, an unknown
category) are counted and skipped when the dataset is read; bad images are replaced by another sample,
logged and counted by the loader as for classification (samples.py), and stop an epoch past
data.max_bad_share.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..errors import UserError
from . import shapes_det
from .samples import Sample, load_with_replacement

log = logging.getLogger("mobilenet_train")

LAYOUT = "expected ROOT/<split>/<image> and ROOT/annotations/instances_<split>.json (COCO layout)"
FILL = (124, 116, 104)  # zoom-out canvas: the ImageNet mean colour
EDGE_SLACK = 1.0  # pixels a box may reach past the image edge (rounding in the JSON); it is clipped


def resolve_det_root(data_cfg) -> Path:
    """The dataset directory; for `shapes_det`, generated on first use."""
    if data_cfg.name == "shapes_det":
        g = data_cfg.shapes_det
        root = Path(data_cfg.root).expanduser() if data_cfg.root else shapes_det.default_root(
            g.seed, g.image_size, g.train_images, g.val_images, g.max_objects, g.categories)
        return shapes_det.generate(root, g.seed, g.image_size, g.train_images, g.val_images, g.max_objects,
                                   g.categories)
    if not data_cfg.root:
        raise UserError(f"data.root is not set: pass data.root=/path/to/coco ({LAYOUT})")
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root={root} does not exist or is not a directory ({LAYOUT})")
    return root


def annotation_file(root: Path, split: str) -> Path:
    path = root / "annotations" / f"instances_{split}.json"
    if not path.is_file() or not (root / split).is_dir():
        raise UserError(f"data.root={root} has no '{split}/' images with annotations/instances_{split}.json "
                        f"({LAYOUT})")
    return path


def read_coco(path: Path):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        try:
            return COCO(str(path))
        except Exception as e:  # noqa: BLE001 - bad JSON or a missing section, many types
            raise UserError(f"{path} is not a COCO instances file ({type(e).__name__}: {e})") from None


def clean_annotations(anns: list[dict], width: int, height: int, label_of: dict) -> tuple[list, list, Counter]:
    """(boxes as x1, y1, x2, y2, labels, Counter of skipped annotations by reason); crowd regions are left
    to COCOeval (they are not training targets, and not bad)."""
    boxes, labels, bad = [], [], Counter()
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = (float(v) for v in a.get("bbox", (0, 0, 0, 0)))
        if a.get("category_id") not in label_of:
            bad["unknown category"] += 1
        elif w <= 0 or h <= 0:
            bad["zero area"] += 1
        elif x < -EDGE_SLACK or y < -EDGE_SLACK or x + w > width + EDGE_SLACK or y + h > height + EDGE_SLACK:
            bad["box outside the image"] += 1
        else:
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                bad["zero area"] += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(label_of[a["category_id"]])
    return boxes, labels, bad


class CocoDetection(Dataset):
    """One split of a COCO-format dataset: samples (uint8 CHW image, target dict) with target
    {boxes (x1, y1, x2, y2 in the transformed image's pixels), labels, image_id, orig_size (h, w)}."""

    encoded = False

    def __init__(self, root: Path, split: str, transform):
        self.root, self.split, self.transform = Path(root), split, transform
        self.coco = read_coco(annotation_file(self.root, split))
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.classes = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.ids = sorted(self.coco.imgs)
        self.bad_annotations: Counter = Counter()
        self.targets = [self._targets(i) for i in self.ids]
        if self.bad_annotations:
            log.warning("%s: skipped %d bad annotations (%s)", self.root / split, sum(self.bad_annotations.values()),
                        ", ".join(f"{n} {why}" for why, n in sorted(self.bad_annotations.items())))
        if not self.ids:
            raise UserError(f"{annotation_file(self.root, split)} lists no images")

    def _targets(self, image_id: int) -> tuple[list, list]:
        info = self.coco.imgs[image_id]
        anns = self.coco.imgToAnns.get(image_id, [])
        boxes, labels, bad = clean_annotations(anns, info["width"], info["height"], self.label_of)
        self.bad_annotations.update(bad)
        return boxes, labels

    def __len__(self) -> int:
        return len(self.ids)

    def describe(self, index: int) -> str:
        return str(self.root / self.split / self.coco.imgs[self.ids[index]]["file_name"])

    def load(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        with Image.open(self.describe(index)) as img:
            img = img.convert("RGB")
        if img.size != (info["width"], info["height"]):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, annotations say {info['width']}x{info['height']}")
        boxes, labels = self.targets[index]
        target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                    format="XYXY", canvas_size=(img.height, img.width)),
                  "labels": torch.tensor(labels, dtype=torch.int64)}
        image, target = self.transform(tv_tensors.Image(v2.functional.pil_to_tensor(img)), target)
        return image.as_subclass(torch.Tensor), {
            "boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
            "image_id": image_id, "orig_size": (img.height, img.width)}

    def __getitem__(self, index: int) -> Sample:
        return load_with_replacement(self, index)


class DetectionTransform:
    """A v2 pipeline ending in a resize to size x size; `size` also frames the blank image that replaces
    an image no replacement could stand in for (samples.blank_like)."""

    def __init__(self, steps: list, size: int):
        self.pipeline = v2.Compose([*steps, v2.Resize((size, size), antialias=True), v2.SanitizeBoundingBoxes()])
        self.size = (size, size)

    def __call__(self, image, target):
        return self.pipeline(image, target)


def detection_transform(augment: str, resolution: int, hflip: float, train: bool) -> DetectionTransform:
    """Training: SSD's augmentation (augment=ssd: photometric distort, zoom out, IoU crop, flip) or only the
    flip (augment=flip); evaluation: the resize alone."""
    steps: list = []
    if train and augment == "ssd":
        steps = [v2.RandomPhotometricDistort(p=0.5), v2.RandomZoomOut(fill=list(FILL), side_range=(1.0, 4.0), p=0.5),
                 v2.RandomIoUCrop(), v2.SanitizeBoundingBoxes()]
    if train and hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    return DetectionTransform(steps, resolution)


class DetectionBatch:
    """A collated batch: unpacks as (uint8 NCHW images in NHWC memory, list of target dicts)."""

    def __init__(self, images: torch.Tensor, targets: list[dict], bad=()):
        self.images, self.targets, self.bad = images, targets, list(bad)

    def __iter__(self):
        return iter((self.images, self.targets))

    def pin_memory(self, device=None):
        self.images = self.images.pin_memory()
        return self


def _empty_target(image: torch.Tensor) -> dict:
    return {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": -1,
            "orig_size": tuple(image.shape[-2:])}


def collate_detection(samples: list) -> DetectionBatch:
    """Stack the (equal-size) images as NHWC, as classification's collate; targets stay a list. A sample
    that is a blank stand-in (target 0, see samples.load_with_replacement) gets no objects."""
    images = torch.stack([s[0].permute(1, 2, 0) for s in samples]).permute(0, 3, 1, 2)
    targets = [s[1] if isinstance(s[1], dict) else _empty_target(s[0]) for s in samples]
    return DetectionBatch(images, targets, [b for s in samples for b in getattr(s, "bad", ())])


def build_detection_data(cfg, resolution: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                         train: bool = True, model_categories: tuple[list[str], list[int]] | None = None):
    """Train and val loaders of a detection run (`train=False`: only val, for mobilenet-eval); the val
    dataset's pycocotools COCO object is what COCOeval scores against. `model_categories`: (names, COCO ids)
    of a model that maps its labels by COCO id (an imported COCO detector): the dataset's categories must be
    among them, by id and name, instead of numbering the same."""
    from .loaders import DataBundle, build_loader, per_process_batch

    data_cfg, root = cfg.data, resolve_det_root(cfg.data)
    hflip, augment = float(data_cfg.hflip), str(cfg.detection.augment)

    def loader(dataset, batch, is_train):
        return build_loader(dataset, batch, is_train, int(data_cfg.num_workers), cfg.seed, rank, world_size,
                            pin_memory, float(data_cfg.max_bad_share), collate_fn=collate_detection)

    val_set = CocoDetection(root, data_cfg.val_split, detection_transform(augment, resolution, hflip, False))
    if model_categories:
        check_category_ids(val_set, *model_categories)
    else:
        _check_categories(val_set, int(cfg.model.num_classes))
    val_loader = loader(val_set, max(1, int(data_cfg.eval_batch_size) // world_size), False)
    train_loader = None
    if train:
        train_set = CocoDetection(root, data_cfg.train_split, detection_transform(augment, resolution, hflip, True))
        if train_set.cat_ids != val_set.cat_ids:
            raise UserError(f"data.root={root}: the {data_cfg.train_split} and {data_cfg.val_split} annotations "
                            f"list different categories; both must hold the same")
        batch = per_process_batch(int(data_cfg.batch_size), world_size, int(cfg.trainer.accum_steps))
        if len(train_set) < batch * world_size:
            raise UserError(f"the training split has {len(train_set)} images, fewer than one batch "
                            f"(data.batch_size={data_cfg.batch_size}): lower data.batch_size")
        train_loader = loader(train_set, batch, True)
    return DataBundle(train_loader, val_loader, list(val_set.classes))


def _check_categories(dataset: CocoDetection, num_classes: int) -> None:
    if len(dataset.classes) != num_classes:
        raise UserError(f"{annotation_file(dataset.root, dataset.split)} has {len(dataset.classes)} categories but "
                        f"the model has {num_classes}: set data.num_classes={len(dataset.classes)}")


def check_category_ids(dataset: CocoDetection, names: list[str], ids: list[int]) -> None:
    """Every category of the dataset is one of the model's, same COCO id and same name."""
    of_id = dict(zip(ids, names))
    for cid, name in zip(dataset.cat_ids, dataset.classes):
        if of_id.get(cid) != name:
            has = f"'{of_id[cid]}'" if cid in of_id else "nothing"
            raise UserError(f"{annotation_file(dataset.root, dataset.split)}: category id {cid} is '{name}', the "
                            f"model has {has} there (it maps by COCO id): score it on COCO-numbered data, or "
                            f"fine-tune it on yours (+experiment=ssd_finetune)")
