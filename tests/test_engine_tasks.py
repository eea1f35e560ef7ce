"""engine/tasks.py and the distillation targets of issue 22: the masked multi-label loss (missing labels
give no gradient), the running accuracy per task, the attribute and embedding distillation losses
(zero for a student equal to its teacher), the teacher's embedding, and the config rules between
task, data and distill.target."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import job_config

from mobilenet_train.engine.distill import Distiller, EmbeddingOf, LoadedTeacher, attribute_kd_loss, embedding_loss
from mobilenet_train.engine.loop import training_loss
from mobilenet_train.engine.setup import TrainParts
from mobilenet_train.engine.tasks import MaskedBCE, correct_count
from mobilenet_train.errors import UserError
from mobilenet_train.model import mobilenet_v1

NAN = float("nan")
INCEPTION = ((0.5,) * 3, (0.5,) * 3)


def test_masked_labels_contribute_no_gradient():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], requires_grad=True)
    target = torch.tensor([[1.0, NAN, 0.0], [NAN, NAN, 1.0]])
    loss = MaskedBCE()(logits, target)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0 and logits.grad[1, 1] == 0
    assert (logits.grad[0, 0] != 0) and (logits.grad[1, 2] != 0)
    # The mean runs over the three known labels only.
    known = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([1.0, 0.5, -1.0]), torch.tensor([1.0, 0.0, 1.0]))
    assert loss.item() == pytest.approx(known.item(), rel=1e-6)
    # Whatever the masked cells hold, the loss is the same.
    other = logits.detach().clone()
    other[0, 1], other[1, 0] = 50.0, -50.0
    assert MaskedBCE()(other, target).item() == pytest.approx(loss.item(), rel=1e-6)
    # An image without any label: no gradient at all, and no NaN.
    empty = torch.zeros(1, 3, requires_grad=True)
    MaskedBCE()(empty, torch.full((1, 3), NAN)).backward()
    assert empty.grad.abs().sum() == 0


def test_label_smoothing_moves_targets_to_one_half():
    logits, target = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])
    smoothed = MaskedBCE(0.2)(torch.tensor([[5.0, -5.0]]), target)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([5.0, -5.0]),
                                                                    torch.tensor([0.9, 0.1]))
    assert smoothed.item() == pytest.approx(expected.item(), rel=1e-6)
    assert MaskedBCE()(logits, target).item() == pytest.approx(0.6931, abs=1e-4)


def test_running_accuracy_per_task():
    logits = torch.tensor([[2.0, -1.0], [-1.0, 1.0]])
    assert correct_count("classification")(logits, torch.tensor([0, 0])).item() == 1
    assert correct_count("multilabel")(logits, torch.tensor([[1.0, 1.0], [0.0, NAN]])).item() == 1.5
    assert correct_count("embedding")(logits, torch.tensor([0, 1])).item() == 0


def test_attribute_distillation_is_zero_at_equality_and_a_bernoulli_kl():
    t = torch.tensor([[2.0, -1.0, 0.0]])
    assert attribute_kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.tensor([[0.5, 0.5, -3.0]])
    p, q = torch.sigmoid(t / 2), torch.sigmoid(s / 2)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean() * 4
    assert attribute_kd_loss(s, t, 2.0).item() == pytest.approx(kl.item(), rel=1e-5)


def test_embedding_loss_is_zero_for_a_student_equal_to_its_teacher():
    torch.manual_seed(0)
    teacher = mobilenet_v1(alpha=0.25, resolution=32, num_classes=10).eval()
    width = teacher.num_features
    student = mobilenet_v1(alpha=0.25, resolution=32, num_classes=10, embedding_dim=width).eval()
    student.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("fc.")})
    assert isinstance(student.fc, torch.nn.Identity)  # equal sizes: no projection
    for normalize in (False, True):
        d = Distiller(LoadedTeacher(copy.deepcopy(teacher), 32, *INCEPTION, {}), 1.0, 1.0, "inception", 32,
                      torch.device("cpu"), False, None, target="embedding", normalize=normalize)
        assert d.embedding_dim() == width
        x = torch.randn(4, 3, 32, 32)
        parts = TrainParts(student, student, None, None, None, None, None, None, None, distill=d)
        assert training_loss(parts, student(x), x, torch.zeros(4)).item() == 0.0
        moved = student(x) + 0.1
        expected = (moved - teacher.forward_pooled(x)).pow(2).sum(1).mean() if not normalize else None
        got = embedding_loss(moved, d.teacher_outputs(x), normalize)
        assert got.item() > 0
        if expected is not None:
            assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_student_head_projects_to_the_teachers_size():
    student = mobilenet_v1(alpha=0.25, resolution=32, num_classes=10, embedding_dim=96, l2_normalize=True)
    out = student(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 96) and torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert student.fc.in_features == student.num_features == 256


def test_teacher_output_names_a_module_and_pools_it():
    torch.manual_seed(0)
    teacher = mobilenet_v1(alpha=0.25, resolution=32, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    blocks = EmbeddingOf(teacher, "blocks.12", "the teacher")(x)
    assert torch.allclose(blocks, teacher.forward_pooled(x), atol=1e-6)  # the last block, pooled
    stem = EmbeddingOf(teacher, "stem", "the teacher")(x)
    assert stem.shape == (2, 8)
    with pytest.raises(UserError, match=r"distill.teacher_output=nope: the teacher has no module of that name "
                                        r"\(its top-level modules: stem, blocks, pool, dropout, fc\)"):
        EmbeddingOf(teacher, "nope", "the teacher")


@pytest.mark.parametrize("overrides, needle", [
    (["task=multilabel"], "data=shapes does not fit task=multilabel: multi-label label tables go with "
                          "task=multilabel; use data=attributes (a label table) or data=shapes_attr"),
    (["task=multilabel", "data=shapes_attr"], "task=multilabel trains one sigmoid per attribute: set optim.loss=bce"),
    (["data=shapes_attr"], "data=shapes_attr does not fit task=classification"),
    (["task=embedding"], "task=embedding learns only from a teacher's embeddings"),
    (["task=embedding", "distill.teacher=t.pt", "distill.target=embedding"], "distill.alpha=1"),
    (["distill.teacher=t.pt", "distill.target=embedding"], "distill.target=embedding does not fit "
                                                           "task=classification"),
    (["distill.normalize=true"], "distill.normalize applies to distill.target=embedding only"),
    (["task=multilabel", "data=shapes_attr", "optim.loss=bce", "data.mixup=0.2"], "data.mixup=0.2 mixes class labels"),
])
def test_task_rules_refuse_with_one_line(overrides, needle):
    from mobilenet_train.config import validate

    with pytest.raises(UserError) as e:
        validate(job_config(*overrides))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_a_timm_teacher_lends_its_pre_logits_or_a_named_output(tmp_path):
    import timm
    from helpers import save_safetensors
    from omegaconf import OmegaConf

    from mobilenet_train.engine.distill import load_teacher

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=7).eval()
    weights = save_safetensors(model, tmp_path / "resnet10t.safetensors")
    spec = {"teacher": "timm:resnet10t", "teacher_weights": str(weights), "target": "embedding",
            "teacher_output": None, "normalize": False}
    loaded = load_teacher(OmegaConf.create(spec), ["a", "b"])  # any classes: its own 7 are kept
    assert loaded.model.num_classes == 7
    x = torch.randn(2, 3, 64, 64)
    d = Distiller(loaded, 1.0, 1.0, "imagenet", 64, torch.device("cpu"), False, None, target="embedding")
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        assert torch.allclose(EmbeddingOf(loaded.model, None, "timm:resnet10t")(x), expected, atol=1e-5)
        assert d.teacher_outputs(x).shape == expected.shape == (2, 512)  # (at the teacher's input size)
        assert d.embedding_dim() == 512
        pooled = EmbeddingOf(loaded.model, "layer3", "timm:resnet10t")(x)
        assert pooled.shape == (2, 256)
