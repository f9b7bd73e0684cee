"""Compare IDEAL and its baselines at equal teacher-query budgets, over seeds.

    python benchmarks/compare.py                                   # MNIST + FMNIST, every method, 3 seeds
    python benchmarks/compare.py --methods ideal_cpu,noise --datasets mnist --devices cpu,cpu
    python benchmarks/compare.py --report_only                     # tables and figures from finished runs
    python benchmarks/compare.py --backend=ray --ray_address=auto  # one Ray task per job, on a cluster

Every method uses the same teacher per dataset, the same counting black box,
the same pool, distillation pass and test evaluation (see methods/). Each
(method, dataset, seed) is one run of ideal.py or dfme.py, in its own process,
at the largest budget. A smaller budget is read off that run's
accuracy-by-queries curve: in the one-query-per-sample loop a run at budget b
*is* the same run stopped after b queries, so the reading is exact. A method
whose schedule depends on its budget (DFME's LR steps) runs once per budget.

Runs are resumable: a finished run (summary.json) is skipped, an interrupted
one is continued with --resume, so a long sweep can be stopped and started
again. Writes RESULTS/compare.md, compare.json and compare_<dataset>.png.
A machine lost mid-sweep loses its run folders, not its results: --keep
takes the finished results of earlier reports' compare.json for the runs
this machine no longer has, and the new ones run beside them.
With --backend=ray the same jobs run as Ray tasks (harness/ray_backend.py).

This script only reads the command line; the methods, teachers, jobs and the
report are library code in harness/.
"""
import argparse
import importlib.util
import os
import re
import sys
import time

from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness.jobs import ensure_teachers, plan, run_all, run_all_ray  # noqa: E402
from harness.registry import BUDGET_DEPENDENT, BUDGETS, DEFAULT_METHODS, METHODS, TEACHERS  # noqa: E402
from harness.report import report  # noqa: E402
from harness.runs import check_finished, to_run  # noqa: E402
from utils.run import UserError  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"any of {', '.join(METHODS)}")
    p.add_argument("--datasets", default="mnist,fmnist")
    p.add_argument("--seeds", default="2021,2022,2023")
    p.add_argument("--budgets", default=None,
                   help="comma-separated query budgets for every dataset (default: "
                        + "; ".join(f"{d} {','.join(map(str, b))}" for d, b in BUDGETS.items()) + ")")
    p.add_argument("--net", default="lenet", help="the student's architecture, and the main and sgd teachers'")
    p.add_argument("--teachers", default="main", help=f"any of {', '.join(TEACHERS)}: one row per teacher")
    p.add_argument("--batch_size", type=int, default=250, help="B of the IDEAL loop (samples per epoch)")
    p.add_argument("--devices", default="cpu",
                   help="one job runs on each entry at a time: cpu,cpu runs two CPU jobs side by side; "
                        "cuda:0,cuda:1 one job per GPU")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: the --devices slots of this machine; ray: one Ray task per job, on a Ray "
                        "cluster or on this machine (pip install -r requirements-cluster.txt)")
    p.add_argument("--ray_address", default=None,
                   help="--backend=ray: the cluster to join ('auto': the one `ray start` made on this node, or "
                        "HEAD_IP:6379); unset: start Ray on this machine for the sweep")
    p.add_argument("--cpus_per_job", type=int, default=1,
                   help="--backend=ray: CPUs a job asks Ray for, and its torch threads unless --threads")
    p.add_argument("--gpus_per_job", type=float, default=0,
                   help="--backend=ray: the share of a GPU a job asks for (0.25: four jobs on one GPU); "
                        "above 0 the job runs on cuda")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per CPU job (0: the cores shared out between CPU jobs; with Ray, "
                        "--cpus_per_job). Results depend on the thread count")
    p.add_argument("--job_flags", default="", help="extra flags for every job (tests use tiny nets)")
    p.add_argument("--teacher_epochs", type=int, default=0, help="override every teacher's epochs (0: TEACHERS)")
    p.add_argument("--fresh_teachers", action="store_true",
                   help="train every teacher from its recipe, not take the repository's copy (benchmarks/teachers/)")
    p.add_argument("--unfinished", action="store_true",
                   help="also report runs still under way, at the smaller budgets they have passed (exact for "
                        "the same reason the budgets are read off one run); their seeds are starred")
    p.add_argument("--save_dir", default="runs/compare", help="run folders and teachers go here")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--out", default="benchmarks/results", help="where compare.md/.json/.png go")
    p.add_argument("--report_only", action="store_true", help="run nothing; report the finished runs")
    p.add_argument("--keep", default="",
                   help="comma-separated compare.json files of earlier reports: their finished results count for "
                        "this sweep's runs whose folders are not under --save_dir (a machine that was lost)")
    return check_args(p, p.parse_args(argv))


def check_args(p, args):
    """Split the lists; refuse unknown names and flags no run could honour (p.error: one line)."""
    args.methods = args.methods.split(",")
    args.datasets = args.datasets.split(",")
    for name in ("seeds", "budgets"):  # a list of whole numbers, else one line, not a traceback
        value = getattr(args, name)
        if value is not None and not re.fullmatch(r"\d+(,\d+)*", value):
            p.error(f"--{name} takes comma-separated whole numbers, not '{value}'")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.teachers = args.teachers.split(",")
    for name in args.teachers:
        if name not in TEACHERS:
            p.error(f"unknown teacher '{name}'; known: {', '.join(TEACHERS)}")
    args.devices = args.devices.split(",")
    for name in args.devices:  # job_env gives threads to "cpu" slots only
        if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
            p.error(f"--devices: '{name}' is not a device; give cpu, cuda or cuda:N, comma-separated")
    if args.threads < 0:
        p.error("--threads must be 0 (share the cores out) or more")
    for name in args.methods:
        if name not in METHODS:
            p.error(f"unknown method '{name}'; known: {', '.join(METHODS)}")
    for flag in args.job_flags.split():
        if flag.split("=")[0] in BUDGET_DEPENDENT:  # smaller budgets could not be read off one run
            p.error(f"{flag} makes a run depend on its length; give it a method of its own with per_budget=True")
    args.keep = [k for k in args.keep.split(",") if k]
    for path in args.keep:
        if not os.path.isfile(path):
            p.error(f"--keep: no file {path}; give the compare.json of an earlier report")
    for name in args.datasets:
        if name not in BUDGETS and not args.budgets:
            p.error(f"no default budgets for '{name}'; pass --budgets")
    check_backend(p, args)
    return args


def check_backend(p, args):
    """Each backend's flags with their backend only: a flag that did nothing would mislead."""
    if args.backend == "local":
        if args.ray_address or args.gpus_per_job or args.cpus_per_job != 1:
            p.error("--ray_address, --cpus_per_job and --gpus_per_job need --backend=ray")
        return
    if args.devices != ["cpu"]:
        p.error("--devices is for --backend=local; with Ray give each job --cpus_per_job and --gpus_per_job")
    if args.cpus_per_job < 1 or not args.gpus_per_job >= 0 or (args.gpus_per_job > 1 and args.gpus_per_job % 1):
        p.error("--cpus_per_job must be 1 or more, --gpus_per_job a fraction up to 1 or a whole number")
    if not args.report_only and importlib.util.find_spec("ray") is None:
        p.error("--backend=ray needs Ray: pip install -r requirements-cluster.txt")


def main(args):
    jobs = plan(args)
    failures = {}
    if not args.report_only:
        ensure_teachers(args)
        start, todo = time.time(), to_run(args, jobs)
        check_finished(args, todo)
        failures = (run_all_ray if args.backend == "ray" else run_all)(args, todo)
        kept = f" ({len(jobs) - len(todo)} kept from --keep)" if len(todo) < len(jobs) else ""
        tqdm.write(f"sweep: {len(todo)} jobs{kept}, {len(failures)} failed, {time.time() - start:.0f} s")
    report(args, jobs)
    return failures


if __name__ == "__main__":
    try:
        sys.exit(1 if main(parse_args()) else 0)
    except UserError as err:  # one line, as argparse's errors
        sys.exit(f"compare.py: error: {err}")
