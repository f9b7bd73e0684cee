"""End to end: pretrain.py and ideal.py on a tiny MNIST written as real idx files."""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import ideal
import pretrain
from datasets.idx import write_idx
from harness import jobs
from harness.registry import METHODS
from utils.run import UserError, load_checkpoint
from utils.teacher import load_blackbox_teacher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_mnist(data_dir, n_train=200, n_test=50):
    """A learnable 10-class task in MNIST's on-disk format: class k is a bright
    4x4 square at a class-specific place, plus noise."""
    rng = np.random.default_rng(0)
    raw = os.path.join(data_dir, "MNIST", "raw")
    os.makedirs(raw)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            r, c = 2 + 6 * (k // 4), 2 + 6 * (k % 4)
            images[i, r:r + 4, c:c + 4] = 255
        write_idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), images)
        write_idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), labels.astype(np.uint8))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data dir with tiny MNIST and a teacher trained on it by pretrain.py."""
    root = tmp_path_factory.mktemp("ws")
    data_dir, save_dir = str(root / "data"), str(root / "runs")
    tiny_mnist(data_dir)
    summary = pretrain.main(pretrain.parse_args([
        "--dataset=mnist", "--net=lenet", "--epochs=2", "--batch_size=32", "--lr=0.05",
        f"--data_dir={data_dir}", f"--save_dir={save_dir}"]))
    return {"data_dir": data_dir, "save_dir": save_dir, "pretrain": summary}


def ideal_argv(ws, *flags):
    """ideal.py's command line for a tiny run in the workspace."""
    return ["--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--g_steps=2", "--batch_size=10",
            f"--data_dir={ws['data_dir']}", f"--save_dir={ws['save_dir']}", *flags]


def run_ideal(ws, *flags):
    args = ideal.parse_args(ideal_argv(ws, *flags))
    return ideal.main(args), os.path.join(ws["save_dir"], "ideal", args.exp_name)


def test_pretrain_writes_run_and_reloadable_teacher(workspace):
    summary = workspace["pretrain"]
    assert {"dataset", "net", "epochs", "test_acc", "wall_s"} <= summary.keys()
    assert summary["test_acc"] > 50  # the squares are easy; chance is 10%
    run_dir = os.path.join(workspace["save_dir"], "pretrain", "mnist_lenet")
    assert json.load(open(os.path.join(run_dir, "summary.json")))["test_acc"] == summary["test_acc"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run_dir))
    assert json.load(open(os.path.join(run_dir, "args.json")))["epochs"] == 2
    teacher, acc = load_blackbox_teacher(summary["teacher_ckpt"], "mnist", "lenet", "hard", 0, "cpu")
    assert acc == summary["test_acc"]
    assert teacher(torch.rand(3, 1, 28, 28)).shape == (3,)


class Killed(BaseException):
    """Stands in for SIGKILL: no `except Exception` in the code can swallow it."""


def pretrain_flags(ws, tmp_path, *flags):
    return pretrain.parse_args(["--dataset=mnist", "--net=mlp", "--batch_size=64", "--epochs=2",
                                f"--data_dir={ws['data_dir']}", f"--save_dir={tmp_path}", *flags])


def test_pretrain_resume_equals_an_uninterrupted_run(workspace, tmp_path, monkeypatch):
    """Killed after epoch 1 of 2, then resumed: the teacher is bit for bit the
    uninterrupted one. Without any one restore line (model, optimizer, schedule,
    RNG) the weights differ."""
    straight = pretrain.main(pretrain_flags(workspace, tmp_path, "--exp_name=straight",
                                            f"--teacher_ckpt={tmp_path}/straight.pt"))
    real_save = pretrain.save_checkpoint

    def save_then_die(obj, path):
        real_save(obj, path)
        if obj["epoch"] == 1:
            raise Killed

    killed = ["--exp_name=killed", f"--teacher_ckpt={tmp_path}/resumed.pt"]
    with monkeypatch.context() as m:
        m.setattr(pretrain, "save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            pretrain.main(pretrain_flags(workspace, tmp_path, *killed))
    resumed = pretrain.main(pretrain_flags(workspace, tmp_path, *killed, "--resume"))
    assert resumed["test_acc"] == straight["test_acc"]
    a, b = (load_checkpoint(s["teacher_ckpt"], "cpu")["state_dict"] for s in (straight, resumed))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pretrain_resume_refuses_a_longer_one_cycle(workspace, tmp_path):
    """The one-cycle schedule spans the run, so --epochs defines it."""
    pretrain.main(pretrain_flags(workspace, tmp_path, "--epochs=1", f"--teacher_ckpt={tmp_path}/t.pt"))
    with pytest.raises(UserError, match="this run has --epochs=1, the command line says --epochs=2"):
        pretrain.main(pretrain_flags(workspace, tmp_path, f"--teacher_ckpt={tmp_path}/t.pt", "--resume"))


def test_pretrain_never_replaces_a_better_teacher(workspace, tmp_path):
    good = tmp_path / "teacher.pt"
    shutil.copy(workspace["pretrain"]["teacher_ckpt"], good)
    good_acc = workspace["pretrain"]["test_acc"]
    worse = pretrain.main(pretrain_flags(workspace, tmp_path, "--net=lenet", "--epochs=1", "--lr=1e-6",
                                         f"--teacher_ckpt={good}"))
    assert worse["test_acc"] < good_acc
    assert load_checkpoint(str(good), "cpu")["test_acc"] == good_acc  # untouched
    assert worse["teacher_ckpt"] == os.path.join(tmp_path, "pretrain", "mnist_lenet", "teacher.pt")
    assert load_checkpoint(worse["teacher_ckpt"], "cpu")["test_acc"] == worse["test_acc"]
    forced = pretrain.main(pretrain_flags(workspace, tmp_path, "--net=lenet", "--epochs=1", "--lr=1e-6",
                                          f"--teacher_ckpt={good}", "--overwrite"))
    assert forced["teacher_ckpt"] == str(good)
    assert load_checkpoint(str(good), "cpu")["test_acc"] == forced["test_acc"]


def test_pretrain_will_not_overwrite_what_is_not_a_teacher(workspace, tmp_path):
    path = tmp_path / "notes.pt"
    path.write_bytes(b"my notes")
    with pytest.raises(UserError, match="pass --overwrite to replace it"):
        pretrain.main(pretrain_flags(workspace, tmp_path, f"--teacher_ckpt={path}"))
    assert path.read_bytes() == b"my notes"
    assert not os.path.exists(tmp_path / "pretrain")


@pytest.mark.parametrize("flag, message", [
    ("--epochs=0", "--epochs must be at least 1"), ("--batch_size=0", "--batch_size must be at least 1"),
    ("--lr=-1", "--lr must be positive"), ("--lr=0", "--lr must be positive"),
    ("--lr=nan", "--lr must be positive"), ("--momentum=-0.1", "--momentum must be >= 0"),
    ("--weight_decay=-1", "--weight_decay must be >= 0"), ("--momentum=0", "add --no-nesterov")])
def test_pretrain_refuses_impossible_flags(flag, message):
    with pytest.raises(UserError, match=message):
        pretrain.parse_args([flag])


def one_cycle_by_hand(step, total, lr):
    """The one-cycle schedule as a formula: linear from lr/25 to lr over the
    first 15% of steps, then half a cosine down to 0."""
    warm = max(1, int(0.15 * total))
    if step < warm:
        return lr * (1 / 25 + (1 - 1 / 25) * step / warm)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


@pytest.mark.parametrize("nesterov", [True, False])
def test_pretrain_schedule_is_the_one_cycle(nesterov):
    args = pretrain.parse_args(["--epochs=4", "--lr=0.2", *([] if nesterov else ["--no-nesterov"])])
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr,
                                momentum=args.momentum, nesterov=args.nesterov)
    scheduler = pretrain.build_scheduler(args, optimizer, steps_per_epoch=25)
    for step in range(100):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(one_cycle_by_hand(step, 100, 0.2), abs=1e-12)
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert optimizer.param_groups[0]["nesterov"] == nesterov
    fresh = torch.optim.SGD(model.parameters(), lr=0.2)
    constant = pretrain.build_scheduler(pretrain.parse_args(["--schedule=none"]), fresh, 25)
    for _ in range(3):
        fresh.step()
        constant.step()
    assert fresh.param_groups[0]["lr"] == 0.2


def test_pretrain_failed_start_leaves_no_run_folder(workspace, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(pretrain, "train", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        pretrain.main(pretrain_flags(workspace, tmp_path, f"--teacher_ckpt={tmp_path}/t.pt"))
    assert os.listdir(tmp_path / "pretrain") == []
    assert not os.path.exists(tmp_path / "t.pt")


def test_ideal_one_query_per_sample(workspace):
    summary, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=plain")
    assert summary["queries"] == summary["samples"] == 2 * 10
    for key in ("dataset", "net", "student_net", "epochs", "batch_size", "g_steps", "teacher_acc",
                "best_acc", "final_acc", "bb_mode", "wall_s", "phase_s"):
        assert key in summary
    assert set(summary["phase_s"]) == {"generate", "label", "distill", "test"}
    files = os.listdir(run_dir)
    assert {"summary.json", "args.json", "last.pt", "best.pt"} <= set(files)
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert json.load(open(os.path.join(run_dir, "summary.json"))) == summary
    saved = json.load(open(os.path.join(run_dir, "args.json")))
    assert saved["epochs"] == 2 and saved["threads"] == summary["threads"] == torch.get_num_threads()


def test_ideal_wall_time_leaves_out_loading_the_teacher(workspace, monkeypatch):
    """wall_s is the training loop's time, for a new run as for a resumed one:
    a teacher that takes 1000 s to load does not show in it."""
    import utils.experiment
    clock, real_open = [0.0], ideal.open_teacher

    def slow_open(*args):
        clock[0] += 1000.0
        return real_open(*args)

    monkeypatch.setattr(utils.experiment.time, "time", lambda: 1e9 + clock[0])
    monkeypatch.setattr(ideal, "open_teacher", slow_open)
    summary, _ = run_ideal(workspace, "--epochs=1", "--exp_name=slow_teacher")
    assert summary["wall_s"] == 0.0


def test_ideal_relabel_every_epoch_counts_reference_queries(workspace):
    e, b = 3, 10
    summary, run_dir = run_ideal(workspace, f"--epochs={e}", "--relabel_every_epoch", "--exp_name=relabel")
    assert summary["queries"] == b * e * (e + 1) // 2
    assert summary["samples"] == e * b
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    assert pool["answers"] is None and not pool["labelled"]  # no placeholder labels to train on


def test_relabel_distill_epochs_count_like_the_reference(workspace):
    """Each distill-only epoch re-asks the whole pool too, so the reference
    count is 10 + 20 + 30 for generation plus 2 x 30."""
    summary, _ = run_ideal(workspace, "--epochs=3", "--distill_epochs=2", "--relabel_every_epoch",
                           "--exp_name=relabel_distill")
    assert summary["queries"] == summary["reference_code_queries"] == 60 + 2 * 30


def test_reference_code_queries_respect_the_pool_cap():
    assert ideal.reference_code_queries(100, 0, 250, 400) == 250 * 100 * 101 // 2  # the README's 1,262,500
    assert ideal.reference_code_queries(5, 1, 10, 3) == 10 * (1 + 2 + 3 + 3 + 3) + 1 * 10 * 3


def test_relabel_budget_message_names_the_last_epoch(workspace, capsys):
    summary, _ = run_ideal(workspace, "--epochs=4", "--query_budget=25", "--relabel_every_epoch",
                           "--exp_name=relabel_budget_msg")
    assert summary["epochs_run"] == 2  # 10 asked in epoch 1; 15 of 20 in epoch 2; then no answers left
    assert f"query budget of 25 spent at epoch {summary['epochs_run']}:" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["noise", "random_generator"])
def test_baselines_make_one_query_per_sample(workspace, method):
    summary, run_dir = run_ideal(workspace, "--epochs=3", f"--method={method}", "--query_budget=25",
                                 f"--exp_name={method}")
    assert summary["method"] == method
    assert summary["queries"] == summary["samples"] == 25  # 10 + 10 + the 5 the budget allows
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    assert pool["images"].shape[0] == pool["answers"].shape[0] == 25


def test_only_the_labelling_step_reaches_the_teacher(workspace, monkeypatch):
    """Structural: every call into the black box is recorded with its caller.
    Generation (any method) and distillation must never appear there."""
    import inspect

    from utils.blackbox import BlackBoxTeacher
    callers, real_call = [], BlackBoxTeacher.__call__

    def recording_call(self, images):
        caller = next(f.function for f in inspect.stack()[1:] if f.function != "__call__")  # past wrappers
        callers.append((caller, images.shape[0]))
        return real_call(self, images)

    monkeypatch.setattr(BlackBoxTeacher, "__call__", recording_call)
    summary, _ = run_ideal(workspace, "--epochs=3", "--exp_name=callers")
    assert callers == [("label_once", 10)] * 3
    assert summary["queries"] == 30


def test_eval_split_val_scores_held_out_training_images(workspace):
    """--eval_split=val: the student is scored on the last half of tiny MNIST's
    200 training images (min(10,000, half)), under val/ tags, never on the test set."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from datasets import load_split
    from models import build_model
    from utils.evaluation import evaluate
    summary, run_dir = run_ideal(workspace, "--epochs=2", "--eval_split=val", "--exp_name=val")
    assert summary["eval_split"] == "val"
    student = build_model("lenet", 1, 28, 10)
    student.load_state_dict(load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["student"])
    images, labels = load_split("mnist", workspace["data_dir"], train=True)
    assert evaluate(student, images[-100:], labels[-100:])[1] == summary["final_acc"]
    events = EventAccumulator(run_dir)
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "val/acc" in tags and not any(t.startswith("test") for t in tags)


def test_candidates_pay_only_for_the_batch(workspace, monkeypatch):
    """--candidates=3: the generator makes 30 images an epoch, the teacher is
    asked about 10 of them, once."""
    from utils.blackbox import BlackBoxTeacher
    asked, real_call = [], BlackBoxTeacher.__call__
    monkeypatch.setattr(BlackBoxTeacher, "__call__", lambda self, x: asked.append(len(x)) or real_call(self, x))
    summary, run_dir = run_ideal(workspace, "--epochs=2", "--candidates=3", "--exp_name=candidates")
    assert asked == [10, 10]
    assert summary["queries"] == summary["samples"] == 20 and summary["candidates"] == 3
    assert load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]["images"].shape[0] == 20


@pytest.mark.parametrize("name", ["cpu", "best"])
def test_every_preset_parses_and_flags_still_win(name):
    """Each configs/*.json names only real flags; one given on the command line wins."""
    args = ideal.parse_args([f"--preset={name}", "--g_steps=3"])
    assert (args.g_steps, args.ngf, args.lr_g) == (3, 16, 0.01)
    assert args.warm_generator == (name == "best")
    with pytest.raises(UserError, match="no preset 'fast'.*known: best, cpu"):
        ideal.parse_args(["--preset=fast"])


def test_best_preset_keeps_the_generator_fresh_on_fmnist():
    """The warm generator was chosen on MNIST's held-out images and lost on FMNIST's."""
    assert ideal.parse_args(["--preset=best", "--dataset=mnist"]).warm_generator
    args = ideal.parse_args(["--preset=best", "--dataset=fmnist"])
    assert not args.warm_generator and (args.g_steps, args.ngf, args.lr_g) == (10, 16, 0.01)
    assert ideal.parse_args(["--preset=best", "--dataset=fmnist", "--warm_generator"]).warm_generator
    # a preset's switch is a default too: the command line can turn it off
    assert not ideal.parse_args(["--preset=best", "--dataset=mnist", "--no-warm_generator"]).warm_generator


@pytest.mark.parametrize("preset, error", [
    ({"ngf": 8, "per_dataset": {"cifar": {"ngf": 8}}}, "unknown datasets: cifar"),
    ({"ngf": 8, "per_dataset": {"mnist": {"ngff": 8}}}, "unknown flags: ngff"),  # another dataset's typo too
    ({"ngf": 8, "per_dataset": {"fmnist": {"dataset": "mnist"}}}, "unknown flags: dataset"),
    ({"ngf": 8, "per_dataset": {"fmnist": None}}, "one object per dataset"),
    ({"ngf": 8, "per_dataset": ["fmnist"]}, "one object per dataset"),
    (["ngf"], "must be a JSON object")])
def test_a_bad_preset_is_refused_in_one_line(tmp_path, monkeypatch, preset, error):
    (tmp_path / "mine.json").write_text(json.dumps(preset))
    monkeypatch.setattr(ideal, "CONFIG_DIR", str(tmp_path))
    with pytest.raises(UserError, match=error):
        ideal.parse_args(["--preset=mine", "--dataset=fmnist"])


@pytest.mark.parametrize("relabel", [False, True])
def test_ideal_never_exceeds_budget(workspace, relabel):
    flags = ["--epochs=4", "--query_budget=25", "--distill_epochs=1", f"--exp_name=budget{relabel}"]
    summary, _ = run_ideal(workspace, *flags, *(["--relabel_every_epoch"] if relabel else []))
    assert summary["queries"] == 25
    if not relabel:
        assert summary["samples"] == 25
        assert summary["epochs_run"] == 5  # kept distilling after the budget was spent


def test_ideal_soft_labels_and_smaller_student(workspace):
    summary, run_dir = run_ideal(workspace, "--epochs=1", "--bb_mode=soft", "--student_net=mlp",
                                 "--batch_size=25", "--exp_name=soft")
    assert summary["queries"] == 25
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    assert pool["answers"].shape == (25, 10)
    assert torch.allclose(pool["answers"].sum(1), torch.ones(25))


def test_same_seed_same_threads_same_run(workspace):
    """Seeded runs repeat exactly on the same thread count (another count
    changes the order of float sums, and so the results)."""
    runs = [run_ideal(workspace, "--epochs=2", f"--exp_name=seeded_{i}") for i in range(2)]
    timing = {"wall_s", "phase_s"}
    (a, dir_a), (b, dir_b) = runs
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    last_a, last_b = (load_checkpoint(os.path.join(d, "last.pt"), "cpu") for d in (dir_a, dir_b))
    assert torch.equal(last_a["pool"]["images"], last_b["pool"]["images"])
    for key in last_a["student"]:
        assert torch.equal(last_a["student"][key], last_b["student"][key]), key


def test_ideal_resume_matches_uninterrupted_run(workspace):
    straight, _ = run_ideal(workspace, "--epochs=3", "--exp_name=straight")
    run_ideal(workspace, "--epochs=2", "--exp_name=interrupted")
    resumed, run_dir = run_ideal(workspace, "--epochs=3", "--exp_name=interrupted", "--resume")
    assert resumed["queries"] == straight["queries"] == 30
    assert resumed["epochs_run"] == 3
    assert resumed["final_acc"] == straight["final_acc"]
    a = load_checkpoint(os.path.join(workspace["save_dir"], "ideal", "straight", "last.pt"), "cpu")
    b = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")
    assert torch.equal(a["pool"]["images"], b["pool"]["images"])
    for key in a["student"]:
        assert torch.equal(a["student"][key], b["student"][key]), key


def test_ideal_resume_refuses_malicious_last_pt(workspace, tmp_path):
    """A tampered last.pt (one extra entry that runs a command when unpickled)
    is refused by --resume, and the command never runs."""
    from test_security import write_malicious
    _, run_dir = run_ideal(workspace, "--epochs=1", "--exp_name=tampered")
    last = os.path.join(run_dir, "last.pt")
    marker = tmp_path / "pwned"
    write_malicious(last, marker, load_checkpoint(last, "cpu"))
    with pytest.raises(UserError, match=f"not a checkpoint that can be loaded safely: {last}"):
        run_ideal(workspace, "--epochs=2", "--exp_name=tampered", "--resume")
    assert not marker.exists()


def test_ideal_missing_teacher_names_pretrain_command(workspace):
    with pytest.raises(UserError, match="python pretrain.py --dataset=mnist --net=mlp"):
        run_ideal(workspace, "--net=mlp", "--exp_name=noteacher")


def test_ideal_mismatched_teacher(workspace):
    ckpt = workspace["pretrain"]["teacher_ckpt"]
    with pytest.raises(UserError, match="is a lenet for mnist, not a mlp"):
        run_ideal(workspace, "--net=mlp", f"--teacher_ckpt={ckpt}", "--exp_name=mismatch")


def cli(script, *flags):
    return subprocess.run([sys.executable, script, *flags], cwd=ROOT, capture_output=True, text=True)


def test_cli_errors_are_one_line(tmp_path):
    missing = cli("ideal.py", f"--save_dir={tmp_path}", f"--data_dir={tmp_path}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no teacher at {tmp_path}/teachers/mnist_lenet.pt; train one first: "
        "python pretrain.py --dataset=mnist --net=lenet"]
    unknown = cli("pretrain.py", "--dataset=imagenet", f"--save_dir={tmp_path}")
    assert unknown.returncode == 2 and "invalid choice: 'imagenet'" in unknown.stderr
    assert "cifar10" in unknown.stderr
    no_data = cli("pretrain.py", "--dataset=svhn", f"--data_dir={tmp_path}", f"--save_dir={tmp_path}")
    assert no_data.returncode == 2 and len(no_data.stderr.strip().splitlines()) == 1
    assert "train_32x32.mat" in no_data.stderr


@pytest.mark.parametrize("flag, message", [
    ("--lr=-0.1", "--lr must be a finite number > 0"), ("--lr_g=-1e-3", "--lr_g must be a finite number > 0"),
    ("--lr=nan", "--lr must be a finite number > 0"), ("--momentum=-0.9", "--momentum must be a finite number >= 0"),
    ("--weight_decay=-5e-4", "--weight_decay must be a finite number >= 0"), ("--ngf=0", "--ngf must be at least 1"),
    ("--ngf=-4", "--ngf must be at least 1"), ("--nz=0", "--nz must be at least 1"),
    ("--g_steps=0", "--g_steps must be at least 1"), ("--query_budget=-1", "--query_budget must be a finite number >= 0"),
    ("--distill_epochs=-1", "--distill_epochs must be a finite number >= 0"), ("--candidates=0", "--candidates must be at least 1"),
    ("--method=noise --candidates=2", "--method=noise has none to shape"),
    ("--method=random_generator --warm_generator", "--method=random_generator has none to shape"),
    ("--prior_share=1", "--prior_share must be in"), ("--prior_share=nan", "--prior_share must be in"),
    ("--prior_share=0.001", "gives 0 of 250 images"), ("--prior_share=0.999", "gives 250 of 250 images"),
    ("--candidates=2 --prior_share=0.8", "generator has fewer than --batch_size images")])
def test_ideal_refuses_impossible_flags(flag, message):
    with pytest.raises(UserError, match=message):
        ideal.parse_args(flag.split())


@pytest.mark.parametrize("flags, message", [
    (["--device=foo"], "--device foo: not a device; use auto, cpu, cuda or cuda:N"),
    (["--lr=1e4"], "the generator loss was not finite at any of 2 steps"),  # the student diverged
])
def test_ideal_failures_are_user_errors(workspace, flags, message):
    with pytest.raises(UserError, match=message):
        run_ideal(workspace, "--epochs=4", "--exp_name=user_error", *flags)


@pytest.mark.parametrize("script", ["ideal.py", "dfme.py"])
def test_torchrun_with_several_processes_is_refused(workspace, monkeypatch, script):
    """Each process would count its own queries: N processes pay N times."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    import dfme
    module = ideal if script == "ideal.py" else dfme
    args = module.parse_args(["--query_budget=2000", f"--data_dir={workspace['data_dir']}",
                              f"--save_dir={workspace['save_dir']}", "--exp_name=torchrun"])
    with pytest.raises(UserError, match=f"{script} runs as one process .torchrun started 2."):
        module.main(args)
    assert not any(os.path.exists(os.path.join(workspace["save_dir"], kind, "torchrun")) for kind in ("ideal", "dfme"))


def test_diverged_student_is_one_line(workspace):
    """Without a generator to notice it first (--method=noise), the distillation loss does."""
    result = cli("ideal.py", *ideal_argv(workspace, "--epochs=4", "--exp_name=diverged", "--lr=1e4",
                                         "--method=noise"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line and not line.startswith("ideal:")]  # no bars
    assert len(lines) == 1 and lines[0].startswith("error: the run diverged at epoch")


def load_script(path):
    """Import a script that lives outside any package (scripts/, benchmarks/)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_query_sweep_epochs_spend_the_budget():
    assert jobs.epochs_for(5000, 250, relabel=False) == 20
    assert jobs.epochs_for(5001, 250, relabel=False) == 21
    for budget in (5000, 10000, 25000, 250, 251):
        e = jobs.epochs_for(budget, 250, relabel=True)
        assert 250 * e * (e + 1) // 2 >= budget > 250 * (e - 1) * e // 2


def test_label_safety_counts_its_queries(workspace, tmp_path):
    """Before and after each augmentation (5), for 50 test and 20 pool images;
    'flip' mirrors every image, so its share is the teacher's own agreement
    with itself on mirrored images."""
    safety = load_script("benchmarks/label_safety.py")
    _, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=safety_pool")
    flags = [f"--data_dir={workspace['data_dir']}", f"--save_dir={workspace['save_dir']}"]
    results, queries = safety.main(safety.parse_args([*flags, f"--pool={run_dir}/last.pt",
                                                      f"--json={tmp_path}/shares.json"]))
    assert len(safety.AUGMENTS) == 5  # crop, flip, crop+flip, and the two with colour jitter
    assert queries == 2 * len(safety.AUGMENTS) * (50 + 20)
    from datasets import load_split
    teacher, _ = load_blackbox_teacher(os.path.join(workspace["save_dir"], "teachers", "mnist_lenet.pt"),
                                       "mnist", "lenet", "hard", 0, "cpu")
    x = load_split("mnist", workspace["data_dir"], train=False)[0].float() / 255
    mirrored = (teacher(x) == teacher(x.flip(3))).float().mean().item()
    assert results["real test images"]["flip"] == pytest.approx(mirrored)
    assert all(0 <= v <= 1 for shares in results.values() for v in shares.values())
    assert json.load(open(tmp_path / "shares.json"))["queries"] == queries
    with pytest.raises(UserError, match="holds no synthetic images"):
        safety.main(safety.parse_args([*flags, f"--pool={run_dir}/best.pt"]))


def test_make_figs_from_run_folders(workspace, tmp_path, monkeypatch):
    summary, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=figs")
    figs = load_script("scripts/make_figs.py")
    _, curves = figs.load_run(run_dir)
    assert curves["test/acc"] == ([1, 2], [pytest.approx(summary["final_acc"])] * 2)  # the run's own curve
    assert curves["test_by_queries/acc"][0] == [10, 20]
    monkeypatch.setattr(sys, "argv", ["make_figs.py", "--runs", run_dir, "--out_dir", str(tmp_path)])
    figs.main()
    import matplotlib.image
    for name, (width, height) in {"acc.png": (1320, 504), "acc_mnist.png": (1320, 504)}.items():
        pixels = matplotlib.image.imread(tmp_path / name)
        assert pixels.shape[:2] == (height, width)  # figsize x dpi
    for name in ("synthetic_mnist.png", "pipeline.png"):
        pixels = matplotlib.image.imread(tmp_path / name)
        assert pixels.shape[0] > 100 and pixels.std() > 0.05  # a decodable picture, not a blank page


def test_make_figs_draws_a_held_out_run_from_its_val_curve(workspace):
    """A run scored with --eval_split=val logs val/ tags only; its figure reads them."""
    summary, run_dir = run_ideal(workspace, "--epochs=2", "--eval_split=val", "--exp_name=figs_val")
    _, curves = load_script("scripts/make_figs.py").load_run(run_dir)
    assert curves["test/acc"] == ([1, 2], [pytest.approx(summary["final_acc"])] * 2)


def test_make_figs_keeps_the_newer_of_a_repeated_epoch(tmp_path):
    """A resume logs the epoch a kill interrupted again, in a second event file."""
    from torch.utils.tensorboard import SummaryWriter
    for values in ({1: 10.0, 2: 20.0}, {2: 25.0, 3: 30.0}):  # the killed run, then the resumed one
        writer = SummaryWriter(str(tmp_path))
        for step, value in values.items():
            writer.add_scalar("test/acc", value, step)
        writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    figs = load_script("scripts/make_figs.py")
    assert figs.curve(events.Scalars("test/acc")) == ([1, 2, 3], [10.0, 25.0, 30.0])


def test_label_histogram_reads_any_net_and_counts_its_queries(workspace, tmp_path, capsys):
    """Three sources x 20 images per teacher, each asked once through the black
    box; a LeNet-5 teacher is read as the net its file names."""
    lenet5 = str(tmp_path / "mnist_lenet5.pt")
    pretrain.main(pretrain.parse_args(["--dataset=mnist", "--net=lenet5", "--epochs=1", "--batch_size=32",
                                       f"--data_dir={workspace['data_dir']}", f"--save_dir={tmp_path}",
                                       f"--teacher_ckpt={lenet5}"]))
    histogram = load_script("benchmarks/label_histogram.py")
    lenet = os.path.join(workspace["save_dir"], "teachers", "mnist_lenet.pt")
    histogram.main(histogram.parse_args(["--images=20", f"--out={tmp_path}", "--teachers", lenet, lenet5]))
    printed = capsys.readouterr().out
    assert f"{lenet}: 60 queries" in printed and f"{lenet5}: 60 queries" in printed
    rows = [line for line in open(tmp_path / "label_histogram_mnist.md") if line.startswith("| mnist_")]
    assert len(rows) == 6
    for row in rows:  # ten shares that sum to 100
        assert sum(float(v) for v in row.split("|")[4:14]) == pytest.approx(100, abs=0.5)
    with pytest.raises(UserError, match="is a lenet5 for mnist, not a lenet"):
        load_blackbox_teacher(lenet5, "mnist", "lenet", "hard", 0, "cpu")
    with pytest.raises(UserError, match="is a lenet5 for mnist, not a net for fmnist"):
        load_blackbox_teacher(lenet5, "fmnist", None, "hard", 0, "cpu")


def quickstart_ideal_flags():
    """The flags of the ideal.py command in scripts/quickstart.sh, as a shell would split them."""
    import shlex
    script = open(os.path.join(ROOT, "scripts", "quickstart.sh")).read().replace("\\\n", " ")
    [line] = [line for line in script.splitlines() if line.strip().startswith("$PY ideal.py")]
    return shlex.split(line)[2:]


def test_the_quickstart_command_runs_as_written(workspace):
    """The quickstart's own flags (shortened: 2 epochs of 10 images, a tiny
    generator) reach ideal.py and spend one query per stored image."""
    flags = quickstart_ideal_flags()
    measured = METHODS["ideal_best_prior_seed_k3"].flags
    # exactly the method the README's tables measure: the quickstart adds only what compare sets per job
    per_job = {"--dataset", "--net", "--epochs", "--batch_size", "--exp_name"}
    assert {f for f in flags if f.split("=")[0] not in per_job} == set(measured) - {"--method=ideal"}
    summary = ideal.main(ideal.parse_args([*flags, "--epochs=2", "--batch_size=10", "--nz=8", "--ngf=4",
                                           "--g_steps=2", f"--data_dir={workspace['data_dir']}",
                                           f"--save_dir={workspace['save_dir']}", "--exp_name=quickstart"]))
    assert summary["queries"] == summary["samples"] == 20
    assert (summary["candidates"], summary["prior_share"], summary["seed_share"], summary["warm_generator"]) == \
        (3, 0.3333, 0.3333, True)


def test_pool_classes_reads_a_run_without_asking_the_teacher(workspace, tmp_path, capsys):
    """The pool's shares are the cached answers' histogram; the recalls, weighted
    by each class's test images, give back the run's final accuracy."""
    report = load_script("benchmarks/pool_classes.py")
    _, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=pool_classes")
    run, ckpt, shares, recall = report.run_rows(run_dir, workspace["data_dir"])
    answers = ckpt["pool"]["answers"]
    assert shares.tolist() == pytest.approx([100 * (answers == k).sum().item() / len(answers) for k in range(10)])
    from datasets import load_split
    labels = load_split("mnist", workspace["data_dir"], train=False)[1]
    counts = torch.bincount(labels, minlength=10).float()
    assert (recall * counts).sum().item() / counts.sum().item() == pytest.approx(ckpt["final_acc"], abs=1e-4)
    out = report.main(report.parse_args([run_dir, f"--data_dir={workspace['data_dir']}", f"--out={tmp_path}"]))
    assert sum(line.startswith("| pool_classes |") for line in open(out)) == 2
    with pytest.raises(UserError, match="not a run folder"):
        report.run_rows(str(tmp_path), workspace["data_dir"])
    under_way = tmp_path / "under_way"
    shutil.copytree(run_dir, under_way)
    os.remove(under_way / "summary.json")  # last.pt is then an epoch of a run still going, not its end
    with pytest.raises(UserError, match="still under way"):
        report.run_rows(str(under_way), workspace["data_dir"])


def test_refit_trains_a_fresh_student_on_a_runs_pool_alone(workspace, tmp_path):
    """No teacher is opened; the agreement is the share of the pool the student
    names as the teacher did; the same seed gives the same student."""
    refit = load_script("benchmarks/refit.py")
    _, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=refit")
    from utils.resume import read_run
    run, ckpt = read_run(run_dir)
    pool = refit.SyntheticPool(0)
    pool.load_state_dict(ckpt["pool"])
    own = refit.build_model("lenet", 1, 28, 10)
    own.load_state_dict(ckpt["student"])
    by_hand = sum(int(own.eval()(x[None].float() / 255).argmax()) == int(a)
                  for x, a in zip(ckpt["pool"]["images"], ckpt["pool"]["answers"]))
    assert refit.agreement(own, pool) == pytest.approx(100 * by_hand / len(pool))
    argv = [run_dir, "--epochs=2", "--batch_size=8", f"--data_dir={workspace['data_dir']}", f"--out={tmp_path}"]
    args = refit.parse_args(argv)
    first, second = (refit.refit(pool, run, refit.parse_args([*argv, "--aug=crop"])) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    with open(refit.main(args)) as f:
        row = [line for line in f if line.startswith("| refit |")]
    assert len(row) == 1 and row[0].split(" | ")[5] == "lenet, 2 ep, none"
    with pytest.raises(UserError, match="not a run folder"):
        refit.main(refit.parse_args([str(tmp_path), f"--data_dir={workspace['data_dir']}"]))
