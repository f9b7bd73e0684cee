"""A sweep's report: mean +- std over seeds per (dataset, teacher, method,
budget), pooled over teachers of one recipe, as compare.md, compare.json and
one figure of accuracy against queries per (dataset, teacher)."""
import json
import math
import os
import statistics

from tqdm import tqdm

from harness.registry import METHODS, TEACHERS
from harness.runs import collect, kept_records
from utils.run import UserError


def teacher_id(r):
    """Which teacher file answered: the first 8 hex digits of its sha256, or,
    for a result of a report that did not record it, its test accuracy alone."""
    sha = r.get("teacher_sha256")
    return f"{r['teacher_acc']:.2f}%, {sha[:8]}" if sha else f"{r['teacher_acc']:.2f}%, sha256 not recorded"


def aggregate(records):
    """Mean +- std (sample std, n-1) over seeds per (dataset, method, budget)."""
    groups = {}
    for r in records:
        groups.setdefault((r["dataset"], r["teacher"], r["method"], r["budget"], r["eval_split"]), []).append(r)
    rows = []
    for (dataset, teacher, method, budget, split), rs in sorted(groups.items()):
        ids = sorted({teacher_id(r) for r in rs})
        if len(ids) > 1:
            raise UserError(f"the row {dataset}/{teacher}/{method}/{budget} mixes teacher files ({'; '.join(ids)}): "
                            "its seeds must ask one teacher; move the odd runs out of --save_dir")
        finals, bests = [r["final_acc"] for r in rs], [r["best_acc"] for r in rs]
        rows.append({"dataset": dataset, "teacher": teacher, "method": method, "budget": budget, "eval_split": split,
                     "seeds": [r["seed"] for r in rs], "unfinished_seeds": [r["seed"] for r in rs if r["unfinished"]],
                     "final_mean": statistics.mean(finals),
                     "final_std": statistics.stdev(finals) if len(rs) > 1 else float("nan"),
                     "best_mean": statistics.mean(bests),
                     "queries_max": max(r["queries"] for r in rs),
                     "wall_s_mean": statistics.mean(r["wall_s"] for r in rs),
                     "teacher_acc": rs[0]["teacher_acc"], "teacher_id": ids[0], "device": rs[0]["device"],
                     "threads": next((r["threads"] for r in rs if r["threads"]), None)})
    return rows


def pool_recipes(records):
    """Per (dataset, recipe, method, budget) with runs on two or more teachers of
    one recipe: mean +- std, min and max over every (teacher, seed) run, and each
    teacher's own mean, so a stated range covers the teacher a user trains as
    well as the seed."""
    groups = {}
    for r in records:
        recipe = TEACHERS[r["teacher"]].recipe
        if recipe:
            groups.setdefault((r["dataset"], recipe, r["method"], r["budget"], r["eval_split"]), []).append(r)
    rows = []
    for (dataset, recipe, method, budget, split), rs in sorted(groups.items()):
        by_teacher = {}
        for r in rs:
            by_teacher.setdefault(r["teacher"], []).append(r)
        if len(by_teacher) < 2:
            continue
        finals = [r["final_acc"] for r in rs]
        rows.append({"dataset": dataset, "recipe": recipe, "method": method, "budget": budget, "eval_split": split,
                     "runs": len(rs), "final_mean": statistics.mean(finals), "final_std": statistics.stdev(finals),
                     "final_min": min(finals), "final_max": max(finals),
                     "teachers": {t: {"teacher_acc": ts[0]["teacher_acc"], "seeds": [r["seed"] for r in ts],
                                      "final_mean": statistics.mean(r["final_acc"] for r in ts)}
                                  for t, ts in by_teacher.items()}})
    return rows


def recipe_markdown(recipe_rows):
    """The pooled rows of pool_recipes, as a table (none: no lines)."""
    if not recipe_rows:
        return []
    lines = ["## Over teachers of one recipe", "",
             "Every run on every teacher of the recipe, pooled: the range a user who trains the teacher "
             "afresh and picks a seed meets. Final accuracy; per teacher: its mean over its seeds "
             "(teacher's test accuracy).", "",
             "| dataset | recipe | method | budget | runs | final acc | min - max | per teacher |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in recipe_rows:
        scored = "" if r["eval_split"] == "test" else f" [{r['eval_split']}]"
        per = "; ".join(f"{t}: {v['final_mean']:.2f} ({v['teacher_acc']:.2f}%)" for t, v in r["teachers"].items())
        lines.append(f"| {r['dataset']} | {r['recipe']} | {r['method']}{scored} | {r['budget']:,} | {r['runs']} | "
                     f"**{r['final_mean']:.2f} +- {r['final_std']:.2f}** | {r['final_min']:.2f} - "
                     f"{r['final_max']:.2f} | {per} |")
    return lines + [""]


def seed_list(row):
    """'2021,2022*': a starred seed is read from a run still under way."""
    return ",".join(f"{s}*" if s in row["unfinished_seeds"] else str(s) for s in row["seeds"])


def markdown(rows, records, args, left_out=0):
    lines = ["# IDEAL and baselines at equal, counted query budgets", "",
             "Written by `python benchmarks/compare.py`. Final = the student after the last epoch "
             "(no selection); best = the highest test accuracy along the way, which is selected on "
             "the test set. Mean +- std over the seeds listed (sample std). A method marked [val] was "
             "scored on held-out training images (ideal.py --eval_split=val), not the test set. A starred "
             "seed was read from a run still under way (--unfinished), at a budget it had already spent.", ""]
    kept = sorted({r["kept_from"] for r in records if r.get("kept_from")})
    if kept:
        lines += [f"{sum(bool(r.get('kept_from')) for r in records)} of the {len(records)} results were read from "
                  f"earlier reports ({', '.join(kept)}; --keep), for runs this machine has not finished."
                  + (f" {left_out} more were left out: they asked another teacher file than the rest of "
                     "their row." if left_out else ""), ""]
    for dataset, teacher in dict.fromkeys((r["dataset"], r["teacher"]) for r in rows):
        ours = [r for r in rows if (r["dataset"], r["teacher"]) == (dataset, teacher)]
        accs = "; ".join(dict.fromkeys(r["teacher_id"] for r in ours))  # rows of two files: both
        lines += [f"## {dataset}, teacher {teacher} ({accs}; {TEACHERS[teacher].about}), "
                  f"student {args.net}", "",
                  "| method | budget | queries used (max) | final acc | best acc (test-selected) "
                  "| seeds | seconds to reach it (mean) | device | teacher file |",
                  "|---|---:|---:|---:|---:|---|---:|---|---|"]
        for r in ours:
            std = "" if math.isnan(r["final_std"]) else f" +- {r['final_std']:.2f}"
            scored = "" if r["eval_split"] == "test" else f" [{r['eval_split']}]"
            lines.append(f"| {r['method']}{scored} | {r['budget']:,} | {r['queries_max']:,} | "
                         f"**{r['final_mean']:.2f}{std}** | {r['best_mean']:.2f} | "
                         f"{len(r['seeds'])} ({seed_list(r)}) | {r['wall_s_mean']:.0f} | "
                         f"{r['device']}, {r['threads'] or '?'} thread(s) | {r['teacher_id']} |")
        lines.append("")
    lines += recipe_markdown(pool_recipes(records))
    lines += ["Methods:", ""] + [f"- `{m}`: {METHODS[m].about}" for m in dict.fromkeys(r["method"] for r in rows)]
    return "\n".join(lines) + "\n"


def sample_std(values):
    """The tables' spread (statistics.stdev, n - 1), 0 for a single run: a
    figure's error bar is the +- its table prints."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def band(curves):
    """Mean, min and max over seeds of accuracy against queries, on the union of
    their query counts. A seed counts only between its first and last point, so
    a run still under way is not drawn past the queries it has spent.
    curves: lists of (queries, acc, ...) -> (grid, mean, min, max) arrays."""
    import numpy as np
    grid = np.array(sorted({q for c in curves for q, *_ in c}), dtype=float)
    ys = np.full((len(curves), len(grid)), np.nan)
    for row, c in zip(ys, curves):
        qs, accs = [q for q, *_ in c], [a for _, a, *_ in c]
        inside = (grid >= qs[0]) & (grid <= qs[-1])
        row[inside] = np.interp(grid[inside], qs, accs)
    return grid, np.nanmean(ys, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)


def plot(records, dataset, path):
    """Accuracy against queries, mean line and a min-max band over seeds; an x
    marks the last point of a run still under way. A method run per budget, or
    one with results kept from an earlier report (no curve), is a point per
    budget, its error bar the table's +- (sample_std)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ours = [r for r in records if r["dataset"] == dataset]
    files = list(dict.fromkeys(teacher_id(r) for r in ours))
    for method, file in dict.fromkeys((r["method"], teacher_id(r)) for r in ours):
        rs = [r for r in ours if (r["method"], teacher_id(r)) == (method, file)]
        label = method if len(files) == 1 else f"{method} (teacher {file})"  # one teacher file a line
        if METHODS[method].per_budget or not all(r["curve"] for r in rs):  # a point per budget (kept: no curve)
            budgets = sorted({r["budget"] for r in rs})
            accs = [[r["final_acc"] for r in rs if r["budget"] == b] for b in budgets]
            ax.errorbar(budgets, [np.mean(a) for a in accs], yerr=[sample_std(a) for a in accs],
                        marker="o", capsize=3, label=label)
            continue
        by_seed = {r["seed"]: r for r in rs}  # one curve per seed
        grid, mean, low, high = band([r["curve"] for r in by_seed.values()])
        going = sum(r["unfinished"] for r in by_seed.values())
        seeds = f"{len(by_seed)} seed{'s' * (len(by_seed) > 1)}" + (f", {going} under way" if going else "")
        line, = ax.plot(grid, mean, label=f"{label} ({seeds})")
        ax.fill_between(grid, low, high, alpha=0.2, color=line.get_color())
        for r in by_seed.values():  # where a run under way stops, and the mean loses a seed
            if r["unfinished"]:
                ax.plot(*r["curve"][-1][:2], marker="x", color=line.get_color())
    for acc, style in zip(dict.fromkeys(r["teacher_acc"] for r in ours), ("--", ":", "-.", (0, (5, 5)))):
        ax.axhline(acc, ls=style, c="k", label=f"teacher ({acc:.2f}%)")  # two teacher files: two line styles
    scored = "held-out" if ours[0]["eval_split"] == "val" else "test"
    ax.set(xlabel="teacher queries", ylabel=f"student {scored} accuracy (%)",
           title=f"{dataset}, teacher {ours[0]['teacher']}")
    ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axes: never over a point
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def report(args, jobs):
    records = collect(args, jobs)
    kept, left_out = kept_records(args, jobs, records)
    records += kept
    if not records:
        tqdm.write("no finished runs to report yet")
        return []
    rows = aggregate(records)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(markdown(rows, records, args, left_out))
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        runs = [{k: v for k, v in r.items() if k != "curve"} for r in records]
        json.dump({"rows": rows, "recipe_rows": pool_recipes(records), "runs": runs}, f, indent=1)
    for dataset, teacher in dict.fromkeys((r["dataset"], r["teacher"]) for r in records):
        name = dataset if teacher == "main" else f"{dataset}_{teacher}"
        plot([r for r in records if r["teacher"] == teacher], dataset, os.path.join(args.out, f"compare_{name}.png"))
    tqdm.write(f"{len(records)} results from {len({r['run'] for r in records})} runs -> {args.out}/compare.md")
    return rows
