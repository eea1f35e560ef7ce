"""The goals of the paper's two distillation experiments (sections 4.5 and 4.7), measured end to end
with the toolkit's own commands, one after another, and summarised as a markdown table.

`attributes` (on the embedded `data=shapes_attr`): a teacher trained on the labels; the same student
trained on the labels alone; the student distilled from the teacher's attribute outputs on the
unlabelled folder (distill.alpha=1); and the student distilled on the labelled training images with
their labels unused. Every run has the same epochs. The goal: the unlabelled-distilled student reaches
at least 95% of the teacher's val mAP and beats the labels-only student.

`embedding` (on a labelled folder, e.g. ../shared/data/imagenette-mini): the teacher (a checkpoint,
e.g. Google's 0.75_224 through mobilenet-import) scored by retrieval on its pooled features
(`mobilenet-eval embedding=true`), then a student trained only to match those embeddings
(+experiment=embedding) and scored the same way. The goal: the student's val recall@1 is at least
90% of the teacher's. `--init` starts the student from a checkpoint's backbone (the projection head
is new); `--freeze-epochs` trains only the head first.

Usage:
    python scripts/bench_distill.py attributes --out bench_distill/attributes --epochs 15
    python scripts/bench_distill.py embedding --teacher v1_0.75_224.pt --data ../shared/data/imagenette-mini \\
        --classes 10 --out bench_distill/embedding --epochs 6 --init v1_0.25_128_q.pt --freeze-epochs 1
Extra `key=value` arguments go to every training run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def run(command: list[str], log: Path) -> float:
    """Run a console script of this venv, its output into `log`; the wall seconds taken."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(command) + "\n")
        f.flush()
        subprocess.run([str(BIN / command[0]), *command[1:]], stdout=f, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def train(out: Path, name: str, overrides: list[str], log: Path) -> tuple[dict, float]:
    """One training run into out/name, then mobilenet-eval of its best.pt; (eval.json, train seconds)."""
    run_dir = out / name
    seconds = run(["mobilenet-train", *overrides, "trainer.device=cpu", "trainer.progress=false",
                   f"hydra.run.dir={run_dir}"], log)
    evaluated = run_dir / "checkpoints" / "eval.json"
    run(["mobilenet-eval", str(run_dir / "checkpoints" / "best.pt"), "device=cpu", f"out={evaluated}"], log)
    return json.loads(evaluated.read_text()), seconds


def attributes(args, extra: list[str]) -> list[str]:
    out, log = args.out, args.out / "runs.log"
    base = ["+experiment=attributes", f"trainer.epochs={args.epochs}", f"data.num_workers={args.workers}", *extra]
    teacher, t_s = train(out, "teacher", [*base, f"model.alpha={args.teacher_alpha}"], log)
    best = out / "teacher" / "checkpoints" / "best.pt"
    student = [*base, f"model.alpha={args.student_alpha}"]
    kd = [f"distill.teacher={best}", "distill.alpha=1"]
    rows = [("teacher, labels", args.teacher_alpha, teacher, t_s)]
    for name, label, overrides in (
            ("student_labels", "student, labels only", []),
            ("student_kd_unlabelled", "student, distilled on the unlabelled folder",
             [*kd, "data.train_split=unlabelled"]),
            ("student_kd_train", "student, distilled on the train images (labels unused)", kd)):
        result, seconds = train(out, name, [*student, *overrides], log)
        rows.append((label, args.student_alpha, result, seconds))
    lines = ["| run | alpha | val mAP | % of the teacher's | label acc | train s |", "|---|---|---|---|---|---|"]
    for label, alpha, r, seconds in rows:
        lines.append(f"| {label} | {alpha} | {r['map']:.2f} | {100 * r['map'] / teacher['map']:.1f} | "
                     f"{r['label_accuracy']:.2f} | {seconds:.0f} |")
    return lines


def embedding(args, extra: list[str]) -> list[str]:
    out, log = args.out, args.out / "runs.log"
    data = [f"data.root={args.data}", f"data.num_workers={args.workers}", f"data.eval_preset={args.eval_preset}"]
    teacher_json = out / "teacher_eval.json"
    run(["mobilenet-eval", str(args.teacher), "embedding=true", *data, "device=cpu", f"out={teacher_json}"], log)
    teacher = json.loads(teacher_json.read_text())
    overrides = ["+experiment=embedding", f"distill.teacher={Path(args.teacher).resolve()}", *data,
                 f"data.num_classes={args.classes}", f"model.alpha={args.student_alpha}",
                 f"trainer.epochs={args.epochs}", *extra]
    if args.init:
        overrides += [f"model.init={Path(args.init).resolve()}", f"trainer.freeze_backbone_epochs={args.freeze_epochs}"]
    rows = [("teacher (pooled features)", teacher, None)]
    if args.init:
        start_json = out / "init_eval.json"
        run(["mobilenet-eval", str(args.init), "embedding=true", *data, "device=cpu", f"out={start_json}"], log)
        rows.append(("student's init (pooled features, before training)", json.loads(start_json.read_text()), None))
    student, seconds = train(out, "student", overrides, log)
    rows.append((f"student alpha {args.student_alpha}, trained on the embeddings", student, seconds))
    lines = ["| model | recall@1 | % of the teacher's | recall@5 | ROC-AUC | TAR@FAR=1e-3 | train s |",
             "|---|---|---|---|---|---|---|"]
    for label, r, s in rows:
        lines.append(f"| {label} | {r['recall_at_1']:.2f} | {100 * r['recall_at_1'] / teacher['recall_at_1']:.1f} | "
                     f"{r['recall_at_5']:.2f} | {r['roc_auc']:.4f} | {r['tar_at_far_1e-3']:.2f} | "
                     f"{'' if s is None else f'{s:.0f}'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("attributes", "embedding"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--teacher-alpha", type=float, default=1.0, help="attributes: the teacher's width")
    parser.add_argument("--student-alpha", type=float, default=0.25)
    parser.add_argument("--teacher", help="embedding: the teacher checkpoint")
    parser.add_argument("--data", help="embedding: a labelled folder (ROOT/train, ROOT/val)")
    parser.add_argument("--classes", type=int, default=10, help="embedding: the folder's classes")
    parser.add_argument("--eval-preset", default="keras", help="embedding: data.eval_preset of every score")
    parser.add_argument("--init", help="embedding: the student's starting weights (model.init)")
    parser.add_argument("--freeze-epochs", type=int, default=0, help="embedding: head-only epochs with --init")
    args, extra = parser.parse_known_args()
    if args.experiment == "embedding" and not (args.teacher and args.data):
        parser.error("embedding needs --teacher and --data")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = (attributes if args.experiment == "attributes" else embedding)(args, extra)
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(f"{table}\n\n{os.uname().nodename}, {os.cpu_count()} CPUs\n")


if __name__ == "__main__":
    main()
