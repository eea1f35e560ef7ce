"""Multi-label attribute data: images beside a table of binary attributes (`data=attributes`,
`data=shapes_attr`); batches are (uint8 NCHW images, float32 [N, A] targets: 1, 0, NaN where missing).

Where the tables are. Each split has its own, `ROOT/<split>/<data.labels>` (default labels.csv), its
image paths relative to that split directory. Or, with `data.partition` set and no table in the split
directory, one table `ROOT/<data.labels>` for all splits, its rows kept by the partition file
(`ROOT/<data.partition>`, CelebA's list_eval_partition.txt: `file 0|1|2` for train|val|test) and its
images under `ROOT/<data.image_dir>` (null: ROOT).

Two layouts, told apart by content:
- CSV: a header `file,attr1,attr2,...` (the first column names the image: file, filename,
  file_name, image, image_id or path), then one row per image; cells 1 or 0 (-1 also reads as 0,
  as in the CSV copies of CelebA), an empty cell is a missing label.
- CelebA's list_attr_celeba.txt: line 1 the image count (an integer), line 2 the attribute names,
  then `file v1 ... vA` separated by whitespace; 1 -> 1, -1 -> 0, 0 -> missing.
Missing labels are NaN in the targets; the loss and the metrics leave them out.

Header problems refuse the table (one error line): a first line that is neither a CSV header nor an
integer count, a first column that is not the file, no attribute columns, an empty or duplicated
attribute name. Bad rows are skipped, counted and logged once each (line number and reason; the first
LOGGED_ROWS, then a count): a wrong number of fields, a value outside the allowed set, a file listed
twice (the later row), a file that does not exist. When the skipped rows are more than
`data.max_bad_share` of the table's rows (of this split), the run stops with one line naming the
table, the count and the fix. An attribute with no labelled row is kept (its AP is left out of mAP)
and logged.

Unlabelled training images: when the training split has no table and the run is pure distillation
(`distill.teacher` set, `distill.alpha=1`: the labels would not be used), every image file under
`ROOT/<data.train_split>` (recursively) is a training sample with all-NaN targets; the attribute
names come from the val table. The val split is always labelled.

Bad images are replaced by another sample as everywhere else (samples.py); the replacement keeps its
own labels.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from .decode import read_encoded
from .folders import is_image_file, is_shards, resolve_root
from .loaders import DataBundle, decode_mode, per_process_batch, run_loader
from .samples import Sample, load_with_replacement
from .transforms import eval_transform, train_transform

log = logging.getLogger("mobilenet_train")

NAN = float("nan")
TABLE_HINT = ("expected ROOT/<split>/<data.labels> beside the split's images: a CSV with the header "
              "file,attr1,attr2,... and 1, 0 or empty cells, or CelebA's list_attr_celeba.txt layout")
FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "path")
CSV_VALUES = {"1": 1.0, "0": 0.0, "-1": 0.0, "": NAN}
CELEBA_VALUES = {"1": 1.0, "+1": 1.0, "-1": 0.0, "0": NAN}
PARTITION_SPLITS = {"train": 0, "val": 1, "test": 2}
LOGGED_ROWS = 20  # bad rows logged one by one; the rest are counted


@dataclass
class LabelTable:
    """The usable rows of one split's table: image paths, and their targets (NaN where missing)."""

    path: Path
    names: list[str]
    files: list[str] = field(default_factory=list)
    targets: torch.Tensor | None = None  # float32 [len(files), len(names)]
    rows: int = 0  # rows of this split, usable or not
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason) of the skipped rows


class BadRow(ValueError):
    pass


# ----------------------------------------------------------------------------- reading a table


def _is_count(text: str) -> bool:
    return text.strip().lstrip("+").isdigit()


def _names(path: Path, names: list[str]) -> list[str]:
    names = [n.strip() for n in names]
    if not names:
        raise UserError(f"{path} has no attribute columns ({TABLE_HINT})")
    if "" in names:
        raise UserError(f"{path}: attribute {names.index('') + 1} of the header has no name: name every column")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"{path}: attribute names appear twice in the header ({', '.join(dup[:5])}): rename them")
    return names


def _csv_rows(path: Path, lines: list[str]):
    """(names, values, rows of (line number, fields)) of the CSV layout."""
    header = next(csv.reader(lines[:1]))
    if header[0].strip().lower() not in FILE_COLUMNS:
        raise UserError(f"{path}: the first column is {header[0].strip()!r}, not the image file: start the "
                        f"header with file (file,attr1,attr2,...)")
    names = _names(path, header[1:])
    reader = csv.reader(lines[1:])
    return names, CSV_VALUES, ((reader.line_num + 1, [cell.strip() for cell in row]) for row in reader if row)


def _celeba_rows(path: Path, lines: list[str]):
    """(names, values, rows) of CelebA's layout; the count line must agree with the rows (else a warning)."""
    if len(lines) < 2:
        raise UserError(f"{path}: CelebA layout without its line of attribute names (line 2)")
    names = _names(path, lines[1].split())
    rows = [(number, line.split()) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    if int(lines[0]) != len(rows):
        log.warning("%s: line 1 counts %s images but %d rows follow", path, lines[0].strip(), len(rows))
    return names, CELEBA_VALUES, rows


class _Files:
    """Does an image exist? One directory listing per directory, not one stat per row."""

    def __init__(self, base: Path):
        self.base, self.listed = str(base), {}

    def __call__(self, name: str) -> bool:
        # Strings, not pathlib: a table can hold hundreds of thousands of rows.
        parent, leaf = os.path.split(os.path.join(self.base, name))
        if parent not in self.listed:
            self.listed[parent] = set(os.listdir(parent)) if os.path.isdir(parent) else set()
        return leaf in self.listed[parent]


def _parse(fields: list[str], names: list[str], values: dict, exists, seen: dict) -> list[float]:
    if len(fields) != len(names) + 1:
        raise BadRow(f"{len(fields)} fields, expected {len(names) + 1} (the file and {len(names)} attributes)")
    name = fields[0]
    try:
        row = [values[cell] for cell in fields[1:]]
    except KeyError:
        column, cell = next((n, c) for n, c in zip(names, fields[1:]) if c not in values)
        allowed = ", ".join(repr(v) for v in values)
        raise BadRow(f"{column}={cell!r} is not one of {allowed}") from None
    if name in seen:
        raise BadRow(f"{name} is listed again (first on line {seen[name]})")
    if not exists(name):
        raise BadRow(f"{name} does not exist")
    return row


def read_table(path: Path, image_dir: Path, keep: set[str] | None = None) -> LabelTable:
    """The rows of table `path` (of files in `keep`, when given), their images under `image_dir`."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # utf-8-sig: a spreadsheet's BOM
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the label table {path}: {e}") from None
    first = lines[0].strip() if lines else ""
    if not first:
        raise UserError(f"the label table {path} is empty or starts with a blank line ({TABLE_HINT})")
    if _is_count(first):
        names, values, rows = _celeba_rows(path, lines)
    elif "," in first or first.lower() in FILE_COLUMNS:
        names, values, rows = _csv_rows(path, lines)
    else:
        raise UserError(f"{path}: the first line ({first[:40]!r}) is neither a CSV header (file,attr1,...) nor "
                        f"CelebA's image count (an integer); {TABLE_HINT}")
    table, exists, seen, targets, base = LabelTable(path, names), _Files(image_dir), {}, [], str(image_dir)
    for number, fields in rows:  # stripped fields
        if keep is not None and fields[0] not in keep:
            continue
        table.rows += 1
        try:
            targets.append(_parse(fields, names, values, exists, seen))
        except BadRow as e:
            table.bad.append((number, str(e)))
            continue
        seen[fields[0]] = number
        table.files.append(os.path.join(base, fields[0]))
    table.targets = torch.tensor(targets, dtype=torch.float32).reshape(len(targets), len(names))
    return table


def check_rows(table: LabelTable, max_bad_share: float) -> None:
    """Log the skipped rows once; refuse a table with too many of them, or with no usable row."""
    for number, reason in table.bad[:LOGGED_ROWS]:
        log.warning("label row skipped: %s line %d: %s", table.path, number, reason)
    if len(table.bad) > LOGGED_ROWS:
        log.warning("%s: %d more label rows skipped", table.path, len(table.bad) - LOGGED_ROWS)
    if table.bad:
        log.warning("%s: %d of its %d label rows skipped", table.path, len(table.bad), table.rows)
    if len(table.bad) > max_bad_share * table.rows:
        number, reason = table.bad[0]
        raise UserError(f"{table.path}: {len(table.bad)} of its {table.rows} label rows are bad, more than "
                        f"data.max_bad_share={max_bad_share:g} (first: line {number}: {reason}); repair the table "
                        f"or raise data.max_bad_share")
    if not table.files:
        raise UserError(f"{table.path} holds no labelled images ({TABLE_HINT})")
    empty = [n for n, labelled in zip(table.names, (~table.targets.isnan()).any(0).tolist()) if not labelled]
    if empty:
        log.warning("%s: no labelled rows for %s (left out of mAP)", table.path, ", ".join(empty))


def read_partition(path: Path) -> dict[str, int]:
    """CelebA's list_eval_partition.txt: `file 0|1|2` per line -> {file: split number}."""
    if not path.is_file():
        raise UserError(f"data.partition={path} does not exist: point it at the partition file "
                        f"(CelebA's list_eval_partition.txt, under data.root)")
    out = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise UserError(f"{path} line {number}: expected 'file 0|1|2' (train|val|test), found {line.strip()!r}: "
                            f"repair the partition file")
        out[fields[0]] = int(fields[1])
    return out


# ----------------------------------------------------------------------------- splits and the dataset


def pure_distillation(cfg) -> bool:
    """Labels unused: a teacher alone gives the targets (distill.alpha=1)."""
    d = cfg.get("distill")
    return d is not None and bool(d.get("teacher")) and float(d.get("alpha", 0)) == 1.0


def split_table(cfg, root: Path, split: str) -> LabelTable | None:
    """The split's label table: its own, or its part of data.partition's table; None when it has none."""
    data_cfg = cfg.data
    own = root / split / str(data_cfg.labels)
    if own.is_file():
        return read_table(own, root / split)
    if data_cfg.get("partition") and split in PARTITION_SPLITS:
        table = root / str(data_cfg.labels)
        if not table.is_file():
            raise UserError(f"data.partition is set but the label table {table} does not exist: set data.labels to "
                            f"the table under data.root (CelebA: data.labels=list_attr_celeba.txt)")
        parts = read_partition(root / str(data_cfg.partition))
        keep = {name for name, part in parts.items() if part == PARTITION_SPLITS[split]}
        image_dir = root / str(data_cfg.image_dir) if data_cfg.get("image_dir") else root
        return read_table(table, image_dir, keep)
    return None


def _missing_table(cfg, root: Path, split: str, train: bool) -> UserError:
    own = root / split / str(cfg.data.labels)
    where = "" if (root / split).is_dir() else f" (data.root={root} has no '{split}/' directory)"
    if cfg.data.get("partition"):
        where += f"; data.partition assigns only the splits {', '.join(PARTITION_SPLITS)}"
    if not train:
        return UserError(f"{own} does not exist{where}: the {split} split must be labelled ({TABLE_HINT})")
    return UserError(f"{own} does not exist{where}: put the training split's label table there ({TABLE_HINT}), "
                     f"or train on its unlabelled images by pure distillation: distill.teacher=CKPT distill.alpha=1")


def unlabelled_files(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist: point data.train_split at the folder of unlabelled images")
    files = sorted(str(p) for p in folder.rglob("*") if is_image_file(str(p)) and p.is_file())
    if not files:
        raise UserError(f"{folder} holds no images (unlabelled training images are read recursively)")
    return files


class AttributeImages(Dataset):
    """Images and their attribute rows; images that fail to load are replaced (samples.py)."""

    def __init__(self, files: list[str], targets: torch.Tensor, classes: list[str], transform, encoded: bool = False):
        self.files, self.targets, self.classes = files, targets, classes
        self.transform, self.encoded = transform, encoded
        self.blank_target = torch.full((len(classes),), NAN)

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int):
        path, target = self.files[index], self.targets[index].clone()
        if self.encoded:
            return read_encoded(path), target
        with Image.open(path) as img:
            return self.transform(img), target

    def describe(self, index: int) -> str:
        return self.files[index]

    def __getitem__(self, index: int) -> Sample:
        return load_with_replacement(self, index)


def check_attributes(names: list[str], num_classes: int, where: str) -> None:
    if len(names) != num_classes:
        raise UserError(f"{where} has {len(names)} attributes but the model has {num_classes}: "
                        f"set data.num_classes={len(names)}")


def _root(data_cfg) -> Path:
    if data_cfg.name == "attributes":
        if not data_cfg.root:
            raise UserError(f"data.root is not set: pass data.root=/path/to/dataset ({TABLE_HINT})")
        if not Path(str(data_cfg.root)).expanduser().is_dir():
            raise UserError(f"data.root={data_cfg.root} does not exist or is not a directory ({TABLE_HINT})")
    if is_shards(data_cfg):
        raise UserError("multi-label data is read from image folders with a label table, not shards: "
                        "set data.format=folder")
    return resolve_root(data_cfg)


def build_multilabel_data(cfg, resolution: int, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                          train: bool = True) -> DataBundle:
    """Train and val loaders of multi-label data (`train=False`: only val); `classes` = the attribute names."""
    data_cfg = cfg.data
    root = _root(data_cfg)
    num_classes, max_bad = int(cfg.model.num_classes), float(data_cfg.max_bad_share)
    encoded = decode_mode(data_cfg) == "gpu"
    val_split, train_split = str(data_cfg.val_split), str(data_cfg.train_split)
    val_table = split_table(cfg, root, val_split)
    if val_table is None:
        raise _missing_table(cfg, root, val_split, train=False)
    check_rows(val_table, max_bad)
    classes = val_table.names
    check_attributes(classes, num_classes, str(val_table.path))
    val_set = AttributeImages(val_table.files, val_table.targets, classes, eval_transform(data_cfg, resolution),
                              encoded)
    val_loader = run_loader(cfg, val_set, max(1, int(data_cfg.eval_batch_size) // world_size), False, rank,
                            world_size, pin_memory)
    if not train:
        return DataBundle(None, val_loader, classes)
    train_table = split_table(cfg, root, train_split)
    if train_table is not None:
        check_rows(train_table, max_bad)
        if train_table.names != classes:
            raise UserError(f"{train_table.path} and {val_table.path} name different attributes (or another "
                            f"order): both tables must have the same header")
        files, targets = train_table.files, train_table.targets
    elif pure_distillation(cfg):
        files = unlabelled_files(root / train_split)
        targets = torch.full((len(files), len(classes)), NAN)
        log.info("training on %d unlabelled images under %s (pure distillation)", len(files), root / train_split)
    else:
        raise _missing_table(cfg, root, train_split, train=True)
    train_set = AttributeImages(files, targets, classes, train_transform(data_cfg, resolution), encoded)
    batch = per_process_batch(int(data_cfg.batch_size), world_size, int(cfg.trainer.accum_steps))
    if len(train_set) < batch * world_size:
        raise UserError(f"the training split has {len(train_set)} images, fewer than one batch "
                        f"(data.batch_size={data_cfg.batch_size}): lower data.batch_size")
    return DataBundle(run_loader(cfg, train_set, batch, True, rank, world_size, pin_memory), val_loader, classes)

