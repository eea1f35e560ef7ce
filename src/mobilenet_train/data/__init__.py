"""Datasets, transforms and loaders, by concern (each module imports only those above it):

    decode.py      JPEG decode at a draft scale, crop before resize
    transforms.py  train and eval preprocessing (presets, normalisation, DevicePreprocess)
    samples.py     samples, batches, collate and the bad-image policy
    shapes.py      the embedded `shapes` dataset generator
    shapes_attr.py the embedded multi-label dataset `shapes_attr` (JPEGs + label tables)
    folders.py     ImageFolder datasets, data.root, fake images
    shards.py      reading WebDataset shards
    samplers.py    the resumable epoch sampler, per-sample seeded augmentation
    gpu.py         data.decode=gpu
    mixing.py      batch augmentation on the device: random erasing, mixup/cutmix
    loaders.py     build_data, eval_loader: datasets -> loaders
    attributes.py  multi-label data: label tables (CSV, CelebA) beside image folders -> loaders
    shapes_det.py  the embedded detection dataset `shapes_det` (JPEGs + COCO JSON)
    coco.py        COCO-format detection data (task=detection): reader, v2 augmentation, loaders
    prepare.py     `mobilenet-data prepare` (ILSVRC2012 archives -> ImageFolder)
    pack.py        `mobilenet-data pack` (ImageFolder -> shards)

Callers import from here (`from .data import build_data`); prepare and pack are imported as
modules (`from mobilenet_train.data.pack import pack`).
"""

from .attributes import AttributeImages, LabelTable, build_multilabel_data, read_table
from .decode import decode_crop, draft_scale, read_encoded, tensor_decode_crop, to_chw_uint8
from .folders import (
                      LAYOUT_HINT,
                      FakeImages,
                      ImageFiles,
                      check_classes,
                      image_folder,
                      is_image_file,
                      is_shards,
                      resolve_root,
                      split_dir,
)
from .gpu import GpuDecode
from .loaders import (
                      DECODE_MODES,
                      DataBundle,
                      ImageLoader,
                      build_data,
                      build_dataset,
                      build_loader,
                      decode_mode,
                      eval_images,
                      eval_loader,
                      per_process_batch,
                      run_loader,
)
from .samplers import EpochSampler, SeededSamples
from .samples import (
                      DEFAULT_MAX_BAD_SHARE,
                      REPLACEMENT_TRIES,
                      Batch,
                      EncodedSample,
                      Sample,
                      blank_like,
                      collate,
                      collate_targets,
                      describe_error,
                      load_with_replacement,
)
from .shards import ShardFiles, ShardStream, check_split, read_index
from .transforms import (
                      EVAL_PRESETS,
                      INTERPOLATION,
                      NORMALIZATION,
                      PIL_RESAMPLE,
                      CentralFractionCrop,
                      DevicePreprocess,
                      FastEvalCrop,
                      FastRandomResizedCrop,
                      eval_resize_size,
                      eval_transform,
                      normalized,
                      train_transform,
)

__all__ = [
    "decode_crop", "draft_scale", "read_encoded", "tensor_decode_crop", "to_chw_uint8",
    "LAYOUT_HINT", "FakeImages", "ImageFiles", "check_classes", "image_folder", "is_image_file", "is_shards",
    "resolve_root", "split_dir",
    "GpuDecode",
    "DECODE_MODES", "DataBundle", "ImageLoader", "build_data", "build_dataset", "build_loader", "decode_mode",
    "eval_images", "eval_loader", "per_process_batch", "run_loader",
    "AttributeImages", "LabelTable", "build_multilabel_data", "read_table",
    "EpochSampler", "SeededSamples",
    "DEFAULT_MAX_BAD_SHARE", "REPLACEMENT_TRIES", "Batch", "EncodedSample", "Sample", "blank_like", "collate",
    "collate_targets", "describe_error", "load_with_replacement",
    "ShardFiles", "ShardStream", "check_split", "read_index",
    "EVAL_PRESETS", "INTERPOLATION", "NORMALIZATION", "PIL_RESAMPLE", "CentralFractionCrop", "DevicePreprocess",
    "FastEvalCrop", "FastRandomResizedCrop", "eval_resize_size", "eval_transform", "normalized", "train_transform",
]
