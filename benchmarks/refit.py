"""Pool or fit? Train a fresh student on a finished run's pool, on its cached
answers (no teacher query), and compare it with the run's own student: how much
of the pool each agrees with, and its accuracy on held-out real images.

    python benchmarks/refit.py runs/ideal/RUN [RUN ...] --epochs=60 --eval_split=val

If a student trained on the same pool for longer scores much higher, the run
stopped short of what its pool holds (the fit limits it); if it scores the
same, or agrees with the pool no better, a better pool is what would help.
--student_net trains another architecture on the same pool, to ask whether a
larger student would take more out of it. Writes OUT/refit.md.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datasets import EVAL_SPLITS, get_spec, load_eval_split  # noqa: E402
from methods.steps import distill, student_optimizer  # noqa: E402
from models import MODELS, build_model  # noqa: E402
from utils.augment import KINDS, build_augment  # noqa: E402
from utils.evaluation import evaluate, predict  # noqa: E402
from utils.pool import SyntheticPool, top1  # noqa: E402
from utils.resume import read_run  # noqa: E402
from utils.run import run_cli, seed_everything  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run folders of ideal.py (each with args.json and last.pt)")
    p.add_argument("--student_net", default="", choices=("", *MODELS), help="default: each run's own")
    p.add_argument("--epochs", type=int, default=60, help="passes over the pool")
    p.add_argument("--lr", type=float, default=0.01, help="SGD's starting rate, annealed to 0 (cosine)")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--aug", default="", choices=("", *KINDS), help="default: each run's --distill_aug")
    p.add_argument("--eval_split", default="val", choices=EVAL_SPLITS,
                   help="val (the last 10,000 training images) unless the figure is a test-set one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out", default="benchmarks/results")
    return p.parse_args(argv)


def agreement(student, pool) -> float:
    """% of the pool's images on which the student names the teacher's cached answer."""
    return 100.0 * (predict(student, pool.images).argmax(1) == top1(pool.answers)).float().mean().item()


def student_and_aug(run: dict, args):
    """The refit's net and augmentation: the flags given, else the run's own."""
    return args.student_net or run["student_net"], args.aug or run["distill_aug"]


def refit(pool, run: dict, args):
    """A fresh student (args.student_net, else the run's own net) trained
    args.epochs passes over `pool` with the run's SGD momentum and weight decay,
    its rate annealed from args.lr to 0 (cosine; torch's scheduler), and
    args.aug (else the run's augmentation). Returns the student."""
    spec, (net, aug) = get_spec(run["dataset"]), student_and_aug(run, args)
    seed_everything(args.seed)
    student = build_model(net, spec.channels, spec.size, spec.classes)
    optimizer = student_optimizer(student, args.lr, run["momentum"], run["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    augment = build_augment(aug)
    for _ in range(args.epochs):
        distill(student, optimizer, pool, augment, args.batch_size)
        schedule.step()
    return student


def run_row(folder: str, args) -> str:
    """One table row: the run's student against a refitted one, on one pool."""
    run, ckpt = read_run(folder)
    spec = get_spec(run["dataset"])
    pool = SyntheticPool(0)
    pool.load_state_dict(ckpt["pool"])
    eval_set = load_eval_split(run["dataset"], args.data_dir, args.eval_split)
    own = build_model(run["student_net"], spec.channels, spec.size, spec.classes)
    own.load_state_dict(ckpt["student"])
    net, aug = student_and_aug(run, args)
    start = time.time()
    fresh = refit(pool, run, args)
    cells = (os.path.basename(os.path.normpath(folder)), f"{len(pool):,}", run["student_net"],
             f"{evaluate(own, *eval_set)[1]:.2f}", f"{agreement(own, pool):.1f}",
             f"{net}, {args.epochs} ep, {aug}", f"{evaluate(fresh, *eval_set)[1]:.2f}",
             f"{agreement(fresh, pool):.1f}", f"{time.time() - start:.0f}")
    return "| " + " | ".join(cells) + " |"


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    split = args.eval_split
    lines = ["# A fresh student on each run's pool (no teacher query)", "",
             "`python benchmarks/refit.py " + " ".join(sys.argv[1:] if __name__ == "__main__" else args.runs) + "`",
             "", f"| run | pool | its student | its {split} acc | its pool agreement | refit | refit {split} acc "
             "| refit pool agreement | refit s |", "|---|---:|---|---:|---:|---|---:|---:|---:|"]
    for folder in args.runs:
        lines.append(run_row(folder, args))
        print(lines[-1], flush=True)
    os.makedirs(args.out, exist_ok=True)
    out = os.path.join(args.out, "refit.md")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"-> {out}")
    return out


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()))
