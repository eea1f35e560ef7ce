"""The typed schema of every config key: type, default, allowed values and a one-line doc.

Each dataclass is one config group (registered in Hydra's ConfigStore, see `compose.py`) or the
options of one command. OmegaConf enforces the types when the config is composed; `check`
enforces the ranges and choices written beside each field, and `CROSS_CHECKS` the rules between
fields. Nothing else restates a default: code reads `cfg.data.jpeg_draft`, never `.get(key, default)`.

Choices are plain strings checked here rather than Enums: an Enum would travel into the
checkpoint's config and `torch.load(weights_only=True)` refuses to unpickle it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import II, MISSING

from ..errors import UserError

# ----------------------------------------------------------------------------- field specs


def key(default: Any, doc: str, *, choices: tuple | None = None, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, example: Any = None, factory: Callable | None = None,
        length: int | None = None):
    """A schema field: its default, a one-line doc, and what values are allowed."""
    meta = {"doc": doc, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "example": example,
            "length": length}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, doc: str):
    """A nested group of keys (e.g. trainer.ema)."""
    return field(default_factory=cls, metadata={"doc": doc, "section": True})


# ----------------------------------------------------------------------------- model


VARIANTS = ("separable", "conv", "shallow")


@dataclass
class ModelConfig:
    variant: str = key("separable", "separable: the paper's network (Table 1); conv: full 3x3 convs (Table 4); "
                       "shallow: the five 14x14x512 blocks removed (Table 5)", choices=VARIANTS)
    alpha: float = key(1.0, "width multiplier: channels = int(alpha * C) (paper: 1.0, 0.75, 0.5, 0.25)", gt=0,
                       le=8, example=0.75)
    resolution: int = key(224, "input side in pixels (rho * 224); >= 32 for the five stride-2 stages", ge=32,
                          le=4096, example=160)
    num_classes: int = key(II("data.num_classes"), "classifier outputs (follows data.num_classes)", ge=1, example=1000)
    dropout: float = key(0.0, "dropout before the classifier (TF-slim: keep_prob 0.999)", ge=0, lt=1, example=0.2)
    activation: str = key("relu", "relu (the paper) | relu6 (TF-slim / Keras releases)", choices=("relu", "relu6"))
    padding: str = key("symmetric", "symmetric | tf_same (TensorFlow SAME: stride-2 convs pad 0 top/left, 1 "
                       "bottom/right)", choices=("symmetric", "tf_same"))
    round_to: int = key(1, "1: int(alpha * C) as the paper; 8: channels rounded to multiples of 8", ge=1, le=64,
                        example=8)
    min_channels: int = key(8, "narrowest layer allowed (TF-slim's min_depth)", ge=1, le=1024, example=8)
    norm: str = key("batchnorm", "batchnorm | none (no BN, a bias on every conv: imported TF-Lite models, BN folded)",
                    choices=("batchnorm", "none"))
    bn_momentum: float = key(0.1, "BatchNorm momentum, PyTorch convention (TF decay 0.9997 ~ 0.0003)", gt=0, le=1)
    bn_eps: float = key(1e-5, "BatchNorm epsilon (Keras releases: 0.001)", gt=0, lt=1, example=0.001)
    init: str | None = key(None, "start from this checkpoint's weights (trained or mobilenet-import'ed, or timm "
                              "MobileNet v1 .safetensors / Hub folder; see +experiment=finetune); its architecture "
                              "is used", example="imported.pt")
    embedding_dim: int = key(0, "task=embedding: size of the linear embedding head on the pooled features (0: the "
                             "teacher's embedding size; equal to the pooled width: no head, the features "
                             "themselves)", ge=0, le=65536, example=128)
    l2_normalize: bool = key(False, "task=embedding: the network outputs unit-length embeddings (FaceNet's)")


# ----------------------------------------------------------------------------- data


EVAL_PRESETS = ("default", "tf", "keras")


@dataclass
class FakeDataConfig:
    train_size: int = key(2048, "data=fake: random training images per epoch", ge=1, example=2048)
    val_size: int = key(512, "data=fake: random validation images", ge=1, example=512)


@dataclass
class ShapesConfig:
    seed: int = key(0, "data=shapes: generator seed (the dataset is a pure function of these keys)", ge=0)
    image_size: int = key(80, "data=shapes: side of the generated JPEGs in pixels", ge=16, le=1024, example=80)
    train_per_class: int = key(800, "data=shapes: training images per class", ge=1, example=800)
    val_per_class: int = key(100, "data=shapes: validation images per class", ge=1, example=100)


@dataclass
class ShapesDetConfig:
    seed: int = key(0, "data=shapes_det: generator seed (the dataset is a pure function of these keys)", ge=0)
    image_size: int = key(160, "data=shapes_det: side of the generated JPEGs in pixels", ge=32, le=1024, example=160)
    train_images: int = key(1200, "data=shapes_det: training images", ge=1, example=1200)
    val_images: int = key(100, "data=shapes_det: validation images", ge=1, example=100)
    max_objects: int = key(3, "data=shapes_det: at most this many objects per image (at least one)", ge=1, le=20,
                           example=3)
    categories: int = key(10, "data=shapes_det: object categories, the first N of shapes' ten (data.num_classes "
                          "must agree)", ge=1, le=10, example=10)


@dataclass
class ShapesAttrConfig:
    seed: int = key(0, "data=shapes_attr: generator seed (the dataset is a pure function of these keys)", ge=0)
    image_size: int = key(64, "data=shapes_attr: side of the generated JPEGs in pixels", ge=32, le=1024, example=64)
    train_images: int = key(2000, "data=shapes_attr: labelled training images (train/, a few cells left empty)",
                            ge=1, example=2000)
    unlabelled_images: int = key(6000, "data=shapes_attr: images without labels (unlabelled/: distillation)", ge=1,
                                 example=6000)
    val_images: int = key(500, "data=shapes_attr: labelled validation images (val/, complete)", ge=1, example=500)


@dataclass
class DataConfig:
    name: str = key("imagenet", "dataset kind (set by the data= option)",
                    choices=("imagenet", "imagenet_shards", "shapes", "fake", "coco", "shapes_det", "attributes",
                             "shapes_attr"))
    root: str | None = key(None, "dataset root: ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG (shards: "
                              "ROOT/index.json); data=shapes, shapes_det, shapes_attr generate it when null",
                           example="/datasets/imagenet")
    num_classes: int = key(1000, "classes in the dataset (checked against the class directories; multi-label data: "
                           "the attributes)", ge=1,
                           example=1000)
    batch_size: int = key(256, "GLOBAL batch per optimizer step (all processes, all accumulation steps)", ge=1,
                          example=256)
    eval_batch_size: int = key(256, "global batch for evaluation", ge=1, example=256)
    num_workers: int = key(8, "loader processes per training process (0: load in the main process)", ge=0, le=256,
                           example=8)
    min_crop_area: float = key(0.25, "random-resized-crop scale range [min_crop_area, 1]", gt=0, le=1, example=0.25)
    crop_ratio: list[float] = key(None, "random-resized-crop aspect-ratio range [low, high]",
                                  factory=lambda: [0.75, 4 / 3], length=2, gt=0, example="[0.75,1.3333]")
    hflip: float = key(0.5, "probability of a horizontal flip", ge=0, le=1, example=0.5)
    eval_crop_fraction: float = key(0.875, "eval: the crop covers this fraction of the resized side "
                                    "(224 / 0.875 = 256)", gt=0, le=1, example=0.875)
    eval_preset: str = key("default", "eval preprocessing: default (shorter side to resolution / crop fraction, "
                           "centre crop) | tf (central crop, resize to NxN: TF-slim) | keras (whole image to NxN)",
                           choices=EVAL_PRESETS)
    interpolation: str = key("bilinear", "resampling filter", choices=("bilinear", "bicubic"))
    normalization: str = key("inception", "inception: x/127.5 - 1 (TF-slim) | imagenet: mean/std | uint8_128: "
                             "(x - 128)/128 (the input quantization of Google's TF-Lite detector)",
                             choices=("inception", "imagenet", "uint8_128"))
    format: str = key("folder", "folder (ImageFolder layout) | shards (mobilenet-data pack; see data=imagenet_shards)",
                      choices=("folder", "shards"))
    decode: str = key("cpu", "cpu: PIL in the loader workers | gpu: nvJPEG batch decode + augmentation on the GPU "
                      "(CUDA only)", choices=("cpu", "gpu"))
    jpeg_draft: bool = key(True, "let libjpeg downscale by 1/2, 1/4, 1/8 in the DCT domain when the crop allows it")
    max_bad_share: float = key(0.001, "an epoch stops when more than this share of its images fail to load",
                               ge=0, le=1, example=0.001)
    train_split: str = key("train", "training split directory under root", example="train")
    val_split: str = key("val", "validation split directory under root", example="val")
    labels: str = key("labels.csv", "multi-label data: the label table of a split, ROOT/<split>/<labels> (CSV "
                      "file,attr1,... with 0/1, or CelebA's list_attr_celeba.txt layout)", example="labels.csv")
    partition: str | None = key(None, "multi-label data: one table ROOT/<labels> for all splits, split by this "
                                   "file (CelebA's list_eval_partition.txt: file 0|1|2 = train|val|test); null: "
                                   "a table per split", example="list_eval_partition.txt")
    image_dir: str | None = key(None, "multi-label data with data.partition: the images' directory under ROOT "
                                   "(null: ROOT itself)", example="img_align_celeba")
    shuffle_buffer: int = key(2000, "shards: samples held per loader worker for the in-stream shuffle", ge=1,
                              example=2000)
    auto_augment: str | None = key(None, "per-image augmentation in the loader workers, after crop and flip: a timm "
                                      "RandAugment string (rand-m9-mstd0.5, rand-m7-mstd0.5-inc1), a timm AutoAugment "
                                      "policy (original, originalr, v0, v0r, 3a), augmix-..., or trivialaugment "
                                      "(torchvision TrivialAugmentWide); null: none", example="rand-m9-mstd0.5")
    random_erasing: float = key(0.0, "probability of timm's RandomErasing per training image (on the device, after "
                                "normalisation)", ge=0, le=1, example=0.25)
    random_erasing_mode: str = key("pixel", "random erasing fill: const (zeros) | rand (one colour per box) | pixel "
                                   "(noise per pixel)", choices=("const", "rand", "pixel"))
    random_erasing_count: int = key(1, "random erasing: up to this many boxes per image", ge=1, le=64, example=1)
    mixup: float = key(0.0, "mixup alpha (timm Mixup, on the device on the batch); 0: off", ge=0, le=100,
                       example=0.2)
    cutmix: float = key(0.0, "cutmix alpha (timm Mixup, on the device on the batch); 0: off", ge=0, le=100,
                        example=1.0)
    mixup_prob: float = key(1.0, "probability of mixing a batch (or an element) at all", ge=0, le=1, example=1.0)
    mixup_switch_prob: float = key(0.5, "with both mixup and cutmix on: probability of cutmix instead of mixup", ge=0,
                                   le=1, example=0.5)
    mixup_mode: str = key("batch", "mix parameters per batch | per pair | per element", choices=("batch", "pair",
                                                                                                 "elem"))
    fake: FakeDataConfig = section(FakeDataConfig, "data=fake: sizes of the random dataset")
    generate: ShapesConfig = section(ShapesConfig, "data=shapes: how the embedded dataset is generated")
    shapes_det: ShapesDetConfig = section(ShapesDetConfig, "data=shapes_det: how the embedded detection dataset "
                                          "is generated")
    shapes_attr: ShapesAttrConfig = section(ShapesAttrConfig, "data=shapes_attr: how the embedded multi-label "
                                            "dataset is generated")


# ----------------------------------------------------------------------------- optimizer, schedule


@dataclass
class OptimConfig:
    name: str = key("rmsprop", "optimizer (set by the optim= option): rmsprop (TensorFlow's, timm RMSpropTF) | sgd | "
                    "adamw | lamb (timm create_optimizer_v2)", choices=("rmsprop", "sgd", "adamw", "lamb"))
    lr: float = key(0.045, "base learning rate for a global batch of optim.lr_batch (see scale_lr)", gt=0,
                    example=0.045)
    scale_lr: bool = key(True, "scale optim.lr with data.batch_size / optim.lr_batch (see lr_scaling)")
    lr_batch: int = key(256, "the global batch optim.lr is given for", ge=1, example=256)
    lr_scaling: str = key("linear", "how lr follows the batch: linear (lr x ratio) | sqrt (lr x sqrt(ratio): timm's "
                          "rule for Adam-family and LAMB optimizers)", choices=("linear", "sqrt"))
    betas: list[float] = key(None, "adamw, lamb: (beta1, beta2)", factory=lambda: [0.9, 0.999], length=2, ge=0, lt=1,
                             example="[0.6,0.999]")
    decay: float = key(0.9, "rmsprop: decay (rho) of the mean square", gt=0, lt=1, example=0.9)
    momentum: float = key(0.9, "momentum", ge=0, lt=1, example=0.9)
    eps: float = key(1.0, "rmsprop: epsilon (inside the square root, as TensorFlow); adamw, lamb: epsilon", gt=0,
                     le=10, example=1.0)
    nesterov: bool = key(True, "sgd: Nesterov momentum")
    weight_decay: float = key(4e-5, "L2 on conv and FC weights (TF-slim's regularizer); adamw, lamb: decoupled decay",
                              ge=0, lt=1, example=4e-5)
    decay_depthwise: bool = key(False, "also decay depthwise filters (the paper: little or none)")
    decay_norm: bool = key(False, "also decay BN gamma and beta")
    decay_bias: bool = key(False, "also decay biases")
    label_smoothing: float = key(0.0, "label smoothing of the loss (inside mixup/cutmix when on; the paper: none)",
                                 ge=0, lt=1, example=0.1)
    loss: str = key("ce", "ce: cross-entropy | bce: timm's BinaryCrossEntropy (per-class sigmoid)",
                    choices=("ce", "bce"))
    bce_target_thresh: float | None = key(None, "bce: targets at or above this become 1, the rest 0 (timm's "
                                             "target_threshold); null: soft targets", ge=0, le=1, example=0.2)


@dataclass
class SchedConfig:
    name: str = key("exponential", "schedule (set by the sched= option): exponential (x decay_rate every "
                    "decay_epochs, staircase: TF-slim) | cosine", choices=("exponential", "cosine"))
    warmup_epochs: float = key(0.0, "linear warmup from warmup_lr_init (epochs, fractions allowed)", ge=0,
                               example=5)
    warmup_lr_init: float = key(1e-6, "absolute lr at step 0 of the warmup", ge=0, example=1e-6)
    decay_epochs: float = key(2.0, "exponential: epochs between decays", gt=0, example=2.0)
    decay_rate: float = key(0.94, "exponential: lr factor per decay", gt=0, le=1, example=0.94)
    min_lr: float = key(0.0, "cosine: lr at the last step", ge=0, example=0.0)


# ----------------------------------------------------------------------------- trainer


@dataclass
class EmaConfig:
    enabled: bool = key(False, "keep an EMA of the weights (timm ModelEmaV3) and evaluate it too")
    decay: float = key(0.9998, "EMA decay per optimizer step (1: the EMA stays the start weights)", gt=0, le=1,
                       example=0.9998)
    warmup: bool = key(False, "timm's EMA warmup (a lower decay early on)")


@dataclass
class TrainerConfig:
    epochs: int = key(100, "epochs to train (a resumed run trains up to this many)", ge=1, example=100)
    device: str = key("auto", "auto (cuda if available, else cpu) | cpu | cuda | cuda:N", example="cpu")
    amp: str = key("none", "mixed precision: none | bf16 (CPU or GPU) | fp16 (GPU, with GradScaler)",
                   choices=("none", "bf16", "fp16"))
    channels_last: bool = key(True, "NHWC memory format on the device")
    compile: bool = key(False, "torch.compile the training model")
    compile_mode: str = key("default", "torch.compile's mode with trainer.compile: default | reduce-overhead (CUDA "
                            "graphs) | max-autotune | max-autotune-no-cudagraphs",
                            choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    accum_steps: int = key(1, "gradient accumulation: micro-batches per optimizer step", ge=1, le=1024, example=2)
    grad_clip: float = key(0.0, "max global grad norm; 0 disables", ge=0, example=1.0)
    freeze_backbone_epochs: int = key(0, "fine-tuning: train only the classifier for this many epochs", ge=0,
                                      example=2)
    ema: EmaConfig = section(EmaConfig, "exponential moving average of the weights")
    eval_every_epochs: int = key(1, "validate every N epochs (and after the last)", ge=1, example=1)
    log_every_steps: int = key(50, "host syncs (loss, accuracy, NaN check) only every N optimizer steps", ge=1,
                               example=50)
    checkpoint_every_steps: int = key(0, "also write last.pt every N optimizer steps (0: once per epoch)", ge=0,
                                      example=1000)
    keep_last: int = key(1, "keep the N newest last.pt files (last.pt, last.1.pt, ...): auto-resume falls back to "
                         "the newest that reads", ge=1, le=100, example=3)
    resume: str = key("auto", "auto: resume from the newest checkpoint of <run dir>/checkpoints that reads (last.pt, "
                      "last.N.pt, best.pt) | PATH | none", example="none")
    max_loss_ratio: float = key(1000.0, "stop when a log window's training loss exceeds this many times the first one "
                                "of the process (an exploding loss); 0 disables", ge=0, example=1000.0)
    progress: str = key("auto", "progress bar: auto (when stderr is a terminal) | true | false",
                        choices=("auto", "true", "false"))
    deterministic: bool = key(False, "bit-reproducible CPU runs: deterministic algorithms")
    sync_bn: bool = key(False, "distributed: SyncBatchNorm across ranks (CUDA only)")
    dist_timeout_s: int = key(300, "distributed: give up (one clear error) if the process group cannot form in time",
                              ge=1, example=300)


# ----------------------------------------------------------------------------- quantization-aware training


@dataclass
class QatConfig:
    enabled: bool = key(False, "fine-tune with fake quantization in the graph (PT2E QAT; see +experiment=qat)")
    target: str = key("tflite", "the int8 export whose quantizer is trained for: tflite (litert-torch's) | "
                      "executorch, onnx (XNNPACK's)", choices=("tflite", "executorch", "onnx"))
    freeze_bn_steps: int = key(200, "BN statistics stay fixed (BN folded with its running statistics) once this "
                               "many optimizer steps are done (0: from the start)", ge=0, example=200)
    freeze_observer_steps: int = key(400, "activation and weight ranges stay fixed once this many optimizer steps "
                                     "are done (0: from the start)", ge=0, example=400)


# ----------------------------------------------------------------------------- distillation


@dataclass
class DistillConfig:
    teacher: str | None = key(None, "knowledge distillation from this teacher: a toolkit checkpoint (trained or "
                                 "mobilenet-import'ed), a timm MobileNet v1 .safetensors / Hub folder, or timm:NAME "
                                 "(with distill.teacher_weights); null: none",
                              example="teacher.pt")
    teacher_weights: str | None = key(None, "distill.teacher=timm:NAME: its local weights file (.safetensors, "
                                         ".pth); never downloaded", example="resnet50.safetensors")
    alpha: float = key(0.5, "weight of the distillation loss; the label loss gets 1 - alpha (1: pure function "
                       "matching, labels unused)", ge=0, le=1, example=0.5)
    temperature: float = key(1.0, "temperature T of the logits and attributes losses (scaled by T^2, as timm's "
                             "logit distillation)", gt=0, le=100, example=4.0)
    target: str = key("logits", "what the student learns from the teacher: logits (softmax KL; task=classification) "
                      "| attributes (the sigmoid outputs of a multi-label teacher; task=multilabel) | embedding "
                      "(squared L2 to the teacher's embedding; task=embedding)",
                      choices=("logits", "attributes", "embedding"))
    teacher_output: str | None = key(None, "distill.target=embedding: the teacher module whose output is the "
                                        "embedding (e.g. a timm teacher's global_pool; pooled when spatial); null: "
                                        "the layer before the classifier", example="global_pool")
    normalize: bool = key(False, "distill.target=embedding: L2-normalise the teacher's and the student's embeddings "
                          "before the squared distance (FaceNet's embeddings are unit vectors)")

# ----------------------------------------------------------------------------- detection


DETECTION_HEADS = ("ssd", "ssd3x3", "ssdlite")


@dataclass
class DetectionConfig:
    """task=detection: SSD on the MobileNet v1 backbone (torchvision.models.detection.SSD)."""

    arch: str = key("ssd", "ssd: SSD (torchvision's SSD; Table 13's SSD 300) | faster_rcnn: torchvision's "
                    "FasterRCNN, features from block 11, blocks 12-13 per RoI (Table 13's Faster-RCNN rows)",
                    choices=("ssd", "faster_rcnn"))
    proposals: int = key(300, "faster_rcnn: RPN proposals kept after its NMS at test time (Table 13 counts 300)",
                         ge=1, example=300)
    head: str = key("ssd", "ssd: 1x1 conv box predictors, TF ssd_mobilenet_v1 (the paper's Table 13) | ssd3x3: "
                    "torchvision's SSDHead (3x3 convs) | ssdlite: torchvision's SSDLiteHead (depthwise-separable "
                    "3x3) with depthwise-separable extra layers", choices=DETECTION_HEADS)
    min_ratio: float = key(0.2, "anchor scale of the first feature map (fraction of the input side)", gt=0, lt=1,
                           example=0.2)
    max_ratio: float = key(0.95, "anchor scale of the last feature map", gt=0, le=1, example=0.95)
    iou_thresh: float = key(0.5, "matcher: an anchor with this IoU or more with a box is its positive", gt=0, lt=1,
                            example=0.5)
    positive_fraction: float = key(0.25, "hard-negative mining: positives per (positives + negatives) in the loss "
                                   "(0.25: 3 negatives per positive)", gt=0, lt=1, example=0.25)
    score_thresh: float = key(0.01, "detections below this class score are dropped before NMS", ge=0, lt=1,
                              example=0.01)
    nms_thresh: float = key(0.45, "per-class NMS IoU threshold", gt=0, le=1, example=0.6)
    detections_per_img: int = key(100, "detections kept per image after NMS (COCO scores the top 100)", ge=1,
                                  example=100)
    topk_candidates: int = key(400, "candidates per class kept before NMS", ge=1, example=400)
    score_fn: str = key("softmax", "class logits to scores: softmax (torchvision's SSD, trained with softmax "
                        "cross-entropy) | sigmoid (TF's SSD, trained with per-class sigmoid cross-entropy)",
                        choices=("softmax", "sigmoid"))
    nms_mode: str = key("per_class", "per_class: NMS within each class (torchvision) | best_class: each anchor's "
                        "best class, one NMS over all (TF-Lite's TFLite_Detection_PostProcess)",
                        choices=("per_class", "best_class"))
    box_scales: list[float] = key(None, "box coder scales y, x, h, w (TF's names; torchvision's SSD: 10, 10, 5, 5)",
                                  factory=lambda: [10.0, 10.0, 5.0, 5.0], length=4, gt=0,
                                  example="[10,10,5,5]")
    clip_anchors: bool = key(True, "clip the anchors to the image (torchvision's default; TF's SSD does not)")
    augment: str = key("ssd", "training augmentation: ssd (photometric distort, zoom out, IoU crop, flip: SSD's) | "
                       "flip (only data.hflip: short runs on the embedded set)", choices=("ssd", "flip"))


# ----------------------------------------------------------------------------- the whole config


TASKS = ("classification", "detection", "multilabel", "embedding")
# distill.target per task: what a teacher's output means for the student.
DISTILL_TARGETS = {"classification": "logits", "multilabel": "attributes", "embedding": "embedding"}


@dataclass
class TrainConfig:
    """The top level of `mobilenet-train`'s config (configs/train.yaml)."""

    model: ModelConfig = section(ModelConfig, "the network (model= options)")
    data: DataConfig = section(DataConfig, "the dataset and its preprocessing (data= options)")
    optim: OptimConfig = section(OptimConfig, "the optimizer (optim= options)")
    sched: SchedConfig = section(SchedConfig, "the learning-rate schedule (sched= options)")
    trainer: TrainerConfig = section(TrainerConfig, "the training loop (trainer= options)")
    qat: QatConfig = section(QatConfig, "quantization-aware training (+experiment=qat)")
    distill: DistillConfig = section(DistillConfig, "knowledge distillation from a teacher (distill.teacher=...)")
    task: str = key("classification", "classification (ImageNet, the paper's sections 4.1-4.4) | detection (SSD "
                    "on the MobileNet backbone, section 4.6; see +experiment=ssd_coco) | multilabel (one sigmoid per "
                    "attribute, mean AP: section 4.5; see +experiment=attributes) | embedding (a vector per image "
                    "learnt from a teacher's, retrieval and verification: section 4.7; see +experiment=embedding)",
                    choices=TASKS)
    detection: DetectionConfig = section(DetectionConfig, "task=detection: the SSD detector")
    seed: int = key(0, "seed of everything: weights, sampling, augmentation (per sample), dropout", ge=0,
                    le=2**32 - 1, example=0)
    run_name: str = key("mobilenet_v1", "a readable name for the run: the default run dir and TensorBoard",
                        example="my_run")


# The config groups: the group name, its schema, and the YAML options in configs/<group>/.
GROUPS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "sched": SchedConfig,
          "trainer": TrainerConfig}


# ----------------------------------------------------------------------------- command options


@dataclass
class EvalOptions:
    """Keys of `mobilenet-eval` itself (everything else is a key of the checkpoint's config)."""

    use_ema: bool = key(False, "evaluate the checkpoint's EMA weights")
    embedding: bool = key(False, "score a classifier's pooled features (the layer before its classifier) as an "
                          "embedding: retrieval and verification on the labelled val split, as task=embedding "
                          "checkpoints are scored")
    out: str | None = key(None, "where eval.json goes (default: beside the checkpoint)", example="eval.json")
    device: str = key("auto", "auto | cpu | cuda | cuda:N", example="cpu")
    amp: str = key("none", "autocast: none | bf16 | fp16 (CUDA)", choices=("none", "bf16", "fp16"))
    progress: str = key("auto", "progress bar: auto | true | false", choices=("auto", "true", "false"))
    threads: int = key(0, "exported files (.onnx, .pte, .tflite): the runtime's threads (0: all cores)", ge=0,
                       le=1024, example=1)


@dataclass
class ImportOptions:
    """Keys of `mobilenet-import` itself (model.* settings and config keys are the config's)."""

    keep_background: bool = key(False, "TF-Lite: keep the background logit (1001 classes)")


@dataclass
class ReportOptions:
    """Keys of `mobilenet-report` (everything else on its command line is a path)."""

    out: str = key("report", "directory for report.md, report.csv and the plots", example="report")
    tb: str | None = key(None, "also write every run's scalars to this TensorBoard dir", example="tb_sweep")


@dataclass
class ExportOptions:
    """Keys of `mobilenet-export` (besides --format/--quantize; data.* keys are the checkpoint's config)."""

    out: str | None = key(None, "output file (default: the checkpoint's name, beside it)", example="model.onnx")
    calibration: str | None = key(None, "int8: a folder of calibration images (default: the checkpoint's train "
                                     "split)", example="/datasets/imagenet/train")
    num_calibration: int = key(100, "int8: calibration images, spread over the folder", ge=1, example=100)
    eval: str | None = key(None, "a labelled ImageFolder: top-1 of PyTorch fp32 vs the export",
                              example="/datasets/imagenet/val")
    num_verify: int = key(8, "images the file is checked against PyTorch on", ge=1, example=8)
    max_batch: int = key(8, "ExecuTorch: the largest batch the program takes", ge=1, le=1024, example=8)


@dataclass
class LatencyOptions:
    """Keys of `mobilenet-bench latency` (model.* and data.* keys describe a model without a checkpoint)."""

    batch: int = key(8, "the batch N timed besides batch 1", ge=1, le=4096, example=8)
    runs: int = key(50, "timed rounds (one call of every backend each)", ge=1, example=50)
    warmup: int = key(10, "rounds before those, not counted", ge=0, example=10)
    threads: str = key("1,all", "thread counts, e.g. 1,all or 1,2", example="1,2")
    backends: str = key("all", "all, or some of pytorch,compile,onnx-fp32,onnx-int8,executorch-fp32,"
                        "executorch-int8,tflite-fp32,tflite-int8", example="pytorch,onnx-int8")
    out: str | None = key(None, "latency.json to write (default: the run dir, else the current dir)",
                             example="latency.json")
    calibration: str | None = key(None, "int8: a folder of calibration images", example="/datasets/imagenet/val")
    num_calibration: int = key(32, "int8: calibration images", ge=1, example=32)


@dataclass
class ProfileOptions:
    """Keys of `mobilenet-bench profile MODEL.onnx`."""

    threads: int = key(1, "ONNX Runtime's intra-op threads", ge=1, le=1024, example=1)
    runs: int = key(50, "profiled runs (after a few warm-up runs)", ge=1, example=50)
    batch: int = key(1, "images per run", ge=1, le=4096, example=1)


COMMAND_OPTIONS: dict[str, type] = {"mobilenet-eval": EvalOptions, "mobilenet-import": ImportOptions,
                                    "mobilenet-report": ReportOptions, "mobilenet-export": ExportOptions,
                                    "mobilenet-bench latency": LatencyOptions,
                                    "mobilenet-bench profile": ProfileOptions}


# ----------------------------------------------------------------------------- checks


def leaf_fields(cls: type, prefix: str = ""):
    """(dotted key, dataclass field) of every leaf key of `cls`, nested sections included."""
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        if f.metadata.get("section"):
            yield from leaf_fields(f.default_factory, f"{name}.")
        else:
            yield name, f


def find_field(cls: type, dotted: str):
    """The field for `dotted` (e.g. 'trainer.ema.decay') in `cls`, or None."""
    for name, f in leaf_fields(cls):
        if name == dotted:
            return f
    return None


def type_name(f) -> str:
    """'int', 'float', 'bool', 'str', 'list[float]' (None allowed or not: see `optional`)."""
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.removesuffix(" | None")


def optional(f) -> bool:
    return str(f.type).endswith("| None")


def allowed(f) -> str:
    """What a field allows, in words: 'a float in (0, 1]', 'one of relu, relu6'."""
    m = f.metadata
    if m.get("choices"):
        return "one of " + ", ".join(m["choices"])
    t = type_name(f)
    words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
             "list[float]": f"a list of {m.get('length') or 'some'} numbers"}.get(t, t)
    low = f"{'>=' if m.get('ge') is not None else '>'} {_fmt(m['ge'] if m.get('ge') is not None else m['gt'])}" \
        if m.get("ge") is not None or m.get("gt") is not None else ""
    high = f"{'<=' if m.get('le') is not None else '<'} {_fmt(m['le'] if m.get('le') is not None else m['lt'])}" \
        if m.get("le") is not None or m.get("lt") is not None else ""
    bounds = " and ".join(b for b in (low, high) if b)
    if t.startswith("list") and bounds:
        return f"{words}, each {bounds}"
    return f"{words}{' ' + bounds if bounds else ''}{' (or null)' if optional(f) else ''}"


def example(f, name: str) -> str:
    m = f.metadata
    value = m.get("example")
    if value is None and m.get("choices"):
        value = m["choices"][-1] if f.default == m["choices"][0] else m["choices"][0]
    if value is None and f.default is not dataclasses.MISSING and not isinstance(f.default, str | type(None)):
        value = f.default
    if value is None and type_name(f) == "bool":
        value = not f.default
    if isinstance(value, bool):
        value = str(value).lower()
    return f"{name}={value}" if value is not None else f"{name}=..."


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def bad_value(name: str, value, f, problem: str = "") -> UserError:
    shown = "null" if value is None else (str(value).lower() if isinstance(value, bool) else value)
    what = f" ({problem})" if problem else ""
    return UserError(f"{name}={shown} is not allowed{what}: {name} takes {allowed(f)}, e.g. {example(f, name)}")


def check_value(name: str, value, f) -> None:
    """Raise UserError if `value` breaks the range or the choices of field `f`."""
    m = f.metadata
    if value is None or isinstance(value, str) and value == MISSING:
        return  # Optional fields; mandatory values are reported by the resolver (throw_on_missing)
    values = list(value) if isinstance(value, list | tuple) or hasattr(value, "__len__") and not isinstance(
        value, str) else [value]
    if m.get("length") is not None and len(values) != m["length"]:
        raise bad_value(name, value, f, f"{len(values)} values")
    word = str(value).lower() if isinstance(value, bool) else str(value)  # trainer.progress=true
    if m.get("choices") and word not in m["choices"]:
        raise bad_value(name, value, f)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise bad_value(name, value, f, "not finite")
        if (m.get("ge") is not None and v < m["ge"]) or (m.get("gt") is not None and v <= m["gt"]) or \
                (m.get("le") is not None and v > m["le"]) or (m.get("lt") is not None and v >= m["lt"]):
            raise bad_value(name, value, f, "out of range")


def check(cls: type, values: Mapping, prefix: str = "") -> None:
    """Every key of `values` that `cls` describes keeps its range and choices."""
    for name, f in leaf_fields(cls):
        node = values
        for part in name.split("."):
            if node is None or part not in node:
                node = _ABSENT
                break
            node = node[part]
        if node is not _ABSENT:
            check_value(prefix + name, node, f)


_ABSENT = object()


# ----------------------------------------------------------------------------- rules between keys


def _crop_ratio_ordered(cfg) -> None:
    low, high = cfg.data.crop_ratio
    if low > high:
        raise UserError(f"data.crop_ratio=[{low},{high}] is not a range: give [low,high] with low <= high, "
                        f"e.g. data.crop_ratio=[0.75,1.3333]")


def _shards_format(cfg) -> None:
    if cfg.data.name == "imagenet_shards" and cfg.data.format != "shards":
        raise UserError(f"data=imagenet_shards reads shards but data.format={cfg.data.format}: drop the override "
                        f"(or use data=imagenet for folders)")


def _device_name(cfg) -> None:
    device = str(cfg.trainer.device)
    head, _, index = device.partition(":")
    if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
        raise UserError(f"trainer.device={device} is not a device: use auto, cpu, cuda or cuda:N, "
                        f"e.g. trainer.device=cpu")


def _resume_value(cfg) -> None:
    if not str(cfg.trainer.resume).strip():
        raise UserError("trainer.resume is empty: use auto, none, or a path to a checkpoint, e.g. trainer.resume=none")


def _qat_alone(cfg) -> None:
    """QAT trains a captured graph: no module tree to freeze, compile or convert to SyncBatchNorm; and an EMA
    would average its observer ranges and fake-quant scales, which the export takes as they were trained."""
    if not cfg.qat.enabled:
        return
    for name, value in (("trainer.freeze_backbone_epochs", cfg.trainer.freeze_backbone_epochs),
                        ("trainer.compile", cfg.trainer.compile), ("trainer.sync_bn", cfg.trainer.sync_bn),
                        ("trainer.ema.enabled", cfg.trainer.ema.enabled)):
        if value:
            raise UserError(f"qat.enabled=true does not combine with {name}={str(value).lower()}: drop it")


def _teacher_weights(cfg) -> None:
    d = cfg.get("distill")
    if d is None:
        return
    timm_teacher = str(d.teacher or "").startswith("timm:")
    if timm_teacher and not d.teacher_weights:
        raise UserError(f"distill.teacher={d.teacher} needs its weights as a local file (nothing is downloaded): "
                        f"pass distill.teacher_weights=FILE, e.g. distill.teacher_weights=model.safetensors")
    if d.teacher_weights and not timm_teacher:
        raise UserError(f"distill.teacher_weights={d.teacher_weights} is only read for distill.teacher=timm:NAME "
                        f"(a toolkit checkpoint holds its own weights): drop it, or set distill.teacher=timm:NAME")


AUTO_AUGMENT_POLICIES = ("original", "originalr", "v0", "v0r", "3a", "trivialaugment")


def _auto_augment_name(cfg) -> None:
    name = cfg.data.get("auto_augment")
    if name and not (str(name) in AUTO_AUGMENT_POLICIES or str(name).startswith(("rand-", "augmix-"))):
        raise UserError(f"data.auto_augment={name} is not an augmentation: use a timm RandAugment string "
                        f"(rand-...), augmix-..., or one of {', '.join(AUTO_AUGMENT_POLICIES)}, "
                        f"e.g. data.auto_augment=rand-m9-mstd0.5")


MULTILABEL_DATA = ("attributes", "shapes_attr")


def _task_data(cfg) -> None:
    """Multi-label datasets feed task=multilabel, and only those do."""
    task, name = cfg.get("task", "classification"), cfg.data.name
    if task != "detection" and (name in MULTILABEL_DATA) != (task == "multilabel"):
        fix = "task=multilabel" if name in MULTILABEL_DATA else "data=attributes (a label table) or data=shapes_attr"
        raise UserError(f"data={name} does not fit task={task}: multi-label label tables go with task=multilabel; "
                        f"use {fix}")


def _task_training(cfg) -> None:
    """What each task's loss needs: per-attribute sigmoids, a teacher for embeddings, hard labels for mixing."""
    task, d = cfg.get("task", "classification"), cfg.get("distill")
    if task == "multilabel":
        if cfg.optim.loss != "bce":
            raise UserError("task=multilabel trains one sigmoid per attribute: set optim.loss=bce")
        for name in ("mixup", "cutmix"):
            if cfg.data[name] > 0:
                raise UserError(f"data.{name}={cfg.data[name]:g} mixes class labels, not attributes: set "
                                f"data.{name}=0 for task=multilabel")
    if task == "embedding" and not (d and d.teacher and d.target == "embedding" and d.alpha == 1):
        raise UserError("task=embedding learns only from a teacher's embeddings: set distill.teacher=CKPT "
                        "distill.target=embedding distill.alpha=1 (see +experiment=embedding)")
    if task in ("multilabel", "embedding") and cfg.qat.enabled:
        raise UserError(f"qat.enabled=true trains classifiers (task=classification), not task={task}: drop it")


def _distill_target(cfg) -> None:
    d, task = cfg.get("distill"), cfg.get("task", "classification")
    if d is None:
        return
    want = DISTILL_TARGETS.get(task)
    if d.teacher and d.target != want:
        raise UserError(f"distill.target={d.target} does not fit task={task}: a {task} student learns from "
                        f"distill.target={want}")
    if (d.teacher_output or d.normalize) and d.target != "embedding":
        name = "distill.teacher_output" if d.teacher_output else "distill.normalize"
        raise UserError(f"{name} applies to distill.target=embedding only: drop it")


CROSS_CHECKS: tuple[Callable, ...] = (_crop_ratio_ordered, _shards_format, _device_name, _resume_value,
                                      _teacher_weights, _auto_augment_name, _qat_alone, _task_data, _task_training,
                                      _distill_target)
