"""Regenerate figs/ from run folders.

    python scripts/make_figs.py --runs runs/ideal/mnist_cpu runs/ideal/mnist_relabel ...

acc_<dataset>.png  student test accuracy by epoch and by teacher queries, one
                   curve per run, the teacher's accuracy as a dashed line
                   (acc.png is the first dataset's);
synthetic_<dataset>.png  pool images of the newest run per dataset, one row per
                   teacher label;
pipeline.png       our diagram of IDEAL's two stages.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.report import newest_per_step  # noqa: E402
from utils.run import load_checkpoint  # noqa: E402

PER_CLASS = 10  # images per row of the synthetic grid


def parse_args():
    p = argparse.ArgumentParser(description="Regenerate figs/ from IDEAL run folders.")
    p.add_argument("--runs", nargs="+", required=True, help="run folders written by ideal.py")
    p.add_argument("--out_dir", default="figs")
    return p.parse_args()


def load_run(run_dir):
    """(summary dict, {tag: (steps, values)}) of one ideal.py run folder."""
    if not os.path.isfile(os.path.join(run_dir, "summary.json")):
        sys.exit(f"error: {run_dir} has no summary.json: not a finished run of ideal.py")
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    split = summary.get("eval_split", "test")  # a run scored on held-out images logs val/ tags
    tags = ("test/acc", "test_by_queries/acc")
    return summary, {tag: curve(events.Scalars(tag.replace("test", split, 1))) for tag in tags}


def curve(scalars):
    """(steps, values) in step order, a repeated step keeping its newer value."""
    latest = newest_per_step(scalars)
    steps = sorted(latest)
    return steps, [latest[s] for s in steps]


def label(summary):
    mode = "relabel every epoch (reference code)" if summary["relabel_every_epoch"] else "one query per sample"
    return f"{summary['student_net']} student, {mode}, g_steps={summary['g_steps']}"


def plot_accuracy(runs, path):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for summary, curves in runs:
        for ax, tag in zip(axes, ("test/acc", "test_by_queries/acc")):
            ax.plot(*curves[tag], label=label(summary))
    teacher = runs[0][0]
    for ax, xlabel in zip(axes, ("epoch", "teacher queries")):
        line = f"{teacher['net']} teacher ({teacher['teacher_acc']:.2f}%)"
        ax.axhline(teacher["teacher_acc"], ls="--", c="k", label=line)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"student {teacher.get('eval_split', 'test')} accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"IDEAL on {teacher['dataset']}: {teacher['bb_mode']}-label black-box teacher")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_synthetic(run_dir, summary, path):
    """Up to PER_CLASS pool images per teacher label, one row per class."""
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    images, answers = pool["images"], pool["answers"]
    if answers is None:  # --relabel_every_epoch keeps no answers
        print(f"{run_dir}: no cached teacher answers, no {os.path.basename(path)}")
        return
    labels = answers if answers.dim() == 1 else answers.argmax(1)
    classes = int(labels.max()) + 1
    fig, axes = plt.subplots(classes, PER_CLASS, figsize=(PER_CLASS * 0.8, classes * 0.8), squeeze=False)
    for k in range(classes):
        picks = images[labels == k][-PER_CLASS:]
        for j in range(PER_CLASS):
            ax = axes[k, j]
            ax.axis("off")
            if j < len(picks):
                img = picks[j].permute(1, 2, 0).squeeze(-1)
                ax.imshow(img, cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=255)
        axes[k, 0].text(-4, 14, str(k), ha="right", va="center", fontsize=9)
    fig.suptitle(f"synthetic {summary['dataset']} images by teacher label "
                 f"(newest of {len(labels):,})", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def box(ax, xy, text, color):
    ax.text(*xy, text, ha="center", va="center", fontsize=9,
            bbox={"boxstyle": "round,pad=0.4", "fc": color, "ec": "0.3"})


def arrow(ax, start, end, text=""):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "lw": 1.3})
    if text:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.05, text, ha="center", fontsize=8)


def plot_pipeline(path):
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.2)
    ax.axis("off")
    ax.text(0.1, 3.0, "Stage 1, every epoch: data generation, zero teacher queries", fontsize=10, weight="bold")
    box(ax, (0.8, 2.3), "z ~ N(0, I)\ny = i mod C", "#eeeeee")
    box(ax, (2.9, 2.3), "generator G\n(re-initialised)", "#cfe2ff")
    box(ax, (5.1, 2.3), "random crop\n+ flip", "#eeeeee")
    box(ax, (7.1, 2.3), "student S\n(frozen, eval)", "#d1e7dd")
    box(ax, (9.1, 2.3), "CE(S(x), y)\n+ λ·Σ p log p", "#fff3cd")
    for a, b in ((1.5, 2.2), (3.8, 4.4), (5.8, 6.4), (7.8, 8.3)):
        arrow(ax, (a, 2.3), (b, 2.3))
    ax.text(0.1, 1.35, "Stage 2: label once, distill", fontsize=10, weight="bold")
    box(ax, (1.3, 0.6), "lowest-loss batch\n(uint8)", "#cfe2ff")
    box(ax, (3.9, 0.6), "black-box teacher T\n1 query / sample", "#f8d7da")
    box(ax, (6.5, 0.6), "pool of (image, label)\nin memory, newest 400 B", "#eeeeee")
    box(ax, (9.0, 0.6), "student S\nSGD, 1 pass", "#d1e7dd")
    arrow(ax, (2.2, 0.6), (2.8, 0.6))
    arrow(ax, (5.0, 0.6), (5.3, 0.6), "label")
    arrow(ax, (7.7, 0.6), (8.3, 0.6))
    ax.annotate("", xy=(7.1, 1.95), xytext=(9.0, 1.0),
                arrowprops={"arrowstyle": "->", "lw": 1.0, "ls": "--", "connectionstyle": "arc3,rad=0.3"})
    ax.text(8.45, 1.55, "next epoch", fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main():
    args = parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    runs = {}
    for run_dir in args.runs:
        summary, curves = load_run(run_dir)
        runs.setdefault(summary["dataset"], []).append((run_dir, summary, curves))
    for i, (dataset, group) in enumerate(runs.items()):
        names = [f"acc_{dataset}.png"] + (["acc.png"] if i == 0 else [])
        for name in names:
            plot_accuracy([(s, c) for _, s, c in group], os.path.join(args.out_dir, name))
        run_dir, summary, _ = group[0]
        plot_synthetic(run_dir, summary, os.path.join(args.out_dir, f"synthetic_{dataset}.png"))
    plot_pipeline(os.path.join(args.out_dir, "pipeline.png"))
    print(f"wrote {', '.join(sorted(os.listdir(args.out_dir)))} to {args.out_dir}/")


if __name__ == "__main__":
    main()
