"""Knowledge distillation (`distill.*`): the teacher, its input and the loss.

The loss is timm's logit distillation (`timm.task.LogitDistillationTask`, loss_type kl) with
`distill.alpha` as its distill weight and 1 - alpha as its task weight:

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label loss

with the KL averaged over the batch (batchmean), so numbers carry over from timm. alpha 1 is
pure function matching: the labels are not used. `distill.target` names what is matched:
`logits` (the above), `attributes` (a multi-label teacher's sigmoids: the per-attribute Bernoulli
KL, section 4.5) or `embedding` (squared L2 to the teacher's embedding, section 4.7: the layer
before its classifier or `distill.teacher_output`; the student's embedding head is the learned
projection when the sizes differ). The teacher sees the student's augmented
batch (mixup/cutmix included), in eval mode without gradients; the batch is brought to the
teacher's own normalisation and resolution on the device when they differ.

A teacher is a toolkit checkpoint (trained, or imported by mobilenet-import), timm MobileNet v1
weights as safetensors (a file or a Hub folder, imported in memory), or `timm:NAME` with a local
weights file (`distill.teacher_weights`; nothing is downloaded).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import model_from_checkpoint
from ..data import NORMALIZATION
from ..errors import UserError
from ..importer import load_weights
from ..weights.timm_model import read_state_dict
from .setup import autocast

log = logging.getLogger("mobilenet_train")

TIMM_PREFIX = "timm:"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """timm's KL term: batchmean KL(teacher || student) at temperature T, times T^2 (in float32)."""
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature ** 2


def attribute_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-attribute Bernoulli KL(teacher || student) at temperature T, times T^2, averaged over images and
    attributes: the sigmoid cross-entropy to the teacher's soft targets less their entropy (zero when equal)."""
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    p = torch.sigmoid(t)
    return (F.binary_cross_entropy_with_logits(s, p) - F.binary_cross_entropy_with_logits(t, p)) * temperature ** 2


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Squared L2 distance between the student's and the teacher's embeddings, averaged over the batch
    (section 4.7), after L2-normalising both when `normalize`."""
    s, t = student.float(), teacher.float()
    if normalize:
        s, t = F.normalize(s, dim=1), F.normalize(t, dim=1)
    return (s - t).pow(2).sum(1).mean()


@dataclass
class LoadedTeacher:
    """A teacher network with what its input needs and who it is."""

    model: nn.Module
    resolution: int
    mean: tuple[float, float, float]  # of 0..1 pixels
    std: tuple[float, float, float]
    identity: dict                    # path, sha256, val_top1 (None when not recorded), num_classes


def load_teacher(distill_cfg, classes: list[str]) -> LoadedTeacher:
    """The configured teacher, checked against the dataset's classes (attributes), unless it lends
    embeddings; any problem is one UserError."""
    spec, target = str(distill_cfg.teacher), str(distill_cfg.target)
    if spec.startswith(TIMM_PREFIX):
        if target == "attributes":
            raise UserError(f"distill.teacher={spec}: distill.target=attributes needs a multi-label teacher trained "
                            f"by mobilenet-train (task=multilabel) on the same attributes")
        return _timm_teacher(spec[len(TIMM_PREFIX):], distill_cfg.teacher_weights,
                             None if target == "embedding" else len(classes))
    return _toolkit_teacher(Path(spec).expanduser(), None if target == "embedding" else classes, target)


def _toolkit_teacher(path: Path, classes: list[str] | None, target: str = "logits") -> LoadedTeacher:
    if not path.exists():
        raise UserError(f"distill.teacher={path}: no such checkpoint file (pass a mobilenet-train checkpoint, "
                        f"e.g. outputs/run/checkpoints/best.pt, a timm MobileNet v1 model.safetensors, or timm:NAME "
                        f"with distill.teacher_weights=FILE)")
    ckpt = load_weights(path, "distill.teacher")
    if "import" in ckpt and ckpt["import"]["format"] == "timm":
        path = Path(ckpt["import"]["sources"][0])  # the weights file of a Hub folder
    model, args = model_from_checkpoint(ckpt)
    task = (ckpt.get("config") or {}).get("task", "classification")
    want = {"logits": "classification", "attributes": "multilabel"}.get(target)  # embedding: any network's
    if want is not None and task != want:
        raise UserError(f"distill.teacher={path} is a task={task} model; distill.target={target} needs a "
                        f"task={want} teacher")
    theirs = ckpt.get("classes")
    if classes is not None and (args.num_classes != len(classes) or (theirs is not None
                                                                     and list(theirs) != list(classes))):
        what = f"{args.num_classes} classes" if args.num_classes != len(classes) else "other classes"
        raise UserError(f"distill.teacher={path} predicts {what} than the dataset's {len(classes)} "
                        f"({', '.join(classes[:3])}, ...): a teacher must be trained on the same class set")
    config = ckpt.get("config") or {}
    norm = (config.get("data") or {}).get("normalization", "inception")
    mean, std = NORMALIZATION[norm]
    metrics = ckpt.get("metrics") or {}
    top1 = metrics.get("val_top1", ckpt.get("best_val_top1"))
    if top1 is not None and top1 < 0:
        top1 = None
    if target == "attributes":
        top1 = metrics.get("val_map", ckpt.get("best_val_top1"))  # the state's best holds the task's score
    identity = {"path": str(path), "sha256": file_sha256(path), "val_top1": top1, "num_classes": args.num_classes,
                "kind": "checkpoint"}
    return LoadedTeacher(model, args.resolution, mean, std, identity)


def _timm_teacher(name: str, weights: str | None, num_classes: int | None) -> LoadedTeacher:
    """`num_classes` None: an embedding teacher, whose classifier keeps the size its weights have."""
    import timm

    if not timm.is_model(name):
        raise UserError(f"distill.teacher=timm:{name}: timm has no model of that name (list them with "
                        f"python -c 'import timm; print(timm.list_models(\"*{name[:6]}*\"))')")
    path = Path(str(weights or "")).expanduser()
    if not weights or not path.is_file():
        raise UserError(f"distill.teacher=timm:{name}: distill.teacher_weights={weights} is not a file; give the "
                        f"teacher's weights as a local file (nothing is downloaded)")
    state = read_state_dict(path, "distill.teacher_weights")
    if num_classes is None:
        probe = timm.create_model(name, pretrained=False)
        head = probe.get_classifier()
        weight = state.get(f"{_module_name(probe, head)}.weight") if isinstance(head, nn.Module) else None
        num_classes = int(weight.shape[0]) if weight is not None else probe.num_classes
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"distill.teacher_weights={path} does not fit timm:{name} with {num_classes} classes "
                        f"(the dataset's): {first}") from None
    cfg = model.pretrained_cfg
    identity = {"path": f"{TIMM_PREFIX}{name}", "weights": str(path), "sha256": file_sha256(path), "val_top1": None,
                "num_classes": num_classes, "kind": "timm"}
    return LoadedTeacher(model, int(cfg["input_size"][-1]), tuple(cfg["mean"]), tuple(cfg["std"]), identity)


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


class EmbeddingOf(nn.Module):
    """A teacher network's embedding: the output of its module `output` (spatial outputs pooled), or by
    default the layer before its classifier (a toolkit MobileNet's pooled features, an embedding
    network's own output, a timm model's pre-logits)."""

    def __init__(self, model: nn.Module, output: str | None, where: str):
        super().__init__()
        self.model, self.output = model, output
        if output is not None:
            modules = dict(model.named_modules())
            if output not in modules or not output:
                names = [n for n, _ in model.named_children()]
                raise UserError(f"distill.teacher_output={output}: {where} has no module of that name (its "
                                f"top-level modules: {', '.join(names)}); name one, e.g. "
                                f"distill.teacher_output={names[-2] if len(names) > 1 else names[0]}")
            self.hook = modules[output]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output is not None:
            seen = []
            handle = self.hook.register_forward_hook(lambda _m, _i, out: seen.append(out))
            try:
                self.model(x)
            finally:
                handle.remove()
            out = seen[-1]
            return out.mean((2, 3)) if out.dim() == 4 else out.flatten(1)
        if getattr(getattr(self.model, "args", None), "embedding_dim", 0):
            return self.model(x)  # an embedding network
        if hasattr(self.model, "forward_pooled"):
            return self.model.forward_pooled(x)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)  # timm


class Distiller:
    """The teacher on the device and the loss; the loop calls `teacher_outputs` then `loss`.

    `target`: logits (softmax KL), attributes (per-attribute sigmoid KL) or embedding (squared L2 to
    the teacher's embedding, `normalize`: of unit vectors); `embedding_dim` is the teacher's."""

    def __init__(self, teacher: LoadedTeacher, alpha: float, temperature: float, student_normalization: str,
                 student_resolution: int, device: torch.device, channels_last: bool, amp: torch.dtype | None,
                 target: str = "logits", teacher_output: str | None = None, normalize: bool = False):
        self.alpha, self.temperature, self.amp = float(alpha), float(temperature), amp
        self.target, self.normalize = target, bool(normalize)
        self.identity = {**teacher.identity, "target": target}
        model = teacher.model.eval().requires_grad_(False)
        if target == "embedding":
            model = EmbeddingOf(model, teacher_output, f"distill.teacher={teacher.identity.get('path')}")
        self.model = model.to(device)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.teacher_resolution = teacher.resolution
        self.resolution = teacher.resolution if teacher.resolution != student_resolution else None
        s_mean, s_std = NORMALIZATION[student_normalization]
        self.renormalize = None
        if (tuple(s_mean), tuple(s_std)) != (tuple(teacher.mean), tuple(teacher.std)):
            # x_teacher = (x_student * s_std + s_mean - t_mean) / t_std, as one scale and shift.
            t_mean, t_std = torch.tensor(teacher.mean), torch.tensor(teacher.std)
            scale = torch.tensor(s_std) / t_std
            shift = (torch.tensor(s_mean) - t_mean) / t_std
            self.renormalize = (scale.view(1, 3, 1, 1).to(device), shift.view(1, 3, 1, 1).to(device))

    @torch.no_grad()
    def embedding_dim(self) -> int:
        """The size of the teacher's embedding (one probe image at its resolution, on its device)."""
        side = self.teacher_resolution
        device = next(self.model.parameters()).device
        return int(self.model(torch.zeros(1, 3, side, side, device=device)).shape[1])

    def teacher_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the student learns from for the batch `x`: logits, attribute logits or embeddings."""
        return self.teacher_logits(x)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's output for the student's (augmented, normalised) batch `x`."""
        if self.renormalize is not None:
            scale, shift = self.renormalize
            x = x * scale + shift
        if self.resolution is not None:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        with autocast(x.device, self.amp):
            return self.model(x).float()

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             label_loss: torch.Tensor | None) -> torch.Tensor:
        """alpha x the distillation term + (1 - alpha) x the label loss (not needed when alpha is 1)."""
        if self.target == "embedding":
            kd = embedding_loss(student_logits, teacher_logits, self.normalize)
        elif self.target == "attributes":
            kd = attribute_kd_loss(student_logits, teacher_logits, self.temperature)
        else:
            kd = kd_loss(student_logits, teacher_logits, self.temperature)
        if self.alpha >= 1.0 or label_loss is None:
            return kd
        return self.alpha * kd + (1.0 - self.alpha) * label_loss


def build_distiller(cfg, classes: list[str], device: torch.device, amp: torch.dtype | None) -> Distiller | None:
    """The Distiller of `cfg.distill` (None without a teacher), built before training starts."""
    dcfg = cfg.distill
    if not dcfg.teacher:
        return None
    teacher = load_teacher(dcfg, classes)
    log.info("distillation: teacher %s (sha256 %s..., val top-1 %s) at %d px, alpha %g, temperature %g",
             teacher.identity["path"], teacher.identity["sha256"][:12], teacher.identity["val_top1"],
             teacher.resolution, float(dcfg.alpha), float(dcfg.temperature))
    return Distiller(teacher, float(dcfg.alpha), float(dcfg.temperature), str(cfg.data.normalization),
                     int(cfg.model.resolution), device, bool(cfg.trainer.channels_last), amp, str(dcfg.target),
                     dcfg.teacher_output, bool(dcfg.normalize))


def teacher_record(distiller: Distiller | None, cfg) -> dict | None:
    """What a checkpoint keeps about the teacher (None without one)."""
    if distiller is None:
        return None
    return {**distiller.identity, "alpha": float(cfg.distill.alpha), "temperature": float(cfg.distill.temperature)}


def teacher_metrics(record: dict | None) -> dict:
    """Flat metrics.jsonl / TensorBoard hparams fields naming the teacher (none without one)."""
    if record is None:
        return {}
    out = {"teacher": record["path"], "teacher_sha256": record["sha256"], "distill_alpha": record["alpha"],
           "distill_temperature": record["temperature"], "distill_target": record.get("target", "logits")}
    if record.get("val_top1") is not None:
        out["teacher_val_top1"] = float(record["val_top1"])
    return out
