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
With --backend=ray the same jobs run as Ray tasks (benchmarks/ray_backend.py).
"""
import argparse
import fcntl
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from queue import Queue

from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "benchmarks", "teachers")  # the teachers of the rows measured since 2026-12-02
sys.path.insert(0, ROOT)
from methods.synthesizers import SYNTHESIZERS  # noqa: E402
from utils.report import newest_per_step  # noqa: E402
from utils.run import UserError, load_checkpoint  # noqa: E402
from utils.teacher import file_sha256, read_meta, teacher_format  # noqa: E402


@dataclass(frozen=True)
class Method:
    script: str  # ideal.py or dfme.py
    flags: tuple  # what makes this method, on top of the shared flags
    per_budget: bool = False  # True when the schedule depends on the budget
    about: str = ""
    relabel: bool = False  # the reference code's re-querying: its epochs are those that spend the budget


DIPKD_EPOCHS = 100  # DIP-KD's student training on MNIST/FMNIST (its appendix: 100 epochs, lr 1e-2)
# DIP-KD's protocol: every image labelled first, then 100 epochs with shifts and colour jitter (ideal.py's
# --label_first also trains in the last labelling epoch: 101 passes in all)
DIPKD_TRAINING = ("--label_first", "--distill_aug=crop+jitter", f"--distill_epochs={DIPKD_EPOCHS}")
METHODS = {
    "ideal_cpu": Method("ideal.py", ("--method=ideal", "--preset=cpu"),
                        about="IDEAL, CPU preset (g_steps 10, ngf 16, lr_g 1e-2)"),
    "ideal_cpu_warm": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--warm_generator"),
                             about="IDEAL, CPU preset, generator kept warm across epochs (a lever, not the paper)"),
    "ideal_cpu_warm_k2": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--warm_generator", "--candidates=2"),
                                about="IDEAL, CPU preset, warm generator, 2x candidates with the teacher paid for the "
                                      "half the student is least sure of (levers, not the paper)"),
    "ideal_cpu_k2": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--candidates=2"),
                           about="IDEAL, CPU preset, 2x candidates, least sure half labelled (a lever, not the paper)"),
    "ideal_paper": Method("ideal.py", ("--method=ideal",),
                          about="IDEAL, the paper's settings (g_steps 30, ngf 64, lr_g 1e-3)"),
    "ideal_paper_warm": Method("ideal.py", ("--method=ideal", "--warm_generator"),
                               about="IDEAL, the paper's settings, generator kept warm across epochs (a lever)"),
    "ideal_cpu_soft": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--bb_mode=soft"),
                             about="IDEAL, CPU preset, with the teacher's probabilities instead of its top-1 label "
                                   "(a stronger black box: compare it with DFME, not with the hard-label rows)"),
    "ideal_cpu_relabel": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--relabel_every_epoch"),
                                per_budget=True, relabel=True,
                                about="IDEAL, CPU preset, re-asking the teacher about every augmented pool image "
                                      "every epoch, as the reference code does (counted)"),
    "dfme": Method("dfme.py", (), per_budget=True,
                   about="DFME (soft labels, zeroth-order gradients through the teacher)"),
    "ideal_best": Method("ideal.py", ("--method=ideal", "--preset=best"),
                         about="IDEAL, --preset=best (configs/best.json: the CPU preset, warm generator on MNIST)"),
    "ideal_best_prior": Method("ideal.py", ("--method=ideal", "--preset=best", "--prior_share=0.5"),
                               about="IDEAL, --preset=best, half of every batch DIP-KD image priors (a lever)"),
    "ideal_best_prior_k2": Method("ideal.py", ("--method=ideal", "--preset=best", "--prior_share=0.5", "--candidates=2"),
                                  about="IDEAL, --preset=best, B generator images and B image priors as candidates, "
                                        "the B the student is least sure of labelled (levers)"),
    "ideal_best_prior_k3": Method("ideal.py", ("--method=ideal", "--preset=best", "--candidates=3", "--prior_share=0.6667"),
                                  about="IDEAL, --preset=best, B generator images and 2B image priors as candidates, "
                                        "the B the student is least sure of labelled (the control of "
                                        "ideal_best_prior_seed_k3: as many candidates, no pool seeds)"),
    "ideal_best_prior_seed_k3": Method("ideal.py", ("--method=ideal", "--preset=best", "--candidates=3",
                                                    "--prior_share=0.3333", "--seed_share=0.3333"),
                                       about="IDEAL, --preset=best, B generator images, B image priors and B "
                                             "pool images redrawn class-balanced (rare classes as often as the "
                                             "rest) as candidates, the B the student is least sure of labelled "
                                             "(levers)"),
    # The literature's baselines as DIP-KD trains its students: every image labelled, then 100
    # epochs at a constant lr 0.01 with random shifts and colour jitter (their appendix; here in
    # batches of B=250, not 100, and on 28x28 images, not 32x32)
    "naive": Method("ideal.py", ("--method=noise", *DIPKD_TRAINING),
                    per_budget=True, about="NaiveKD: uniform noise labelled once, then DIP-KD's 100 epochs"),
    "prior_kd": Method("ideal.py", ("--method=prior", *DIPKD_TRAINING),
                       per_budget=True, about="DIP-KD's Synthesis phase alone: image priors labelled once, "
                                              "then DIP-KD's 100 epochs"),
}
# Every registered synthesizer is a method under its own name, in IDEAL's loop with the
# paper's settings, unless a method above has that name or is exactly that (ideal_paper is "ideal").
for _name, _cls in SYNTHESIZERS.items():
    if _name not in METHODS and not any(m.flags == (f"--method={_name}",) for m in METHODS.values()):
        METHODS[_name] = Method("ideal.py", (f"--method={_name}",),
                                about=" ".join((_cls.__doc__ or _name).split("\n\n")[0].split()))
DEFAULT_METHODS = ("ideal_cpu", "ideal_cpu_warm", "noise", "random_generator", "ideal_paper", "dfme")
BUDGETS = {"mnist": (5000, 10000, 25000), "fmnist": (5000, 10000, 25000, 50000)}


@dataclass(frozen=True)
class Teacher:
    """A teacher of the sweep: its file under SAVE_DIR/teachers ({dataset} is
    filled in), the command that trains it (a script and its flags; {epochs}
    is filled in per dataset), and the flags ideal.py and dfme.py need to ask it."""
    file: str
    train: tuple
    epochs: dict
    flags: tuple = ()
    about: str = ""
    recipe: str = ""  # teachers of one recipe: their rows are also pooled (recipe_rows)


def recipe_seed(seed):
    """The README's recipe with another pretraining seed: the spread a new user
    meets, whose teacher is trained afresh (and differs in its last bits anyway)."""
    return Teacher(f"{{dataset}}_{{net}}_s{seed}.pt", ("pretrain.py", "--net={net}", f"--seed={seed}"),
                   {"mnist": 3, "fmnist": 10}, recipe="main",
                   about=f"--net, the README's recipe with pretraining seed {seed}")


TEACHERS = {
    # the README's recipe (SGD, one-cycle), the quickstart's teacher
    "main": Teacher("{dataset}_{net}.pt", ("pretrain.py", "--net={net}"), {"mnist": 3, "fmnist": 10}, recipe="main",
                    about="--net, the README's recipe (SGD with a one-cycle schedule, seed 2021)"),
    "main_s2022": recipe_seed(2022),
    "main_s2023": recipe_seed(2023),
    # the reference's recipe: constant lr 0.1, no weight decay, and another seed
    "sgd": Teacher("{dataset}_{net}_sgd.pt", ("pretrain.py", "--net={net}", "--schedule=none", "--lr=0.1",
                                               "--weight_decay=0", "--seed=7"), {"mnist": 5, "fmnist": 12},
                   about="--net, plain SGD at a constant lr 0.1 (the reference's), no weight decay, seed 7"),
    # an architecture the registry does not have, reached as a torch.export program
    # DIP-KD's recipe for its teachers (and students): shifts and colour jitter, SGD at a
    # constant lr 0.01, batch 100; 20 epochs here, not their 100, for the CPU, and 28x28, not 32x32
    "dipkd": Teacher("{dataset}_{net}_dipkd.pt", ("pretrain.py", "--net={net}", "--augment=crop+jitter",
                                                   "--schedule=none", "--lr=0.01", "--batch_size=100"),
                     {"mnist": 20, "fmnist": 20},
                     about="--net, DIP-KD's recipe (shifts, colour jitter, constant lr 0.01, batch 100), 20 epochs"),
    # DIP-KD's own teacher network too: LeNet-5 without batch norm (models/lenet.py), the same
    # recipe; the student stays --net
    "dipkd_lenet5": Teacher("{dataset}_lenet5_dipkd.pt", ("pretrain.py", "--net=lenet5", "--augment=crop+jitter",
                                                          "--schedule=none", "--lr=0.01", "--batch_size=100"),
                            {"mnist": 20, "fmnist": 20}, flags=("--net=lenet5", "--student_net={net}"),
                            about="LeNet-5 without batch norm, DIP-KD's recipe, 20 epochs; the student is --net"),
    "resmax": Teacher("{dataset}_resmax.pt2", ("scripts/export_teacher.py",), {"mnist": 2, "fmnist": 2},
                      flags=("--trust_teacher_code",),
                      about="ResMax (scripts/export_teacher.py), a torch.export .pt2 of another architecture"),
}
# flags whose effect depends on the run's length: with them a run stopped early
# is not the run at a smaller budget
BUDGET_DEPENDENT = {"--distill_epochs", "--epochs", "--relabel_every_epoch"}
RUN_KIND = {"ideal.py": "ideal", "dfme.py": "dfme"}  # the run folder kind each script uses


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


def budgets_for(args, dataset):
    return sorted(int(b) for b in args.budgets.split(",")) if args.budgets else list(BUDGETS[dataset])


@dataclass(frozen=True)
class Job:
    method: str
    dataset: str
    seed: int
    budget: int  # the largest budget, or this job's own for a per-budget method
    teacher: str = "main"

    @property
    def name(self):
        budget = f"-b{self.budget}" if METHODS[self.method].per_budget else ""
        teacher = "" if self.teacher == "main" else f"-{self.teacher}"  # the main teacher's runs keep their names
        return f"{self.dataset}{teacher}-{self.method}{budget}-s{self.seed}"


def plan(args):
    """Every job of the sweep: one per (method, dataset, teacher, seed), or per budget too."""
    jobs = []
    for dataset in args.datasets:
        budgets = budgets_for(args, dataset)
        for teacher in args.teachers:
            for method in args.methods:
                for seed in args.seeds:
                    for budget in budgets if METHODS[method].per_budget else budgets[-1:]:
                        jobs.append(Job(method, dataset, seed, budget, teacher))
    return jobs


def teacher_path(args, teacher, dataset):
    return os.path.join(args.save_dir, "teachers", TEACHERS[teacher].file.format(dataset=dataset, net=args.net))


def run_dir(args, job):
    return os.path.join(args.save_dir, RUN_KIND[METHODS[job.method].script], job.name)


def command(args, job, device):
    """The job's command line: the method's flags on top of the shared ones."""
    method = METHODS[job.method]
    cmd = [sys.executable, os.path.join(ROOT, method.script), f"--dataset={job.dataset}",
           f"--net={args.net}", f"--query_budget={job.budget}", f"--seed={job.seed}",
           f"--save_dir={args.save_dir}", f"--data_dir={args.data_dir}", f"--exp_name={job.name}",
           f"--device={device}", f"--teacher_ckpt={teacher_path(args, job.teacher, job.dataset)}",
           *(f.format(net=args.net) for f in TEACHERS[job.teacher].flags), *method.flags]
    if method.script == "ideal.py":
        cmd += [f"--epochs={epochs_for(job.budget, args.batch_size, method.relabel)}", f"--batch_size={args.batch_size}"]
    cmd += args.job_flags.split()
    if os.path.isfile(os.path.join(run_dir(args, job), "last.pt")):
        cmd.append("--resume")
    return cmd


def epochs_for(budget, batch_size, relabel=False):
    """Generation epochs that spend the budget: one batch an epoch, or (relabel)
    the first E whose cumulative B*E*(E+1)/2 queries reach it."""
    if not relabel:
        return math.ceil(budget / batch_size)
    return math.ceil((math.sqrt(1 + 8 * budget / batch_size) - 1) / 2)


def shipped_sha256():
    """{file: first 16 hex digits of its sha256}, from benchmarks/teachers/README.md's table."""
    with open(os.path.join(SHIPPED, "README.md")) as f:
        return dict(re.findall(r"^\| `([^`]+)` \|(?:.*\|)? `([0-9a-f]{16})` \|$", f.read(), re.M))


def shipped_teacher(args, name, dataset):
    """The repository's copy of a teacher (benchmarks/teachers/), or None.
    A copy whose bytes are not those its README names is refused: it is not
    the teacher the rows asked (a changed file, a Git LFS pointer, ...)."""
    file = TEACHERS[name].file.format(dataset=dataset, net=args.net)
    path = os.path.join(SHIPPED, file)
    if not os.path.isfile(path):
        return None
    want, sha = shipped_sha256().get(file), file_sha256(path)
    if want is None or not sha.startswith(want):
        raise UserError(f"{path} has sha256 {sha[:16]}, but benchmarks/teachers/README.md names "
                        f"{want or 'no sha256 for it'}: it is not the shipped teacher; restore it "
                        "(git checkout), or pass --fresh_teachers")
    return path


def ensure_teachers(args):
    """Put each (dataset, teacher) under --save_dir once: the repository's copy
    where it ships one (the file the rows measured since 2026-12-02 asked; a
    teacher trained again differs in its last bits, and on another machine in
    its accuracy), else trained from its recipe (--fresh_teachers, or
    --teacher_epochs). Every method of the sweep then asks it."""
    for dataset in args.datasets:
        for name in args.teachers:
            path, teacher = teacher_path(args, name, dataset), TEACHERS[name]
            if os.path.isfile(path):
                continue
            trains = args.fresh_teachers or args.teacher_epochs  # a teacher of other epochs is not the shipped one
            shipped = None if trains else shipped_teacher(args, name, dataset)
            if shipped:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                shutil.copyfile(shipped, path)
                tqdm.write(f"the {dataset} teacher '{name}': {shipped} -> {path}")
                continue
            epochs = args.teacher_epochs or teacher.epochs.get(dataset, 10)
            tqdm.write(f"training the {dataset} teacher '{name}' ({epochs} epochs) -> {path}")
            script, *flags = (f.format(net=args.net) for f in teacher.train)
            out = ([f"--teacher_ckpt={path}", f"--save_dir={args.save_dir}", f"--exp_name={dataset}_{name}"]
                   if script == "pretrain.py" else [f"--out={path}"])
            done = subprocess.run([sys.executable, os.path.join(ROOT, script), f"--dataset={dataset}", *flags,
                                   f"--epochs={epochs}", f"--data_dir={args.data_dir}", *out],
                                  env=job_env(args, "cpu"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                sys.exit(f"compare: training the {dataset} teacher '{name}' failed: {last}")


def job_env(args, device):
    """One process per device slot; CPU jobs share the cores out between them."""
    env = dict(os.environ)
    if device == "cpu":
        cpu_slots = max(1, sum(d == "cpu" for d in args.devices))  # 0 when a GPU sweep trains a teacher
        env["OMP_NUM_THREADS"] = str(args.threads or max(1, (os.cpu_count() or 1) // cpu_slots))
    return env


def run_job(args, job, device):
    """Run (or resume) one job on `device`. Returns (job, None) or (job, error text)."""
    folder = run_dir(args, job)
    os.makedirs(os.path.join(args.save_dir, "logs"), exist_ok=True)
    with open(os.path.join(args.save_dir, "logs", f"{job.name}.lock"), "w") as lock:
        try:  # two runners on the same save_dir must not run the same job
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return job, "running in another process"
        if is_done(folder):
            return job, None
        if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "last.pt")):
            shutil.rmtree(folder)  # died before its first checkpoint: nothing to resume
        changed = resumed_elsewhere(folder, device, job_env(args, device))
        if changed:
            return job, changed
        log = os.path.join(args.save_dir, "logs", f"{job.name}.log")
        with open(log, "a") as out:  # the run holds the lock too: a runner killed before it leaves the job locked
            rc = subprocess.run(command(args, job, device), stdout=out, stderr=subprocess.STDOUT,
                                env=job_env(args, device), cwd=ROOT, pass_fds=(lock.fileno(),)).returncode
    return job, None if rc == 0 else f"exit {rc}, see {log}"


def resumed_elsewhere(folder, device, env):
    """Why the run in `folder` may not be resumed on `device` with `env`'s
    threads, or None: its summary would name only the resume's device and
    thread count, and a CPU run's numbers depend on the thread count."""
    try:
        with open(os.path.join(folder, "args.json")) as f:
            began = json.load(f)
    except (OSError, ValueError):
        return None  # a new run, or one killed before its args.json: nothing to compare
    kind = lambda name: "cuda" if str(name).startswith("cuda") else str(name)  # noqa: E731
    if kind(began.get("device")) != kind(device):
        return f"{folder} began on {began.get('device')}, and this sweep would resume it on {device}"
    threads = env.get("OMP_NUM_THREADS")
    if kind(device) == "cpu" and threads and began.get("threads") not in (None, int(threads)):
        return (f"{folder} began with {began['threads']} thread(s), and this sweep would resume it with {threads}: "
                f"rerun with --threads={began['threads']} (results depend on the thread count)")
    return None


def is_done(folder):
    return os.path.isfile(os.path.join(folder, "summary.json"))


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


def run_all(args, jobs):
    """Run the jobs, one per device slot at a time. Returns {job name: error}."""
    todo = [job for job in jobs if not is_done(run_dir(args, job))]
    slots = Queue()
    for device in args.devices:
        slots.put(device)

    def on_a_slot(job):
        device = slots.get()
        try:
            return run_job(args, job, device)
        finally:
            slots.put(device)

    failures = {}
    with ThreadPoolExecutor(len(args.devices)) as pool, \
            tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="compare", unit="run") as bar:
        for job, error in pool.map(on_a_slot, todo):
            if error:
                failures[job.name] = error
                tqdm.write(f"FAILED {job.name}: {error}")
            bar.update()
    return failures


def run_all_ray(args, jobs):
    """Run the jobs as Ray tasks, each with its CPUs and share of a GPU, on the
    nodes Ray picks (benchmarks/ray_backend.py). Returns {job name: error}."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # a script's own folder is there; a test loads this file by path
        sys.path.insert(0, here)
    import ray_backend  # here, so that the local backend never needs Ray

    todo = [job for job in jobs if not is_done(run_dir(args, job))]
    failures = {}
    with ray_backend.connected(args.ray_address) as ray, \
            tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="compare (ray)", unit="run") as bar:
        for job, error in ray_backend.run_jobs(ray, args, todo, command):
            if error:
                failures[job.name] = error
                tqdm.write(f"FAILED {job.name}: {error}")
            bar.update()
    return failures


# ---------------------------------------------------------------- reading runs

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


def readable_budgets(args, job, summary, curve):
    """The budgets a run can speak for: not above its own, and for a run still
    under way only those it has already spent."""
    budgets = [job.budget] if METHODS[job.method].per_budget else budgets_for(args, job.dataset)
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


def job_budgets(args, job):
    return [job.budget] if METHODS[job.method].per_budget else budgets_for(args, job.dataset)


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


def flag_value(flags, name, default):
    """The value the last of `name` in argv-style `flags` gives, written as
    `--name=value` or `--name value` (argparse takes both), else `default`."""
    value = default
    for flag, after in zip(flags, [*flags[1:], None]):
        if flag.startswith(name + "="):
            value = flag.split("=", 1)[1]
        elif flag == name and after is not None:
            value = after
    return value


def job_split(args, job):
    """The split a job is scored on (ideal.py --eval_split), from its flags."""
    return flag_value([*METHODS[job.method].flags, *args.job_flags.split()], "--eval_split", "test")


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
    ax.set(xlabel="teacher queries", ylabel=f"student {scored} accuracy (%)", title=f"{dataset}, teacher {ours[0]['teacher']}")
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
        json.dump({"rows": rows, "recipe_rows": pool_recipes(records), "runs": [{k: v for k, v in r.items() if k != "curve"} for r in records]},
                  f, indent=1)
    for dataset, teacher in dict.fromkeys((r["dataset"], r["teacher"]) for r in records):
        name = dataset if teacher == "main" else f"{dataset}_{teacher}"
        plot([r for r in records if r["teacher"] == teacher], dataset, os.path.join(args.out, f"compare_{name}.png"))
    tqdm.write(f"{len(records)} results from {len({r['run'] for r in records})} runs -> {args.out}/compare.md")
    return rows


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
