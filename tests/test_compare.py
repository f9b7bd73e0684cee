"""benchmarks/compare.py: the sweep over methods x seeds at counted budgets."""
import argparse
import copy
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import pytest
import torch

import harness.jobs as sweep_jobs
import harness.ray_backend as ray_backend
import harness.report as sweep_report
import harness.runs as sweep_runs
import ideal
import pretrain
from test_scripts import ROOT, load_script, tiny_mnist
from utils.run import load_checkpoint

compare = load_script("benchmarks/compare.py")
TINY = "--nz=8 --ngf=4 --g_steps=2"  # after the preset's flags, so these win


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two methods x two seeds on tiny MNIST, two CPU jobs side by side."""
    root = tmp_path_factory.mktemp("compare")
    data_dir, save_dir = str(root / "data"), str(root / "runs")
    tiny_mnist(data_dir)
    pretrain.main(pretrain.parse_args(["--dataset=mnist", "--net=lenet", "--epochs=2", "--batch_size=32",
                                       "--lr=0.05", f"--data_dir={data_dir}", f"--save_dir={save_dir}"]))
    flags = ["--methods=noise,ideal_cpu", "--datasets=mnist", "--seeds=1,2", "--budgets=20,40",
             "--batch_size=10", "--devices=cpu,cpu", "--threads=1", f"--job_flags={TINY}",
             f"--save_dir={save_dir}", f"--data_dir={data_dir}", f"--out={root / 'results'}"]
    args = compare.parse_args(flags)
    failures = compare.main(args)
    return {"root": root, "flags": flags, "args": args, "failures": failures,
            "results": json.load(open(root / "results" / "compare.json"))}


def test_sweep_reads_every_budget_off_one_run(sweep):
    assert sweep["failures"] == {}
    runs = sweep["results"]["runs"]
    # 2 methods x 2 seeds, each run once at 40 queries and read at 20 and 40
    assert sorted((r["method"], r["seed"], r["budget"]) for r in runs) == sorted(
        (m, s, b) for m in ("noise", "ideal_cpu") for s in (1, 2) for b in (20, 40))
    assert len({r["run"] for r in runs}) == 4
    for r in runs:
        assert r["queries"] == r["budget"]  # one query per sample, B=10: epochs 2 and 4
        summary = json.load(open(os.path.join(r["run"], "summary.json")))
        assert summary["method"] == {"noise": "noise", "ideal_cpu": "ideal"}[r["method"]]
        if r["budget"] == 40:
            assert r["final_acc"] == summary["final_acc"] and summary["queries"] == 40


def test_sweep_aggregates_over_seeds(sweep):
    runs, rows = sweep["results"]["runs"], sweep["results"]["rows"]
    assert len(rows) == 4
    for row in rows:
        finals = [r["final_acc"] for r in runs if (r["method"], r["budget"]) == (row["method"], row["budget"])]
        assert row["seeds"] == [1, 2]
        assert row["final_mean"] == pytest.approx(statistics.mean(finals))
        assert row["final_std"] == pytest.approx(statistics.stdev(finals))
    table = open(sweep["root"] / "results" / "compare.md").read()
    assert "| ideal_cpu | 40 | 40 |" in table and "| noise | 20 | 20 |" in table


def test_sweep_figure_has_content(sweep):
    import matplotlib.image
    image = matplotlib.image.imread(sweep["root"] / "results" / "compare_mnist.png")
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # lines, text and bands, not a blank canvas


def test_sweep_preset_reaches_the_job(sweep):
    args = json.load(open(os.path.join(sweep["args"].save_dir, "ideal", "mnist-ideal_cpu-s1", "args.json")))
    assert (args["g_steps"], args["lr_g"], args["ngf"]) == (2, 0.01, 4)  # preset, then TINY on top


def test_second_sweep_runs_nothing_and_resumes_the_unfinished(sweep, monkeypatch):
    args = compare.parse_args(sweep["flags"])
    ran = []
    monkeypatch.setattr(sweep_jobs, "run_job", lambda a, job, device: ran.append(job.name) or (job, None))
    assert compare.main(args) == {} and ran == []
    folder = os.path.join(args.save_dir, "ideal", "mnist-noise-s2")
    os.rename(os.path.join(folder, "summary.json"), os.path.join(folder, "summary.bak"))
    try:
        compare.main(args)
        assert ran == ["mnist-noise-s2"]
        job = sweep_jobs.Job("noise", "mnist", 2, 40)
        assert sweep_jobs.command(args, job, "cpu")[-1] == "--resume"  # last.pt is there
    finally:
        os.rename(os.path.join(folder, "summary.bak"), os.path.join(folder, "summary.json"))


def test_parallel_jobs_equal_serial_ones(sweep, tmp_path):
    """A job's result does not depend on what runs beside it (same thread count)."""
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--devices", "--out"))]
    serial = compare.parse_args([*flags, "--methods=ideal_cpu", "--seeds=1", "--devices=cpu",
                                 f"--out={tmp_path}"])
    serial.save_dir = str(tmp_path / "runs")
    os.makedirs(os.path.join(serial.save_dir, "teachers"))
    teacher = os.path.join(sweep["args"].save_dir, "teachers", "mnist_lenet.pt")
    os.link(teacher, os.path.join(serial.save_dir, "teachers", "mnist_lenet.pt"))
    assert compare.main(serial) == {}
    name = os.path.join("ideal", "mnist-ideal_cpu-s1", "last.pt")
    a = load_checkpoint(os.path.join(sweep["args"].save_dir, name), "cpu")
    b = load_checkpoint(os.path.join(serial.save_dir, name), "cpu")
    assert torch.equal(a["pool"]["images"], b["pool"]["images"])
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key


def test_failed_job_is_reported(sweep, tmp_path):
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--job_flags", "--out"))]
    args = compare.parse_args([*flags, "--methods=noise", "--seeds=9", "--job_flags=--no_such_flag",
                               f"--out={tmp_path}"])
    failures = compare.main(args)
    assert list(failures) == ["mnist-noise-s9"]
    assert "exit 2" in failures["mnist-noise-s9"]
    log = failures["mnist-noise-s9"].split("see ")[1]
    assert "--no_such_flag" in open(log).read()


def test_a_validation_sweep_is_read_and_labelled_as_such(sweep, tmp_path):
    """--job_flags=--eval_split=val: the curve comes from the val/ tags and the
    table marks the rows, so they are never taken for test accuracies."""
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--job_flags", "--out"))]
    args = compare.parse_args([*flags, "--methods=noise", "--seeds=1", f"--job_flags={TINY} --eval_split=val",
                               f"--out={tmp_path}"])
    args.save_dir = str(tmp_path / "runs")
    os.makedirs(os.path.join(args.save_dir, "teachers"))
    os.link(os.path.join(sweep["args"].save_dir, "teachers", "mnist_lenet.pt"),
            os.path.join(args.save_dir, "teachers", "mnist_lenet.pt"))
    assert compare.main(args) == {}
    results = json.load(open(tmp_path / "compare.json"))
    assert {r["eval_split"] for r in results["rows"]} == {"val"}
    assert [len(r["curve"]) for r in sweep_runs.collect(args, sweep_jobs.plan(args))] == [4, 4]  # read, not empty
    assert "| noise [val] | 40 | 40 |" in open(tmp_path / "compare.md").read()


def test_unfinished_runs_report_only_the_budgets_they_passed(sweep, tmp_path):
    """A run under way (no summary.json yet) speaks for the budgets it has
    spent, starred, and never for its own; without --unfinished, for none."""
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--out"))]
    args = compare.parse_args([*flags, "--methods=ideal_cpu", "--seeds=1,2", "--report_only", "--unfinished",
                               f"--out={tmp_path}"])
    args.save_dir = str(tmp_path / "runs")
    shutil.copytree(sweep["args"].save_dir, args.save_dir)
    os.remove(os.path.join(args.save_dir, "ideal", "mnist-ideal_cpu-s2", "summary.json"))
    records = sweep_runs.collect(args, sweep_jobs.plan(args))
    assert sorted((r["seed"], r["budget"], r["unfinished"]) for r in records) == [
        (1, 20, False), (1, 40, False), (2, 20, True)]
    finished = {r["budget"]: r for r in json.load(open(sweep["root"] / "results" / "compare.json"))["runs"]
                if (r["method"], r["seed"]) == ("ideal_cpu", 2)}
    unfinished = next(r for r in records if r["seed"] == 2)
    assert unfinished["final_acc"] == finished[20]["final_acc"]  # the same reading as when it had finished
    assert unfinished["teacher_acc"] == finished[20]["teacher_acc"]
    assert unfinished["threads"] == finished[20]["threads"]  # from args.json, as summary.json has it
    compare.main(args)
    assert "| ideal_cpu | 20 | 20 |" in open(tmp_path / "compare.md").read()
    assert "2 (1,2*)" in open(tmp_path / "compare.md").read()
    args.unfinished = False
    assert {r["seed"] for r in sweep_runs.collect(args, sweep_jobs.plan(args))} == {1}


def test_a_run_not_yet_evaluated_is_left_out_of_an_unfinished_report(sweep, tmp_path):
    """A run still labelling its pool (--label_first) has logged queries but no
    accuracy: --unfinished passes over it instead of failing the report."""
    from torch.utils.tensorboard import SummaryWriter
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--out"))]
    args = compare.parse_args([*flags, "--methods=noise", "--seeds=1,2", "--budgets=20", "--report_only",
                               "--unfinished", f"--out={tmp_path}"])
    args.save_dir = str(tmp_path / "runs")
    shutil.copytree(sweep["args"].save_dir, args.save_dir)
    folder = sweep_jobs.run_dir(args, next(j for j in sweep_jobs.plan(args) if j.seed == 2))
    os.remove(os.path.join(folder, "summary.json"))
    for name in os.listdir(folder):
        if name.startswith("events.out.tfevents"):
            os.remove(os.path.join(folder, name))
    with SummaryWriter(folder) as writer:
        writer.add_scalar("queries", 10, 1)
    assert sweep_runs.read_curve(folder) == []
    assert [(r["seed"], r["budget"]) for r in sweep_runs.collect(args, sweep_jobs.plan(args))] == [(1, 20)]
    with open(os.path.join(folder, "summary.json"), "w") as f:  # finished, yet no curve: refused, not dropped
        f.write("{}")
    with pytest.raises(compare.UserError, match="no test/acc"):
        sweep_runs.collect(args, sweep_jobs.plan(args))


def test_at_budget_reads_the_last_point_within_it():
    curve = [(10, 30.0, 1.0), (20, 50.0, 2.0), (30, 40.0, 3.0), (40, 60.0, 4.0)]
    assert sweep_runs.at_budget(curve, 5) is None
    assert sweep_runs.at_budget(curve, 20) == (50.0, 50.0, 20, 2.0)
    assert sweep_runs.at_budget(curve, 35) == (40.0, 50.0, 30, 3.0)  # final 40, best so far 50
    assert sweep_runs.at_budget(curve, 40) == (60.0, 60.0, 40, 4.0)


def test_band_draws_a_run_under_way_only_as_far_as_it_has_spent():
    done = [(10, 30.0, 1.0), (20, 50.0, 2.0), (40, 70.0, 4.0)]
    under_way = [(10, 10.0, 1.0), (20, 30.0, 2.0)]
    grid, mean, low, high = sweep_report.band([done, under_way])
    assert grid.tolist() == [10, 20, 40]
    assert mean.tolist() == [20.0, 40.0, 70.0]  # at 40 the finished run alone, not its 30 held flat
    assert low.tolist() == [10.0, 30.0, 70.0] and high.tolist() == [30.0, 50.0, 70.0]
    grid, mean, _, _ = sweep_report.band([done, [(10, 30.0, 1.0), (30, 50.0, 3.0)]])
    assert mean.tolist() == [30.0, 45.0, 55.0, 70.0]  # at 20: (50 + 40) / 2, at 30: (60 + 50) / 2, interpolated


def test_figure_error_bars_are_the_tables_sample_std(tmp_path, monkeypatch):
    """A per-budget method's point carries the +- its table prints (n - 1), and
    a single run no bar."""
    import matplotlib.axes
    drawn = {}
    real = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.update(zip(x, yerr))
        return real(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    base = {"dataset": "mnist", "method": "naive", "teacher": "main", "teacher_acc": 99.0, "eval_split": "test"}
    records = [{**base, "budget": 5000, "final_acc": acc} for acc in (90.0, 92.0, 94.0)]
    records.append({**base, "budget": 25000, "final_acc": 9.74})
    sweep_report.plot(records, "mnist", str(tmp_path / "f.png"))
    assert drawn == {5000: statistics.stdev([90.0, 92.0, 94.0]), 25000: 0.0}


def test_figure_tells_two_teacher_files_apart(tmp_path, monkeypatch):
    """A column whose rows asked two files of one recipe draws each teacher's
    accuracy in its own line style, so the legend says which line is which."""
    import matplotlib.axes
    styles = {}
    real = matplotlib.axes.Axes.axhline

    def spy(self, y, **kwargs):
        styles[y] = kwargs["ls"]
        return real(self, y, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "axhline", spy)
    base = {"dataset": "fmnist", "method": "naive", "teacher": "main", "eval_split": "test", "budget": 5000}
    records = [{**base, "teacher_acc": 92.11, "teacher_sha256": "e3a2dced" * 8, "final_acc": 10.0},
               {**base, "method": "prior_kd", "teacher_acc": 92.17, "teacher_sha256": None, "final_acc": 40.0}]
    sweep_report.plot(records, "fmnist", str(tmp_path / "f.png"))
    assert set(styles) == {92.11, 92.17} and styles[92.11] != styles[92.17]


def test_per_budget_method_runs_once_per_budget():
    args = compare.parse_args(["--methods=dfme,noise", "--datasets=mnist", "--seeds=1,2",
                               "--budgets=5000,25000"])
    names = [job.name for job in sweep_jobs.plan(args)]
    assert names == ["mnist-dfme-b5000-s1", "mnist-dfme-b25000-s1", "mnist-dfme-b5000-s2",
                     "mnist-dfme-b25000-s2", "mnist-noise-s1", "mnist-noise-s2"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--methods=nope"])


def test_flags_that_depend_on_the_run_length_are_refused():
    """With distill-only epochs a run stopped early is not the run at a smaller budget."""
    for flag in ("--distill_epochs=5", "--epochs=3"):
        with pytest.raises(SystemExit):
            compare.parse_args([f"--job_flags={flag}"])


def test_backend_flags_belong_to_their_backend(monkeypatch, tmp_path):
    for flags in (["--gpus_per_job=0.5"], ["--ray_address=auto"], ["--cpus_per_job=2"],
                  ["--backend=ray", "--devices=cpu,cpu"], ["--backend=ray", "--gpus_per_job=1.5"]):
        with pytest.raises(SystemExit):
            compare.parse_args(flags)
    monkeypatch.setattr(compare.importlib.util, "find_spec", lambda name: None)  # as if Ray were not installed
    with pytest.raises(SystemExit):
        compare.parse_args(["--backend=ray"])
    args = compare.parse_args(["--backend=ray", "--report_only", "--cpus_per_job=3", "--save_dir=runs",
                               f"--data_dir={tmp_path}"])  # a report needs no Ray
    sent = ray_backend.task_args(args)  # a task starts in a folder of Ray's choosing, with its CPUs as threads
    assert sent.save_dir == os.path.abspath("runs") and sent.data_dir == str(tmp_path) and sent.threads == 3
    assert args.save_dir == "runs" and args.threads == 0


def test_lists_threads_and_devices_no_job_could_honour_are_refused():
    for flags in (["--seeds=1,x"], ["--budgets=10,x"], ["--seeds=1,"], ["--threads=-2"], ["--devices=cpu,"],
                  ["--devices=gpu"], ["--backend=ray", "--gpus_per_job=nan"]):
        with pytest.raises(SystemExit):
            compare.parse_args(flags)
    assert compare.parse_args(["--devices=cpu,cuda:1,cuda", "--seeds=1,22"]).seeds == [1, 22]


def test_a_run_resumes_only_where_and_as_it_began(tmp_path):
    """Its summary names one device and thread count: a resume on another is refused."""
    (tmp_path / "args.json").write_text(json.dumps({"device": "cpu", "threads": 1}))
    assert sweep_jobs.resumed_elsewhere(str(tmp_path), "cpu", {"OMP_NUM_THREADS": "1"}) is None
    assert "rerun with --threads=1" in sweep_jobs.resumed_elsewhere(str(tmp_path), "cpu", {"OMP_NUM_THREADS": "2"})
    assert "began on cpu" in sweep_jobs.resumed_elsewhere(str(tmp_path), "cuda:0", {})
    assert sweep_jobs.resumed_elsewhere(str(tmp_path / "new"), "cuda", {}) is None


def test_the_job_holds_its_lock_as_long_as_it_runs(tmp_path, monkeypatch):
    """The job's process inherits the lock, so a runner killed under it leaves
    the job locked for as long as the job lives (two runs in one folder pay twice)."""
    holds = ("import os, sys; fds = os.listdir('/proc/self/fd'); sys.exit(0 if any(os.path.realpath("
             "f'/proc/self/fd/{fd}').endswith('.lock') for fd in fds) else 3)")
    monkeypatch.setattr(sweep_jobs, "command", lambda args, job, device: [sys.executable, "-c", holds])
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20",
                               f"--save_dir={tmp_path}", "--threads=1"])
    job = sweep_jobs.plan(args)[0]
    assert sweep_jobs.run_job(args, job, "cpu") == (job, None)


def test_a_failure_report_names_the_command_and_the_log_last_line(tmp_path):
    job, args = sweep_jobs.Job("noise", "mnist", 1, 40), argparse.Namespace(save_dir=str(tmp_path))
    report = ray_backend.failure_report(args, job, "exit 2", ["python", "ideal.py", "--a=b c"])
    assert report == "exit 2\n    command: python ideal.py '--a=b c'\n    last line: (no log)"
    os.makedirs(tmp_path / "logs")  # a long log, a progress bar's carriage returns, blank lines at the end
    (tmp_path / "logs" / f"{job.name}.log").write_text("x" * 10000 + "\nepoch 1: 50%\repoch 1: 100%\n"
                                                      "error: it broke\n\n")
    assert ray_backend.failure_report(args, job, "exit 2", ["python"]).endswith("last line: error: it broke")
    assert ray_backend.last_line("a\rb\r") == "b" and ray_backend.last_line("") == "(empty)"


def test_ray_backend_gives_the_local_table(sweep, tmp_path, monkeypatch):
    """--backend=ray on a local Ray with 2 CPUs: the same table as the local
    sweep's for the same runs (one thread per job in both), and a job that
    fails is reported with its command and its log's last line while the
    others finish."""
    ray = pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-cluster.txt")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes its cluster's token into ~/.ray
    session = tempfile.mkdtemp(prefix="ray")  # Ray's files, not /tmp/ray; a short path: its sockets live there
    # the Ray that compare.py starts: 2 CPUs, on loopback only
    monkeypatch.setattr(ray, "init", functools.partial(ray.init, num_cpus=2, _node_ip_address="127.0.0.1",
                                                       _temp_dir=session))
    flags = [f for f in sweep["flags"] if not f.startswith(("--methods", "--seeds", "--devices", "--out"))]
    args = compare.parse_args([*flags, "--methods=noise,ideal_cpu,random_generator", "--seeds=1", "--backend=ray",
                               f"--out={tmp_path}"])
    args.save_dir = str(tmp_path / "runs")
    os.makedirs(os.path.join(args.save_dir, "teachers"))
    os.link(os.path.join(sweep["args"].save_dir, "teachers", "mnist_lenet.pt"),
            os.path.join(args.save_dir, "teachers", "mnist_lenet.pt"))
    broken = os.path.join(args.save_dir, "ideal", "mnist-random_generator-s1")
    os.makedirs(broken)
    open(os.path.join(broken, "last.pt"), "w").write("not a checkpoint")  # so this job resumes and fails

    try:
        failures = compare.main(args)
    finally:
        shutil.rmtree(session, ignore_errors=True)
    assert not ray.is_initialized()  # the Ray that compare.py started is shut down
    assert list(failures) == ["mnist-random_generator-s1"]
    report = failures["mnist-random_generator-s1"]
    assert "exit 2" in report and "--exp_name=mnist-random_generator-s1" in report and "--resume" in report
    assert "not a readable checkpoint" in report.split("last line: ")[1]

    ours = json.load(open(tmp_path / "compare.json"))["runs"]
    assert {(r["method"], r["seed"]) for r in ours} == {("noise", 1), ("ideal_cpu", 1)}
    assert {r["threads"] for r in ours} == {1}
    local = [r for r in sweep["results"]["runs"] if r["seed"] == 1]

    def table(runs):  # the rows of compare.md, less the wall time; a one-seed std is NaN, which equals nothing
        return [{k: None if v != v else v for k, v in row.items() if k != "wall_s_mean"}
                for row in sweep_report.aggregate([{**r, "wall_s": 0.0} for r in runs])]
    assert len(table(ours)) == 4 and table(ours) == table(local)


def test_teachers_of_one_recipe_are_pooled_over_teachers_and_seeds():
    def run(teacher, seed, acc):
        return {"dataset": "mnist", "teacher": teacher, "method": "ideal_best", "budget": 100, "seed": seed,
                "eval_split": "test", "final_acc": acc, "teacher_acc": {"main": 99.2, "main_s2022": 99.0,
                                                                        "sgd": 98.0}[teacher]}
    records = [run("main", 1, 90.0), run("main", 2, 92.0), run("main_s2022", 1, 80.0), run("main_s2022", 2, 86.0),
               run("sgd", 1, 50.0)]  # sgd: a recipe of its own, never pooled with main
    [row] = sweep_report.pool_recipes(records)
    assert (row["recipe"], row["runs"], row["final_min"], row["final_max"]) == ("main", 4, 80.0, 92.0)
    assert row["final_mean"] == pytest.approx(87.0)
    assert row["final_std"] == pytest.approx(statistics.stdev([90.0, 92.0, 80.0, 86.0]))
    assert {t: v["final_mean"] for t, v in row["teachers"].items()} == {"main": 91.0, "main_s2022": 83.0}
    table = "\n".join(sweep_report.recipe_markdown([row]))
    assert "| mnist | main | ideal_best | 100 | 4 | **87.00 +- 5.29** | 80.00 - 92.00 |" in table
    assert sweep_report.pool_recipes(records[:2] + records[4:]) == []  # one teacher of the recipe: nothing to pool


def test_a_teacher_of_another_net_keeps_the_sweeps_student(sweep):
    """dipkd_lenet5: the job asks a LeNet-5 teacher (its file says so) and trains
    the sweep's --net as the student; the flags reach ideal.py in that order."""
    args = compare.parse_args(sweep["flags"] + ["--teachers=dipkd_lenet5", "--seeds=1", "--budgets=20"])
    job = sweep_jobs.plan(args)[0]
    path = sweep_jobs.teacher_path(args, "dipkd_lenet5", "mnist")
    pretrain.main(pretrain.parse_args(["--dataset=mnist", "--net=lenet5", "--epochs=1", "--batch_size=32",
                                       f"--data_dir={args.data_dir}", f"--save_dir={args.save_dir}",
                                       f"--teacher_ckpt={path}"]))
    cmd = sweep_jobs.command(args, job, "cpu")
    assert cmd.index("--net=lenet5") > cmd.index("--net=lenet") and "--student_net=lenet" in cmd
    summary = ideal.main(ideal.parse_args(cmd[2:]))
    assert summary["queries"] == 20
    saved = json.load(open(os.path.join(sweep_jobs.run_dir(args, job), "args.json")))
    assert (saved["net"], saved["student_net"]) == ("lenet5", "lenet")


def kept_setup(sweep, tmp_path, reports, lost):
    """A copy of the sweep's runs less the `lost` (method, seed) ones, and
    --keep on the given reports (each a list of run records)."""
    paths = []
    os.makedirs(tmp_path, exist_ok=True)
    for i, runs in enumerate(reports):
        paths.append(str(tmp_path / f"kept{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump({"runs": runs}, f)
    flags = [f for f in sweep["flags"] if not f.startswith("--out")]
    args = compare.parse_args([*flags, f"--keep={','.join(paths)}", f"--out={tmp_path / 'out'}"])
    args.save_dir = str(tmp_path / "runs")
    shutil.copytree(sweep["args"].save_dir, args.save_dir)
    for job in sweep_jobs.plan(args):
        if (job.method, job.seed) in lost:
            shutil.rmtree(sweep_jobs.run_dir(args, job))
    return args


def report_of(args):
    args.report_only = True
    compare.main(args)
    return (json.load(open(os.path.join(args.out, "compare.json")))["runs"],
            open(os.path.join(args.out, "compare.md")).read())


def test_keep_fills_in_the_runs_this_machine_no_longer_has(sweep, tmp_path):
    """--keep: an earlier report's finished results stand for runs that are
    gone and are not run again; a result of another teacher file never joins
    a row with runs here, one of the same file does."""
    runs = copy.deepcopy(sweep["results"]["runs"])
    sha = runs[0]["teacher_sha256"]
    for r in runs:
        if (r["method"], r["seed"]) == ("noise", 2):
            r["teacher_sha256"] = "0" * 64  # asked another teacher file
    args = kept_setup(sweep, tmp_path, [runs], lost={("ideal_cpu", 1), ("ideal_cpu", 2), ("noise", 2)})
    assert [(j.method, j.seed) for j in sweep_runs.to_run(args, sweep_jobs.plan(args))] == [("noise", 2)]
    after, table = report_of(args)
    before = {(r["method"], r["seed"], r["budget"]): r for r in sweep["results"]["runs"]}
    assert sorted((r["method"], r["seed"], r["budget"]) for r in after) == sorted(
        k for k in before if k[:2] != ("noise", 2))
    for r in after:
        assert r["final_acc"] == before[(r["method"], r["seed"], r["budget"])]["final_acc"]
        assert bool(r.get("kept_from")) == (r["method"] == "ideal_cpu")
        assert r["teacher_sha256"] == sha is not None
    assert "4 of the 6 results were read from earlier reports" in table
    assert "2 more were left out: they asked another teacher file" in table
    assert "| noise | 20 | 20 |" in table and "| 1 (1) |" in table  # noise: seed 1 alone, from here
    assert os.path.isfile(tmp_path / "out" / "compare_mnist.png")  # ideal_cpu drawn as points per budget

    args = kept_setup(sweep, tmp_path / "same", [sweep["results"]["runs"]], lost={("noise", 2)})
    after, table = report_of(args)  # the same file: seed 2 joins seed 1's rows
    assert sorted((r["method"], r["seed"], r["budget"]) for r in after) == sorted(before)
    assert "| 2 (1,2) |" in table and "2 of the 8 results" in table


def test_keep_takes_only_the_sweeps_split_and_whole_jobs(sweep, tmp_path):
    """A kept [val] result never stands for a test run, and a job is skipped
    only when every budget it speaks for is kept."""
    runs = sweep["results"]["runs"]
    mine = [r for r in runs if (r["method"], r["seed"]) == ("ideal_cpu", 1)]
    val = [{**r, "eval_split": "val", "final_acc": -1.0} for r in mine]
    largest = [r for r in mine if r["budget"] == 40]
    args = kept_setup(sweep, tmp_path, [val, largest], lost={("ideal_cpu", 1)})
    assert ("ideal_cpu", 1) in [(j.method, j.seed) for j in sweep_runs.to_run(args, sweep_jobs.plan(args))]
    after, _ = report_of(args)
    assert {r["eval_split"] for r in after} == {"test"}
    assert [r["budget"] for r in after if r.get("kept_from")] == [40]  # 20 was not kept: the job runs again


def test_job_split_reads_both_spellings_of_a_flag():
    """--eval_split val (two words) scores a job on held-out images as
    --eval_split=val does; the last one given wins, as in argparse."""
    job = sweep_jobs.Job("noise", "mnist", 1, 20, "main")
    for flags, split in [("", "test"), ("--eval_split=val", "val"), ("--eval_split val", "val"),
                         ("--eval_split val --eval_split=test", "test"), ("--eval_split", "test")]:
        args = compare.parse_args(["--methods=noise", "--datasets=mnist", f"--job_flags={flags}"])
        assert sweep_jobs.job_split(args, job) == split, flags


def a_finished_run(monkeypatch, **summary):
    """Make every job's folder hold a finished run with this summary and the
    curve (queries, acc, seconds) 10: 50%, 20: 60%, 40: 70%, 50: 90%."""
    summary = {"query_budget": 50, "final_acc": 90.0, "best_acc": 90.0, "queries": 50, "teacher_acc": 99.0,
               "teacher_sha256": "a" * 64, "device": "cpu", "eval_split": "test", **summary}
    curve = [(10, 50.0, 1.0), (20, 60.0, 2.0), (40, 70.0, 4.0), (50, 90.0, 5.0)]
    monkeypatch.setattr(sweep_runs, "run_summary", lambda folder, unfinished: summary)
    monkeypatch.setattr(sweep_runs, "read_curve", lambda folder, split="test": curve)


def test_a_run_of_a_larger_sweep_is_read_at_the_sweeps_budgets(monkeypatch):
    """A folder a 50-query sweep left under the same name speaks for 40 with its
    curve at 40 (70%, 40 queries), not with its summary's end (90%, 50)."""
    a_finished_run(monkeypatch)
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20,40"])
    read = {r["budget"]: (r["final_acc"], r["queries"]) for r in sweep_runs.collect(args, sweep_jobs.plan(args))}
    assert read == {20: (60.0, 20), 40: (70.0, 40)}
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20,50"])
    assert {r["budget"]: r["queries"] for r in sweep_runs.collect(args, sweep_jobs.plan(args))} == {20: 20, 50: 50}


def test_a_folder_scored_on_another_split_is_refused(monkeypatch):
    """A held-out run under a test sweep's folder name is neither reported as
    test nor taken as the job done."""
    a_finished_run(monkeypatch, eval_split="val")
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20,40"])
    with pytest.raises(compare.UserError, match="scored on val images and this sweep asks test"):
        sweep_runs.collect(args, sweep_jobs.plan(args))
    with pytest.raises(compare.UserError, match="scored on val"):
        sweep_runs.check_finished(args, sweep_jobs.plan(args))
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20,40",
                               "--job_flags=--eval_split val"])
    assert {r["eval_split"] for r in sweep_runs.collect(args, sweep_jobs.plan(args))} == {"val"}


def test_a_finished_shorter_run_is_refused_before_running(monkeypatch):
    """A sweep to 100 queries does not skip a job whose folder stopped at 50
    (its row would quietly lack the seed); a report reads the 50 it has."""
    a_finished_run(monkeypatch)
    args = compare.parse_args(["--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=50,100"])
    with pytest.raises(compare.UserError, match="stopped at 50 queries and this sweep asks 100"):
        sweep_runs.check_finished(args, sweep_jobs.plan(args))
    assert [r["budget"] for r in sweep_runs.collect(args, sweep_jobs.plan(args))] == [50]


def test_a_refused_sweep_says_why_in_one_line(tmp_path):
    """compare.py's own refusals end the script with one line, not a traceback."""
    folder = tmp_path / "ideal" / "mnist-noise-s1"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"eval_split": "val", "query_budget": 40}))
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "compare.py"), "--report_only",
                           "--methods=noise", "--datasets=mnist", "--seeds=1", "--budgets=20,40",
                           f"--save_dir={tmp_path}", f"--out={tmp_path / 'out'}"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"compare.py: error: {folder} was scored on val images and this "
                                                "sweep asks test: move it out of --save_dir"]


def test_keep_asks_one_teacher_file_per_row_across_reports(sweep, tmp_path):
    """Two reports hold one row from two files: the file under --save_dir
    wins, whatever the order, and a re-kept result names its first report."""
    runs = [r for r in sweep["results"]["runs"] if r["method"] == "noise"]
    old = [{**r, "teacher_sha256": None, "final_acc": -1.0} for r in runs]  # a report that recorded no sha256
    new = [{**r, "kept_from": "first.json"} for r in runs if r["seed"] == 2]
    args = kept_setup(sweep, tmp_path, [old, new], lost={("noise", 1), ("noise", 2)})
    after, table = report_of(args)
    noise = [r for r in after if r["method"] == "noise"]
    assert sorted((r["seed"], r["budget"]) for r in noise) == [(2, 20), (2, 40)]
    assert {r["kept_from"] for r in noise} == {"first.json"} and -1.0 not in {r["final_acc"] for r in noise}
    assert "2 more were left out" in table


def test_a_row_never_mixes_teacher_files():
    """Seeds of one row asked one teacher file: a row of two is refused, and a
    result that recorded no sha256 is known by its accuracy alone."""
    base = {"dataset": "mnist", "teacher": "main", "method": "naive", "budget": 100, "eval_split": "test",
            "final_acc": 9.74, "best_acc": 9.74, "queries": 100, "wall_s": 1.0, "device": "cpu", "threads": 1,
            "unfinished": False, "teacher_acc": 99.21}
    one = [{**base, "seed": s, "teacher_sha256": "ab" * 32} for s in (1, 2)]
    [row] = sweep_report.aggregate(one)
    assert row["teacher_id"] == "99.21%, abababab"
    with pytest.raises(compare.UserError, match="mixes teacher files"):
        sweep_report.aggregate(one + [{**base, "seed": 3, "teacher_sha256": None}])
    assert sweep_report.aggregate([{**base, "seed": 3}])[0]["teacher_id"] == "99.21%, sha256 not recorded"


def test_a_shipped_teacher_is_copied_not_trained(sweep, tmp_path, monkeypatch):
    """ensure_teachers takes the repository's copy of a teacher (the file the
    rows measured since 2026-12-02 asked) and trains from the recipe only with
    --fresh_teachers or --teacher_epochs."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    source = os.path.join(sweep["args"].save_dir, "teachers", "mnist_lenet.pt")
    shutil.copyfile(source, shipped / "mnist_lenet_sgd.pt")
    readme = "| file | sha256 (first 16) |\n|---|---|\n| `mnist_lenet_sgd.pt` | `{}` |\n"
    (shipped / "README.md").write_text(readme.format(sweep_jobs.file_sha256(source)[:16]))
    monkeypatch.setattr(sweep_jobs, "SHIPPED", str(shipped))
    flags = [f for f in sweep["flags"] if not f.startswith("--save_dir")]
    args = compare.parse_args([*flags, "--teachers=sgd", f"--save_dir={tmp_path / 'runs'}"])
    trained = []
    monkeypatch.setattr(sweep_jobs.subprocess, "run",
                        lambda cmd, **k: trained.append(cmd) or sweep_jobs.subprocess.CompletedProcess(cmd, 0))
    sweep_jobs.ensure_teachers(args)
    copied = sweep_jobs.teacher_path(args, "sgd", "mnist")
    assert trained == [] and open(copied, "rb").read() == open(source, "rb").read()
    args = compare.parse_args([*flags, "--teachers=sgd", "--fresh_teachers", f"--save_dir={tmp_path / 'fresh'}"])
    sweep_jobs.ensure_teachers(args)
    assert len(trained) == 1 and "--schedule=none" in trained[0]  # the sgd recipe's training
    args = compare.parse_args([*flags, "--teachers=sgd", "--teacher_epochs=1", f"--save_dir={tmp_path / 'short'}"])
    sweep_jobs.ensure_teachers(args)  # a teacher of other epochs is not the shipped one: trained
    assert len(trained) == 2 and "--epochs=1" in trained[1]
    (shipped / "README.md").write_text(readme.format("0" * 16))  # the shipped bytes are not the README's
    args = compare.parse_args([*flags, "--teachers=sgd", f"--save_dir={tmp_path / 'changed'}"])
    with pytest.raises(compare.UserError, match="not the shipped teacher"):
        sweep_jobs.ensure_teachers(args)
    assert not os.path.exists(sweep_jobs.teacher_path(args, "sgd", "mnist")) and len(trained) == 2


def test_a_teacher_that_fails_to_train_is_one_line(sweep, tmp_path, monkeypatch):
    """A teacher's training that fails stops the sweep with its last line of
    stderr, as compare.py's one-line error, not a traceback or a bare exit."""
    flags = [f for f in sweep["flags"] if not f.startswith("--save_dir")]
    args = compare.parse_args([*flags, "--teachers=sgd", "--fresh_teachers", f"--save_dir={tmp_path}"])
    monkeypatch.setattr(sweep_jobs.subprocess, "run", lambda cmd, **k: sweep_jobs.subprocess.CompletedProcess(
        cmd, 2, stderr="Traceback\nerror: no data"))
    with pytest.raises(compare.UserError, match="^training the mnist teacher 'sgd' failed: error: no data$"):
        sweep_jobs.ensure_teachers(args)


def test_the_shipped_teachers_are_the_files_their_readme_names():
    """Every file in benchmarks/teachers/ has its row, and its bytes are that row's sha256."""
    named = sweep_jobs.shipped_sha256()
    assert set(named) == set(os.listdir(sweep_jobs.SHIPPED)) - {"README.md"} and len(named) == 7
    for file, sha in named.items():
        assert sweep_jobs.file_sha256(os.path.join(sweep_jobs.SHIPPED, file)).startswith(sha), file


def test_keep_needs_an_existing_report(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args([f"--keep={tmp_path / 'nothing.json'}"])
    assert "--keep: no file" in capsys.readouterr().err
