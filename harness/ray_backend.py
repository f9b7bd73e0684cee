"""compare.py --backend=ray: each job of the sweep is one Ray task.

A task asks Ray for --cpus_per_job CPUs and --gpus_per_job of a GPU (0.25 puts
four LeNet-sized jobs on one GPU) and runs harness.jobs.run_job wherever Ray
places it: the same lock, resume and command as the local backend, so the run
folders, the logs and the report are the same. Every node must see this
checkout and --save_dir at the same paths (a shared filesystem such as NFS): a
task imports the harness from there and its run writes there.

Ray is optional (requirements-cluster.txt); only this module imports it.
"""
import argparse
import dataclasses
import os
import shlex
from contextlib import contextmanager

from harness import jobs as sweep_jobs  # its functions read at call time, as the local backend does

LOG_TAIL_BYTES = 4096  # the end of a log that grows every epoch: enough for its last line


@contextmanager
def connected(address):
    """Ray for the length of a sweep: the cluster at `address` ('auto': the one
    `ray start` made on this node), or a Ray started on this machine when
    `address` is None. One already initialised (a notebook, a test) is used
    as it is and left running."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a sweep sends no usage report anywhere
    import ray
    ours = not ray.is_initialized()
    if ours:  # "local": a new Ray even where `ray start` once ran here (its address file outlives it)
        ray.init(address=address or "local", include_dashboard=False)
    try:
        yield ray
    finally:
        if ours:
            ray.shutdown()


def task_args(args):
    """The sweep's arguments as a task needs them: absolute paths, since a task
    starts in a folder of Ray's choosing, and for a CPU job --cpus_per_job
    threads (harness.jobs.job_env turns args.threads into OMP_NUM_THREADS)."""
    return argparse.Namespace(**{**vars(args), "save_dir": os.path.abspath(args.save_dir),
                                 "data_dir": os.path.abspath(args.data_dir),
                                 "threads": args.threads or args.cpus_per_job})


def run_job_task(args, fields, device):
    """On a Ray worker: run_job for the job with these fields. Returns its
    error text, or None."""
    return sweep_jobs.run_job(args, sweep_jobs.Job(**fields), device)[1]  # harness from sweep_jobs.ROOT: the PYTHONPATH


def run_jobs(ray, args, jobs):
    """Submit every job as a task; yield (job, None or a failure report) as each
    ends, in the order they end."""
    device = "cuda" if args.gpus_per_job else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU
    args = task_args(args)
    task = ray.remote(run_job_task)
    python_path = sweep_jobs.ROOT + os.pathsep + "${PYTHONPATH}"  # Ray expands ${...} on the node: its own path kept
    resources = {"num_cpus": args.cpus_per_job, "num_gpus": args.gpus_per_job,
                 "runtime_env": {"env_vars": {"PYTHONPATH": python_path}}}
    pending = {task.options(name=job.name, **resources).remote(args, dataclasses.asdict(job), device): job
               for job in jobs}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # no timeout: Ctrl-C waits for a job's end
        if not ready:
            continue
        job = pending.pop(ready[0])
        try:
            error = ray.get(ready[0])
        except ray.exceptions.RayError as err:  # the worker or its node died, not the run
            error = f"Ray: {type(err).__name__}: {last_line(str(err))}"
        yield job, error and failure_report(args, job, error, sweep_jobs.command(args, job, device))


def failure_report(args, job, error, cmd):
    """The error, the command that failed and its log's last line: enough to
    see what went wrong from the head node without opening the log."""
    log = os.path.join(args.save_dir, "logs", f"{job.name}.log")  # where run_job writes it
    return f"{error}\n    command: {shlex.join(cmd)}\n    last line: {last_log_line(log)}"


def last_log_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - LOG_TAIL_BYTES))
            return last_line(f.read().decode(errors="replace"))
    except OSError:
        return "(no log)"


def last_line(text):
    """The last non-blank line; a progress bar's carriage returns end lines too."""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "(empty)"
