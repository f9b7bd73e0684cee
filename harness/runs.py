"""Reading a sweep's runs: each run's accuracy-by-queries curve from its
TensorBoard events, one record per (job, budget) it can speak for, and the
finished results of earlier reports (--keep) for runs this machine lacks."""
import json
import math
import os

from harness.jobs import is_done, job_budgets, job_split, run_dir, teacher_path
from utils.report import newest_per_step
from utils.run import UserError, load_checkpoint
from utils.teacher import file_sha256, read_meta, teacher_format


def read_curve(folder, split="test"):
    """[(queries, accuracy on `split`, seconds so far)] of a run, in order, one
    point per evaluation; a resumed run's repeated steps keep their newest value.
    Empty for a run that has not been evaluated yet (one labelling its pool
    before any training logs queries but no accuracy)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(folder, size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    if f"{split}/acc" not in tags or "queries" not in tags:
        return []

    def by_step(tag):
        return newest_per_step(events.Scalars(tag))

    acc, queries = by_step(f"{split}/acc"), by_step("queries")
    seconds = [by_step(t) for t in tags if t.startswith("time/")]
    return [(int(queries[e]), acc[e], sum(s.get(e, 0.0) for s in seconds)) for e in sorted(acc)]


def at_budget(curve, budget):
    """(final acc, best acc so far, queries, seconds) at the last evaluation
    that had spent at most `budget` queries; None if there is none."""
    points = [p for p in curve if p[0] <= budget]
    if not points:
        return None
    queries, final, seconds = points[-1]
    return final, max(p[1] for p in points), queries, seconds


def teacher_file_acc(path):
    """The test accuracy a teacher file records: a checkpoint's test_acc, or an
    exported program's meta.json (read without loading any of its code)."""
    if teacher_format(path) == "checkpoint":
        return load_checkpoint(path, "cpu")["test_acc"]
    return read_meta(path).get("test_acc", math.nan)


def unfinished_summary(folder):
    """What a report needs of a run still under way: its args.json, and the
    teacher's accuracy from the teacher's file; None if it has neither."""
    try:
        with open(os.path.join(folder, "args.json")) as f:
            run_args = json.load(f)
        teacher_acc = teacher_file_acc(run_args["teacher_ckpt"])
    except (OSError, KeyError, ValueError, UserError):
        return None
    return {"threads": None, **run_args, "teacher_acc": teacher_acc, "unfinished": True}


def run_teacher_sha256(folder):
    """The sha256 of the teacher file a run asked (its args.json), or None."""
    try:
        with open(os.path.join(folder, "args.json")) as f:
            return json.load(f).get("teacher_sha256")
    except (OSError, ValueError):
        return None


def run_summary(folder, unfinished):
    """A finished run's summary.json; with `unfinished`, what unfinished_summary
    knows of a run under way; else None."""
    if is_done(folder):
        with open(os.path.join(folder, "summary.json")) as f:
            return json.load(f)
    return unfinished_summary(folder) if unfinished else None


def misfit(args, job, summary, before_running=False):
    """Why a finished run in the job's folder cannot stand for the job, or None.
    A folder's name holds neither the split nor, for a method read at every
    budget, the budget: a run of another sweep can sit under it."""
    folder, split, wanted = run_dir(args, job), summary.get("eval_split", "test"), job_split(args, job)
    if split != wanted:
        return f"{folder} was scored on {split} images and this sweep asks {wanted}: move it out of --save_dir"
    budget = summary.get("query_budget") or job.budget
    if before_running and budget < job.budget:  # a report may read a shorter run; a sweep would skip the job
        return (f"{folder} stopped at {budget:,} queries and this sweep asks {job.budget:,}: move it out of "
                "--save_dir to run it at the larger budget")
    return None


def check_finished(args, jobs):
    """Refuse, before anything runs, a sweep whose finished folders belong to another sweep."""
    for job in jobs:
        summary = run_summary(run_dir(args, job), unfinished=False)
        problem = summary and misfit(args, job, summary, before_running=True)
        if problem:
            raise UserError(problem)


def readable_budgets(args, job, summary, curve):
    """The budgets a run can speak for: not above its own, and for a run still
    under way only those it has already spent."""
    budgets = job_budgets(args, job)
    if summary.get("query_budget"):  # a run never given that many queries says nothing about them
        budgets = [b for b in budgets if b <= summary["query_budget"]]
    if summary.get("unfinished"):
        spent = max((q for q, _, _ in curve), default=0)
        budgets = [b for b in budgets if b <= spent and b != job.budget]  # a per-budget run has only its own
    return budgets


def collect(args, jobs):
    """One record per finished (job, budget), and with args.unfinished per
    budget that a run under way has passed."""
    records = []
    for job in jobs:
        folder = run_dir(args, job)
        summary = run_summary(folder, args.unfinished)
        if summary is None:
            continue
        problem = misfit(args, job, summary)
        if problem:
            raise UserError(problem)
        split = summary.get("eval_split", "test")  # val: held-out training images (ideal.py --eval_split)
        curve = read_curve(folder, split)
        if not curve and not summary.get("unfinished"):  # only a run under way may have no points yet
            raise UserError(f"{folder} has a summary.json but no {split}/acc in its TensorBoard events; "
                            "restore its events files or move the run out of --save_dir")
        for budget in readable_budgets(args, job, summary, curve):
            point = at_budget(curve, budget)
            if point is None:
                continue
            final, best, queries, seconds = point
            if not summary.get("unfinished") and budget == (summary.get("query_budget") or job.budget):
                # the run's own end (a folder of a larger sweep ends past the job's): the summary is the authority
                final, best, queries = summary["final_acc"], summary["best_acc"], summary["queries"]
            records.append({"method": job.method, "dataset": job.dataset, "teacher": job.teacher, "seed": job.seed,
                            "eval_split": split,
                            "unfinished": bool(summary.get("unfinished")),
                            "budget": budget, "final_acc": final, "best_acc": best, "queries": queries,
                            "wall_s": round(seconds, 1), "teacher_acc": summary["teacher_acc"],
                            "teacher_sha256": summary.get("teacher_sha256") or run_teacher_sha256(folder),
                            "device": summary["device"], "threads": summary.get("threads"),
                            "run": folder, "curve": curve})
    return records


def row_key(r):
    return r["dataset"], r["teacher"], r["method"], r["budget"], r["eval_split"]


def result_key(r):
    return r["method"], r["dataset"], r["teacher"], r["seed"], r["budget"], r["eval_split"]


def read_kept(args):
    """Every finished result of the --keep reports, in the order given."""
    kept = []
    for path in args.keep:
        with open(path) as f:
            runs = json.load(f).get("runs", [])
        for r in runs:
            r = {"teacher": "main", "teacher_sha256": None, **r}  # reports before teachers were a dimension
            if not r.get("unfinished"):
                kept.append({**r, "curve": [], "kept_from": r.get("kept_from", path)})  # the first report named
    return kept


def wanted_keys(args, jobs):
    return {(j.method, j.dataset, j.teacher, j.seed, b, job_split(args, j)) for j in jobs for b in job_budgets(args, j)}


def file_identity(args, teacher, dataset):
    """The sha256 of the teacher file under --save_dir, or None without one."""
    path = teacher_path(args, teacher, dataset)
    return file_sha256(path) if os.path.isfile(path) else None


def identity(r):
    """What tells teacher files apart: the sha256, or the accuracy alone for a
    result of a report that did not record it."""
    return r["teacher_sha256"] or f"{r['teacher_acc']:.2f}%"


def kept_records(args, jobs, records):
    """The kept results (--keep) for this sweep's (job, budget, split)s that no
    run here speaks for, and how many were left out. A row asks one teacher
    file: that of its runs here; without any, the file under --save_dir if a
    kept result asked it; else that of the first report's result."""
    wanted = wanted_keys(args, jobs) - {result_key(r) for r in records}
    candidates = [r for r in read_kept(args) if result_key(r) in wanted]
    row_file = {row_key(r): identity(r) for r in records}
    files = {}
    for r in candidates:
        if row_key(r) not in row_file:
            here = files.setdefault((r["teacher"], r["dataset"]), file_identity(args, r["teacher"], r["dataset"]))
            row = [c for c in candidates if row_key(c) == row_key(r)]
            row_file[row_key(r)] = here if any(identity(c) == here for c in row) else identity(r)
    kept, seen = [], set()
    for r in candidates:
        if identity(r) == row_file[row_key(r)] and result_key(r) not in seen:
            seen.add(result_key(r))
            kept.append(r)
    left_out = len({result_key(r) for r in candidates} - seen)
    return kept, left_out


def to_run(args, jobs):
    """The jobs no kept result (--keep) stands for: a job whose every budget a
    kept report holds, asked of the teacher file under --save_dir (sha256), is
    not run again on a new machine."""
    if not args.keep:
        return jobs
    done = {(*result_key(r), r["teacher_sha256"]) for r in read_kept(args) if r["teacher_sha256"]}
    shas = {(j.teacher, j.dataset): file_identity(args, j.teacher, j.dataset) for j in jobs}  # each file hashed once
    todo = []
    for j in jobs:
        sha = shas[(j.teacher, j.dataset)]
        if not all((j.method, j.dataset, j.teacher, j.seed, b, job_split(args, j), sha) in done
                   for b in job_budgets(args, j)):
            todo.append(j)
    return todo
