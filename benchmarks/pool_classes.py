"""Where a finished run's student errs, beside what its pool taught it: the share
of each class in the teacher's cached answers (the pool), and the student's
recall per class on the evaluation split. No teacher query: the answers are
read from the run's last.pt.

    python benchmarks/pool_classes.py runs/ideal/mnist_best_seeds runs/ideal/other_run

A teacher names one class for most images far from its data (label_histogram.py);
such a class fills the pool while real images of it are missed, and a class the
teacher seldom names is missed for want of examples. Writes OUT/pool_classes.md.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets import get_spec, load_eval_split  # noqa: E402
from models import build_model  # noqa: E402
from utils.evaluation import per_class_recall  # noqa: E402
from utils.pool import top1  # noqa: E402
from utils.resume import read_run  # noqa: E402
from utils.run import run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run folders of ideal.py (each with args.json and last.pt)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def run_rows(folder: str, data_dir: str):
    """The pool's class shares and the student's recall per class, both in %."""
    args, ckpt = read_run(folder)
    spec = get_spec(args["dataset"])
    answers = top1(ckpt["pool"]["answers"])
    shares = 100.0 * torch.bincount(answers, minlength=spec.classes).float() / max(len(answers), 1)
    student = build_model(args["student_net"], spec.channels, spec.size, spec.classes)
    student.load_state_dict(ckpt["student"])
    images, labels = load_eval_split(args["dataset"], data_dir, args.get("eval_split", "test"))
    recall = per_class_recall(student, images, labels, spec.classes)
    return args, ckpt, shares, recall


def main(args):
    lines = []
    for folder in args.runs:
        run, ckpt, shares, recall = run_rows(folder, args.data_dir)
        name = os.path.basename(os.path.normpath(folder))
        for label, values in (("pool's answers, %", shares), (f"student's {run.get('eval_split', 'test')} "
                                                               "recall, %", recall)):
            lines.append(f"| {name} | {ckpt['final_acc']:.2f} | {label} | "
                         + " | ".join(f"{v:.1f}" for v in values.tolist()) + " |")
        print(f"{name}: {len(ckpt['pool']['answers']):,} pool images, final {ckpt['final_acc']:.2f}%")
    header = ["| run | final acc | row | " + " | ".join(map(str, range(len(shares)))) + " |",
              "|---|---:|---|" + "---:|" * len(shares)]
    text = "\n".join(["# Each class in the pool and in the student's errors", "",
                      "`python benchmarks/pool_classes.py " + " ".join(args.runs) + "`", "", *header, *lines])
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "pool_classes.md")
    with open(out, "w") as f:
        f.write(text + "\n")
    print(text + f"\n-> {out}")
    return out


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()))
