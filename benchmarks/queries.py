"""Accuracy per query: IDEAL at several teacher-query budgets, in the paper's
one-query-per-sample mode and in the reference code's relabel-every-epoch mode.

    python benchmarks/queries.py                        # MNIST + Fashion-MNIST, CPU preset
    python benchmarks/queries.py --paper                # the paper's g_steps/ngf (GPU-sized)
    python benchmarks/queries.py --datasets mnist --budgets 5000

Each (dataset, budget, mode) is its own ideal.py run: in the default mode it
generates budget/B batches (each labelled once), in relabel mode it runs until
the budget stops the re-querying. Teachers come from pretrain.py (trained here
with the README's recipe if missing). Writes a markdown table and JSON.
"""
import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ideal  # noqa: E402
import pretrain  # noqa: E402
from utils.teacher import default_teacher_path  # noqa: E402

# The README's CPU preset (see there for why each differs from the paper).
CPU_PRESET = ["--g_steps=10", "--ngf=16", "--lr_g=1e-2"]
PAPER = ["--g_steps=30", "--ngf=64"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mnist,fmnist")
    p.add_argument("--net", default="lenet")
    p.add_argument("--budgets", default="5000,10000,25000")
    p.add_argument("--batch_size", type=int, default=250)
    p.add_argument("--paper", action="store_true", help="the paper's g_steps=30, ngf=64 instead of the CPU preset")
    p.add_argument("--teacher_epochs", type=int, default=3, help="pretraining epochs if a teacher is missing")
    p.add_argument("--save_dir", default="runs")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out", default="benchmarks/queries", help="writes OUT.md and OUT.json")
    return p.parse_args()


def ensure_teacher(args, dataset):
    if not os.path.isfile(default_teacher_path(args.save_dir, dataset, args.net)):
        pretrain.main(pretrain.parse_args([f"--dataset={dataset}", f"--net={args.net}",
                                           f"--epochs={args.teacher_epochs}", f"--save_dir={args.save_dir}",
                                           f"--data_dir={args.data_dir}"]))


def epochs_for(budget, b, relabel):
    """Generation epochs that spend the budget: one batch an epoch, or (relabel)
    the first E whose cumulative B*E*(E+1)/2 queries reach it."""
    if not relabel:
        return math.ceil(budget / b)
    return math.ceil((math.sqrt(1 + 8 * budget / b) - 1) / 2)


def run_one(args, dataset, budget, relabel):
    mode = "relabel" if relabel else "once"
    flags = [f"--dataset={dataset}", f"--net={args.net}", f"--batch_size={args.batch_size}",
             f"--epochs={epochs_for(budget, args.batch_size, relabel)}", f"--query_budget={budget}",
             f"--save_dir={args.save_dir}", f"--data_dir={args.data_dir}",
             f"--exp_name=queries_{dataset}_{budget}_{mode}{'_paper' if args.paper else ''}",
             *(PAPER if args.paper else CPU_PRESET), *(["--relabel_every_epoch"] if relabel else [])]
    summary = ideal.main(ideal.parse_args(flags))
    return {"dataset": dataset, "mode": mode, "budget": budget, "queries": summary["queries"],
            "epochs_run": summary["epochs_run"], "student_acc": summary["final_acc"],
            "best_acc": summary["best_acc"], "teacher_acc": summary["teacher_acc"],
            "wall_s": summary["wall_s"], "device": summary["device"], "command": "python ideal.py " + " ".join(flags)}


def table(rows):
    lines = ["| dataset | mode | budget | queries used | epochs | student acc (final) | best | teacher acc | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['mode']} | {r['budget']:,} | {r['queries']:,} | {r['epochs_run']} | "
                     f"{r['student_acc']:.2f}% | {r['best_acc']:.2f}% | {r['teacher_acc']:.2f}% | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main():
    args = parse_args()
    rows = []
    for dataset in args.datasets.split(","):
        ensure_teacher(args, dataset)
        for budget in (int(b) for b in args.budgets.split(",")):
            for relabel in (False, True):
                rows.append(run_one(args, dataset, budget, relabel))
                with open(args.out + ".json", "w") as f:  # after every run: a long sweep keeps what it has
                    json.dump(rows, f, indent=2)
    text = table(rows)
    with open(args.out + ".md", "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
