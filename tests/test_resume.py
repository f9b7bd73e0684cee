"""Kills and resumes of ideal.py: the teacher's answers are counted exactly
once, never past the budget, and a resume refuses a changed run.

A kill is simulated by raising `Killed` (a BaseException nothing catches) from
a patched function at a chosen point of an epoch; one test uses a real SIGKILL.
The teacher side keeps its own log of every image it answered.
"""
import argparse
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import ideal
import utils.experiment as experiment
from test_scripts import ROOT, run_ideal, workspace  # noqa: F401 (workspace is a fixture)
from utils.blackbox import BlackBoxTeacher
from utils.resume import refuse_changes
from utils.run import UserError, load_checkpoint, save_checkpoint

FLAGS = ("--epochs=3", "--query_budget=25")  # batches of 10: the third epoch gets 5


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` in the code can swallow it."""


def answered_log(monkeypatch):
    """Every image the teacher answers, as bytes, in order (the teacher's own books)."""
    log, real = [], BlackBoxTeacher.__call__

    def logged(self, images):
        answers = real(self, images)
        log.extend(image.numpy().tobytes() for image in images)
        return answers

    monkeypatch.setattr(BlackBoxTeacher, "__call__", logged)
    return log


def kill_on(monkeypatch, owner, name, call, after=False, match=None):
    """Raise Killed at the `call`-th call of owner.name that `match`es, before
    the real function runs or (after=True) once it has returned."""
    real, calls = getattr(owner, name), []

    def wrapper(*args, **kwargs):
        if match is None or match(*args, **kwargs):
            calls.append(1)
        hit = len(calls) == call and (match is None or match(*args, **kwargs))
        if hit and not after:
            raise Killed(name)
        result = real(*args, **kwargs)
        if hit:
            raise Killed(name)
        return result

    monkeypatch.setattr(owner, name, wrapper)


def saving_last(epoch):
    """Matches the save of last.pt at the end of `epoch`."""
    return lambda obj, path: path.endswith("last.pt") and obj["epoch"] == epoch


# where a kill lands: (owner, function, after it returned, which calls count, the how-manieth)
# Every function but save_checkpoint runs once per epoch, so call 2 is in epoch 2. The
# tiny run's accuracy never improves after epoch 1, so best.pt is written in epoch 1 only.
KILL_POINTS = {
    "generating": ("IdealSynthesizer", "synthesize", False, None, 2),
    "answered, not yet saved": ("BlackBoxTeacher", "__call__", True, None, 2),
    "labelled batch saved": ("ideal", "save_labelled", True, None, 2),
    "distilling": ("ideal", "distill", False, None, 2),
    "testing": ("ideal", "evaluate", False, None, 2),
    "between best.pt and last.pt": ("experiment", "save_checkpoint", False, saving_last(1), 1),
    "after last.pt": ("experiment", "save_checkpoint", True, saving_last(2), 1),
}


def kill(monkeypatch, point, call=None):
    from methods import IdealSynthesizer
    owner, name, after, match, default_call = KILL_POINTS[point]
    owner = {"IdealSynthesizer": IdealSynthesizer, "BlackBoxTeacher": BlackBoxTeacher, "ideal": ideal,
             "experiment": experiment}[owner]
    kill_on(monkeypatch, owner, name, call or default_call, after, match)


@pytest.fixture(scope="module")
def straight(workspace):  # noqa: F811
    """The uninterrupted run every killed one must end up equal to."""
    summary, run_dir = run_ideal(workspace, *FLAGS, "--exp_name=straight_kill")
    return summary, load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")


def assert_same_run(run_dir, summary, straight):
    expected, ckpt = straight
    assert summary["queries"] == expected["queries"] == 25
    assert (summary["final_acc"], summary["best_acc"]) == (expected["final_acc"], expected["best_acc"])
    assert load_checkpoint(os.path.join(run_dir, "best.pt"), "cpu")["test_acc"] == summary["best_acc"]
    last = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")
    assert torch.equal(last["pool"]["images"], ckpt["pool"]["images"])
    assert torch.equal(last["pool"]["answers"], ckpt["pool"]["answers"])
    for key in ckpt["student"]:
        assert torch.equal(last["student"][key], ckpt["student"][key]), key


def exp_name(text):
    return "--exp_name=kill_" + "".join(c if c.isalnum() else "_" for c in text)


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_anywhere_pays_each_image_once(workspace, straight, monkeypatch, point):  # noqa: F811
    log = answered_log(monkeypatch)
    with monkeypatch.context() as m:
        kill(m, point)
        with pytest.raises(Killed):
            run_ideal(workspace, *FLAGS, exp_name(point))
    summary, run_dir = run_ideal(workspace, *FLAGS, exp_name(point), "--resume")
    assert summary["queries"] == len(log) <= 25  # counted exactly once, never past the budget
    repeated = len(log) - len(set(log))
    if point == "answered, not yet saved":
        # the one window that costs: answers lost before they were stored are asked
        # again on resume; both askings are counted, and the budget still holds
        assert 0 < repeated <= 10
    else:
        assert repeated == 0
        assert_same_run(run_dir, summary, straight)


def test_many_kills_in_a_row(workspace, straight, monkeypatch):  # noqa: F811
    """A kill at a different point in each of five runs; the sixth finishes."""
    log = answered_log(monkeypatch)
    kills = [("labelled batch saved", 1), ("distilling", 1), ("testing", 2), ("after last.pt", 1),
             ("generating", 1)]
    for i, (point, call) in enumerate(kills):
        with monkeypatch.context() as m:
            kill(m, point, call)
            with pytest.raises(Killed):
                run_ideal(workspace, *FLAGS, exp_name("many"), *(["--resume"] if i else []))
    summary, run_dir = run_ideal(workspace, *FLAGS, exp_name("many"), "--resume")
    assert summary["queries"] == len(log) == len(set(log)) == 25
    assert_same_run(run_dir, summary, straight)
    with open(os.path.join(run_dir, "resumes.json")) as f:
        assert [r["from_epoch"] for r in json.load(f)] == [0, 0, 1, 2, 2]


KILL_WHILE_WRITING = """
import os, signal, sys
import torch
sys.path.insert(0, {root!r})
import ideal
import utils.experiment as experiment
real_save = torch.save

def save(obj, f, *args, **kwargs):  # SIGKILL half-way through writing last.pt of epoch 2
    if "pool" in obj and obj["epoch"] == 2:  # only last.pt holds the pool
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
ideal.main(ideal.parse_args(sys.argv[1:]))
"""


def test_sigkill_while_writing_then_resume(workspace, straight, tmp_path):  # noqa: F811
    """A real SIGKILL in the middle of writing last.pt leaves its temporary file;
    the resume deletes it and ends where the uninterrupted run did."""
    from test_scripts import ideal_argv
    driver = tmp_path / "driver.py"
    driver.write_text(KILL_WHILE_WRITING.format(root=ROOT))
    argv = ideal_argv(workspace, *FLAGS, exp_name("sigkill"))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same numbers as in-process
    killed = subprocess.run([sys.executable, str(driver), *argv], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    run_dir = os.path.join(workspace["save_dir"], "ideal", "kill_sigkill")
    assert any(name.startswith(".tmp-last.pt") for name in os.listdir(run_dir))
    summary, _ = run_ideal(workspace, *FLAGS, exp_name("sigkill"), "--resume")
    assert not any(name.startswith(".tmp-") for name in os.listdir(run_dir))
    assert_same_run(run_dir, summary, straight)


# ---------------------------------------------------------------- what a resume refuses

CHANGED = {"dataset": "fmnist", "net": "mlp", "student_net": "mlp", "method": "noise", "bb_mode": "soft",
           "batch_size": 20, "pool_batches": 5, "seed": 1, "nz": 16, "ngf": 8, "g_steps": 3, "lr": 0.02,
           "lr_g": 0.002, "momentum": 0.5, "weight_decay": 0.001, "lambda_info": 1.0,
           "relabel_every_epoch": True, "distill_aug": "flip",
           "warm_generator": True, "amp": True, "teacher_ckpt": "another_teacher.pt",
           "teacher_url": "http://127.0.0.1:9", "eval_split": "val", "candidates": 3,
           "prior_share": 0.5, "seed_share": 0.5, "label_first": True}


@pytest.fixture(scope="module")
def two_epochs(workspace):  # noqa: F811
    """A finished 2-epoch run to resume (20 queries spent)."""
    run_ideal(workspace, "--epochs=2", exp_name("refuse"))
    return workspace


def test_every_defining_flag_is_tested():
    assert set(CHANGED) == set(ideal.DEFINING)


@pytest.mark.parametrize("flag", CHANGED)
def test_resume_refuses_a_changed_setting(two_epochs, flag):
    value = CHANGED[flag]
    given = f"--{flag}" if value is True else f"--{flag}={value}"
    with pytest.raises(UserError) as err:
        run_ideal(two_epochs, "--epochs=2", exp_name("refuse"), given, "--resume")
    if flag == "amp" and not torch.cuda.is_available():  # refused even earlier, as on any CPU run
        assert str(err.value).startswith("--amp is bf16 autocast for CUDA")
        return
    if flag == "label_first":  # refused even earlier for IDEAL: see the test below for a run that has it
        assert str(err.value).startswith("--label_first is for methods that never look at the student")
        return
    assert str(err.value).startswith(f"--resume: this run has --{flag}=")
    assert f"the command line says --{flag}=" in str(err.value) and "\n" not in str(err.value)
    assert "to continue the run as it was" in str(err.value)


def test_resume_refuses_to_drop_label_first(workspace):  # noqa: F811
    flags = ("--method=noise", "--epochs=2", "--distill_epochs=1", exp_name("label_first"))
    run_ideal(workspace, *flags, "--label_first")
    with pytest.raises(UserError, match="--resume: this run has --label_first=True"):
        run_ideal(workspace, *flags, "--distill_epochs=2", "--resume")


@pytest.mark.parametrize("key,value,advice", [("distill_aug", "flip", "pass --distill_aug=flip"),
                                              ("warm_generator", True, "pass --warm_generator"),
                                              ("warm_generator", False, "leave out --warm_generator"),
                                              ("teacher_url", None, "leave out --teacher_url")])
def test_refusal_says_how_to_continue_as_it_was(key, value, advice):
    args = argparse.Namespace(**{key: "something else"})
    with pytest.raises(UserError, match=f"{advice} to continue the run as it was"):
        refuse_changes({key: value}, args, [key])


@pytest.mark.parametrize("value", [0.3333, True, "crop"])
def test_resume_cannot_add_a_flag_newer_than_the_run(value):
    """A run whose settings do not name a flag ran without it: a resume that
    turns it on would change the method halfway through the run."""
    with pytest.raises(UserError, match="began before --seed_share existed"):
        refuse_changes({}, argparse.Namespace(seed_share=value), ["seed_share"])


@pytest.mark.parametrize("value", [0.0, False, None, 1])
def test_resume_may_leave_a_newer_flag_off(value):
    refuse_changes({}, argparse.Namespace(seed_share=value), ["seed_share"])


@pytest.mark.parametrize("flags, message", [
    (["--epochs=2", "--query_budget=15"], "--query_budget=15 is below the 20 queries"),
    (["--epochs=1"], "--epochs=1 is below this run's 2"),
])
def test_resume_refuses_less_than_was_spent(two_epochs, flags, message):
    with pytest.raises(UserError, match=message):
        run_ideal(two_epochs, *flags, exp_name("refuse"), "--resume")


def test_resume_refuses_before_any_query(two_epochs, monkeypatch):
    """bb_mode used to be noticed only after 50 uncounted queries."""
    log = answered_log(monkeypatch)
    with pytest.raises(UserError, match="--bb_mode"):
        run_ideal(two_epochs, "--epochs=3", exp_name("refuse"), "--bb_mode=soft", "--resume")
    assert log == []


def test_resume_may_extend_and_records_it(workspace):  # noqa: F811
    run_ideal(workspace, "--epochs=2", "--query_budget=15", exp_name("extend"))
    summary, run_dir = run_ideal(workspace, "--epochs=3", "--query_budget=30", "--distill_epochs=1",
                                 exp_name("extend"), "--resume")
    assert (summary["queries"], summary["samples"], summary["epochs_run"]) == (25, 25, 4)  # 10 + 5, then 10
    with open(os.path.join(run_dir, "resumes.json")) as f:
        (record,) = json.load(f)
    assert record["from_epoch"] == 2 and record["queries"] == 15
    assert record["changed"] == {"epochs": [2, 3], "query_budget": [15, 30], "distill_epochs": [0, 1]}
    with open(os.path.join(run_dir, "args.json")) as f:
        settings = json.load(f)
    assert (settings["epochs"], settings["query_budget"], settings["batch_size"]) == (3, 30, 10)
    assert load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["config"]["epochs"] == 3


def test_best_acc_agrees_with_best_pt_after_a_kill(workspace):  # noqa: F811
    """best.pt is written before last.pt, so a kill between them leaves it an
    epoch ahead. Should the replayed epoch score lower (another thread count),
    the resumed run still reports the accuracy best.pt holds."""
    from utils.run import save_checkpoint
    _, run_dir = run_ideal(workspace, "--epochs=1", exp_name("best"))
    path = os.path.join(run_dir, "best.pt")
    save_checkpoint({**load_checkpoint(path, "cpu"), "epoch": 2, "test_acc": 55.0}, path)  # the killed epoch 2
    summary, _ = run_ideal(workspace, "--epochs=2", exp_name("best"), "--resume")
    assert summary["best_acc"] == load_checkpoint(path, "cpu")["test_acc"] == 55.0


@pytest.mark.parametrize("point", ["generating", "labelled batch saved", "distilling", "testing"])
def test_warm_generator_survives_a_kill(workspace, monkeypatch, point):  # noqa: F811
    """A warm generator's weights and Adam state travel in last.pt and in the
    labelled batch: a killed and resumed run equals an uninterrupted one."""
    flags = ("--epochs=3", "--warm_generator")
    straight, straight_dir = run_ideal(workspace, *flags, "--exp_name=warm_straight")
    name = exp_name("warm_" + point)
    with monkeypatch.context() as patch:
        kill(patch, point)
        with pytest.raises(Killed):
            run_ideal(workspace, *flags, name)
    resumed, run_dir = run_ideal(workspace, *flags, name, "--resume")
    assert resumed["final_acc"] == straight["final_acc"] and resumed["queries"] == straight["queries"] == 30
    a = load_checkpoint(os.path.join(straight_dir, "last.pt"), "cpu")
    b = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")
    assert torch.equal(a["pool"]["images"], b["pool"]["images"])
    for key in a["synthesizer"]["generator"]:
        assert torch.equal(a["synthesizer"]["generator"][key], b["synthesizer"]["generator"][key]), key
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key


def test_resume_refuses_a_replaced_teacher_file(workspace, tmp_path):  # noqa: F811
    """Same path, other teacher (pretrain.py replaces a teacher with a better
    one by design): the pool must not mix two teachers' answers."""
    teacher = str(tmp_path / "teacher.pt")
    ckpt = load_checkpoint(workspace["pretrain"]["teacher_ckpt"], "cpu")
    torch.save(ckpt, teacher)
    run_ideal(workspace, "--epochs=1", f"--teacher_ckpt={teacher}", "--exp_name=replaced")
    torch.save({**ckpt, "test_acc": ckpt["test_acc"] + 1}, teacher)
    with pytest.raises(UserError, match="is not the one this run began with"):
        run_ideal(workspace, "--epochs=2", f"--teacher_ckpt={teacher}", "--exp_name=replaced", "--resume")


def test_a_run_made_with_a_removed_setting_is_refused(workspace, monkeypatch):  # noqa: F811
    """A run whose saved settings hold a flag this version no longer has, set to
    anything but off, cannot be resumed here: the setting would be dropped silently."""
    _, run_dir = run_ideal(workspace, "--epochs=1", "--exp_name=removed_lever")
    path = os.path.join(run_dir, "last.pt")
    ckpt = load_checkpoint(path, "cpu")
    for value, refused in ((0.0, False), (1, False), ("constant", False), (0.5, True), (1.0, True), ("cosine", True)):
        save_checkpoint({**ckpt, "config": {**ckpt["config"], "old_lever": value}}, path)
        if refused:
            with pytest.raises(UserError, match="--old_lever=.*no longer has"):
                run_ideal(workspace, "--epochs=1", "--exp_name=removed_lever", "--resume")
        else:
            run_ideal(workspace, "--epochs=1", "--exp_name=removed_lever", "--resume")


def test_a_run_older_than_a_flag_resumes_as_it_ran(workspace):  # noqa: F811
    """--method and --eval_split came after the first runs, with the old behaviour
    as their defaults: such a run resumes with them left out, and is refused when
    a resume would turn them to something the run never did."""
    _, run_dir = run_ideal(workspace, "--epochs=1", "--exp_name=older_than_flags")
    path = os.path.join(run_dir, "last.pt")
    ckpt = load_checkpoint(path, "cpu")
    old = {k: v for k, v in ckpt["config"].items() if k not in ideal.BEFORE}
    save_checkpoint({**ckpt, "config": old}, path)
    for flag in ("--method=noise", "--eval_split=val"):
        with pytest.raises(UserError, match=f"began before {flag.split('=')[0]} existed"):
            run_ideal(workspace, "--epochs=1", "--exp_name=older_than_flags", flag, "--resume")
    summary, _ = run_ideal(workspace, "--epochs=2", "--exp_name=older_than_flags", "--resume")
    assert summary["epochs"] == 2
