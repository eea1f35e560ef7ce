"""Knowledge distillation (engine/distill.py): the loss against timm's logit-distillation task, a
teacher's identity in the checkpoint, metrics.jsonl and TensorBoard, exact resume with a teacher,
and bad teachers refused before training starts."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from helpers import TINY, assert_one_line_error, fit_in_process, job_config, tb_hparams

from mobilenet_train.checkpoint import load_checkpoint, save_checkpoint
from mobilenet_train.engine.distill import Distiller, LoadedTeacher, kd_loss, load_teacher
from mobilenet_train.errors import UserError

EXACT = ["trainer.deterministic=true"]
INCEPTION, IMAGENET = ((0.5,) * 3, (0.5,) * 3), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """A toolkit teacher: 1 epoch at 40 px with ImageNet mean/std (the students use 32 px, inception)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    fit_in_process(run, "model.resolution=40", "data.normalization=imagenet")
    return run / "checkpoints" / "last.pt"


def _linear(num_classes: int, mean_std) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, num_classes))
    model.pretrained_cfg = {"mean": mean_std[0], "std": mean_std[1]}
    model.num_classes, model.in_chans = num_classes, 3
    return model


@pytest.mark.parametrize("alpha", [0.25, 1.0])
def test_loss_is_timms_logit_distillation(alpha):
    from timm.task.distillation import LogitDistillationTask

    torch.manual_seed(0)
    student, teacher = _linear(5, INCEPTION), _linear(5, IMAGENET)
    x, y = torch.randn(6, 3, 4, 4), torch.randint(0, 5, (6,))
    task = LogitDistillationTask(student, teacher, criterion=torch.nn.CrossEntropyLoss(), task_loss_weight=1 - alpha,
                                 temperature=3.0, verbose=False)
    expected = task(x, y)["loss"]
    ours = Distiller(LoadedTeacher(teacher, 4, *IMAGENET, {}), alpha, 3.0, "inception", 4, torch.device("cpu"),
                     False, None)
    logits = student(x)
    label_loss = torch.nn.functional.cross_entropy(logits, y)
    got = ours.loss(logits, ours.teacher_logits(x), label_loss)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    if alpha == 1.0:  # pure function matching: the labels do not enter
        assert ours.loss(logits, ours.teacher_logits(x), None).item() == pytest.approx(got.item(), rel=1e-6)
    assert kd_loss(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distilled_run_records_its_teacher(teacher_ckpt, tmp_path):
    run = tmp_path / "student"
    fit_in_process(run, f"distill.teacher={teacher_ckpt}", "distill.alpha=0.25", "distill.temperature=2")
    sha = hashlib.sha256(teacher_ckpt.read_bytes()).hexdigest()
    top1 = load_checkpoint(teacher_ckpt)["metrics"]["val_top1"]
    record = load_checkpoint(run / "checkpoints" / "last.pt")["teacher"]
    assert record == {"path": str(teacher_ckpt), "sha256": sha, "val_top1": top1, "num_classes": 10,
                      "kind": "checkpoint", "alpha": 0.25, "temperature": 2.0, "target": "logits"}
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (line["teacher"], line["teacher_sha256"], line["teacher_val_top1"]) == (str(teacher_ckpt), sha, top1)
    assert (line["distill_alpha"], line["distill_temperature"]) == (0.25, 2.0)
    hparams = tb_hparams(run)
    assert hparams["teacher_sha256"].string_value == sha and hparams["distill_alpha"].number_value == 0.25
    assert hparams["teacher_val_top1"].number_value == pytest.approx(top1)


@pytest.mark.slow  # three tiny runs
def test_resume_with_a_teacher_is_exact(teacher_ckpt, tmp_path):
    common = [*EXACT, f"distill.teacher={teacher_ckpt}", "distill.alpha=0.5", "data.batch_size=80"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    fit_in_process(straight, *common, "trainer.epochs=2")
    fit_in_process(split, *common, "trainer.epochs=1")
    fit_in_process(split, *common, "trainer.epochs=2")
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight, split))
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_bad_teachers_stop_before_training(teacher_ckpt, tmp_path):
    from mobilenet_train.engine import fit

    other = load_checkpoint(teacher_ckpt)
    other["classes"] = [f"n{i:08d}" for i in range(10)]  # as many classes, other names
    save_checkpoint(tmp_path / "other.pt", other)
    for overrides, needle in [
        ([f"distill.teacher={tmp_path / 'missing.pt'}"], "no such checkpoint file"),
        ([f"distill.teacher={tmp_path / 'other.pt'}"], "other classes than the dataset's 10"),
        (["distill.teacher=timm:no_such_net", "distill.teacher_weights=x.pt"], "timm has no model"),
        (["distill.teacher=timm:test_resnet", f"distill.teacher_weights={tmp_path / 'none.safetensors'}"],
         "is not a file"),
    ]:
        run = tmp_path / "bad"
        with pytest.raises(UserError, match=needle):
            fit(job_config(*overrides), run)
        assert not (run / "checkpoints").exists()
    with pytest.raises(UserError, match="needs its weights as a local file"):
        fit(job_config("distill.teacher=timm:test_resnet"), tmp_path / "bad")


@pytest.mark.slow  # a subprocess; the in-process test above covers the checks
def test_bad_teacher_is_one_line_and_exit_2(cli, tmp_path):
    proc = cli("mobilenet-train", *TINY, f"distill.teacher={tmp_path / 'missing.pt'}",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "distill.teacher=", "no such checkpoint file")


def test_timm_teacher_from_a_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(weights))
    cfg = job_config("distill.teacher=timm:test_resnet", f"distill.teacher_weights={weights}")
    teacher = load_teacher(cfg.distill, [str(i) for i in range(10)])
    assert teacher.resolution == 160 and teacher.identity["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    wrong = tmp_path / "wrong.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=7).state_dict(), str(wrong))
    cfg = job_config("distill.teacher=timm:test_resnet", f"distill.teacher_weights={wrong}")
    with pytest.raises(UserError, match="does not fit timm:test_resnet with 10 classes"):
        load_teacher(cfg.distill, [str(i) for i in range(10)])


@pytest.mark.slow  # a run with a 160 px timm teacher
def test_timm_teacher_trains_a_student(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(weights))
    run = tmp_path / "run"
    fit_in_process(run, "distill.teacher=timm:test_resnet", f"distill.teacher_weights={weights}", "distill.alpha=1.0")
    record = load_checkpoint(run / "checkpoints" / "last.pt")["teacher"]
    assert record["path"] == "timm:test_resnet" and record["weights"] == str(weights)
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest() and record["val_top1"] is None


# The measurement of docs/benchmarks.md (distillation on the embedded data): 2000 shapes at 64 px.
KD_DATA = ["data.generate.image_size=64", "data.generate.train_per_class=200", "data.generate.val_per_class=40",
           "model.resolution=64", "data.batch_size=50", "data.eval_batch_size=200", "trainer.log_every_steps=100",
           "data.num_workers=0"]
KD_STUDENT_EPOCHS = "trainer.epochs=6"


@pytest.fixture
def one_torch_thread():
    """The numbers of docs/benchmarks.md were measured with one thread; so is this test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # an alpha 1.0 teacher and three students: many minutes
def test_a_distilled_student_beats_the_same_student_without_a_teacher(tmp_path, one_torch_thread):
    fit_in_process(tmp_path / "teacher", *KD_DATA, "model.alpha=1.0", "optim.lr=0.1", "trainer.epochs=15")
    teacher = tmp_path / "teacher" / "checkpoints" / "best.pt"
    plain = fit_in_process(tmp_path / "plain", *KD_DATA, KD_STUDENT_EPOCHS)
    distilled = fit_in_process(tmp_path / "distilled", *KD_DATA, KD_STUDENT_EPOCHS, f"distill.teacher={teacher}",
                               "distill.alpha=0.5", "distill.temperature=2")
    print(f"teacher {load_checkpoint(teacher)['metrics']['val_top1']:.2f}%, student alone {plain['val_top1']:.2f}%, "
          f"distilled {distilled['val_top1']:.2f}%")
    assert distilled["val_top1"] > plain["val_top1"]
    # A modern recipe (RandAugment, random erasing, mixup/cutmix, label smoothing) trains and does not collapse.
    recipe = fit_in_process(tmp_path / "recipe", *KD_DATA, KD_STUDENT_EPOCHS, "data.auto_augment=rand-m9-mstd0.5",
                            "data.random_erasing=0.25", "data.mixup=0.2", "data.cutmix=1.0",
                            "optim.label_smoothing=0.1")
    print(f"recipe {recipe['val_top1']:.2f}%")
    assert math.isfinite(recipe["train_loss"]) and recipe["val_top1"] > 10.0  # 10 balanced classes: chance is 10%
