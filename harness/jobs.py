"""The jobs of a sweep and how each runs: one run of ideal.py or dfme.py per
(method, dataset, teacher, seed), or per budget too, in its own process and
run folder, resumed from its last.pt when it was stopped. Two runners on one
--save_dir never run the same job (a lock file per job)."""
import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from queue import Queue

from tqdm import tqdm

from harness.registry import BUDGETS, METHODS, RUN_KIND, TEACHERS
from utils.run import UserError
from utils.teacher import file_sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "benchmarks", "teachers")  # the teachers of the rows measured since 2026-12-02


def budgets_for(args, dataset):
    return sorted(int(b) for b in args.budgets.split(",")) if args.budgets else list(BUDGETS[dataset])


def job_budgets(args, job):
    return [job.budget] if METHODS[job.method].per_budget else budgets_for(args, job.dataset)


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


def command(args, job, device):
    """The job's command line: the method's flags on top of the shared ones."""
    method = METHODS[job.method]
    cmd = [sys.executable, os.path.join(ROOT, method.script), f"--dataset={job.dataset}",
           f"--net={args.net}", f"--query_budget={job.budget}", f"--seed={job.seed}",
           f"--save_dir={args.save_dir}", f"--data_dir={args.data_dir}", f"--exp_name={job.name}",
           f"--device={device}", f"--teacher_ckpt={teacher_path(args, job.teacher, job.dataset)}",
           *(f.format(net=args.net) for f in TEACHERS[job.teacher].flags), *method.flags]
    if method.script == "ideal.py":
        epochs = epochs_for(job.budget, args.batch_size, method.relabel)
        cmd += [f"--epochs={epochs}", f"--batch_size={args.batch_size}"]
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
                raise UserError(f"training the {dataset} teacher '{name}' failed: {last}")


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
    nodes Ray picks (harness/ray_backend.py). Returns {job name: error}."""
    from harness import ray_backend  # here, so that the local backend never needs Ray

    todo = [job for job in jobs if not is_done(run_dir(args, job))]
    failures = {}
    with ray_backend.connected(args.ray_address) as ray, \
            tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="compare (ray)", unit="run") as bar:
        for job, error in ray_backend.run_jobs(ray, args, todo):
            if error:
                failures[job.name] = error
                tqdm.write(f"FAILED {job.name}: {error}")
            bar.update()
    return failures
