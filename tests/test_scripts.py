"""End to end: pretrain.py and ideal.py on a tiny MNIST written as real idx files."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ideal
import pretrain
from datasets.idx import write_idx
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


def run_ideal(ws, *flags):
    args = ideal.parse_args([
        "--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--g_steps=2", "--batch_size=10",
        f"--data_dir={ws['data_dir']}", f"--save_dir={ws['save_dir']}", *flags])
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


def test_pretrain_resume_continues_epochs(workspace, tmp_path):
    flags = ["--dataset=mnist", "--net=mlp", "--batch_size=64", f"--data_dir={workspace['data_dir']}",
             f"--save_dir={tmp_path}", f"--teacher_ckpt={tmp_path}/t.pt"]
    pretrain.main(pretrain.parse_args([*flags, "--epochs=1"]))
    pretrain.main(pretrain.parse_args([*flags, "--epochs=2", "--resume"]))
    state = load_checkpoint(os.path.join(tmp_path, "pretrain", "mnist_mlp", "last.pt"), "cpu")
    assert state["epoch"] == 2


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


def test_ideal_relabel_every_epoch_counts_reference_queries(workspace):
    e, b = 3, 10
    summary, run_dir = run_ideal(workspace, f"--epochs={e}", "--relabel_every_epoch", "--exp_name=relabel")
    assert summary["queries"] == b * e * (e + 1) // 2
    assert summary["samples"] == e * b
    pool = load_checkpoint(os.path.join(run_dir, "last.pt"), "cpu")["pool"]
    assert pool["answers"] is None and not pool["labelled"]  # no placeholder labels to train on


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
        callers.append((inspect.stack()[1].function, images.shape[0]))
        return real_call(self, images)

    monkeypatch.setattr(BlackBoxTeacher, "__call__", recording_call)
    summary, _ = run_ideal(workspace, "--epochs=3", "--exp_name=callers")
    assert callers == [("label_once", 10)] * 3
    assert summary["queries"] == 30


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


def load_script(path):
    """Import a script that lives outside any package (scripts/, benchmarks/)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_query_sweep_epochs_spend_the_budget():
    queries = load_script("benchmarks/queries.py")
    assert queries.epochs_for(5000, 250, relabel=False) == 20
    assert queries.epochs_for(5001, 250, relabel=False) == 21
    for budget in (5000, 10000, 25000, 250, 251):
        e = queries.epochs_for(budget, 250, relabel=True)
        assert 250 * e * (e + 1) // 2 >= budget > 250 * (e - 1) * e // 2


def test_make_figs_from_run_folders(workspace, tmp_path, monkeypatch):
    _, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=figs")
    figs = load_script("scripts/make_figs.py")
    monkeypatch.setattr(sys, "argv", ["make_figs.py", "--runs", run_dir, "--out_dir", str(tmp_path)])
    figs.main()
    for name in ("acc.png", "acc_mnist.png", "synthetic_mnist.png", "pipeline.png"):
        with open(tmp_path / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
