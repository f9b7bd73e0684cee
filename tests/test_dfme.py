"""DFME: the query arithmetic, one iteration through a counting black box, the
losses by hand, and dfme.py end to end on a tiny MNIST written as real idx files."""
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dfme
import pretrain
from methods.dfme import (DFME, approximate_logits, iterations_for_budget, l1_disagreement,
                          queries_per_iteration, zeroth_order_gradient)
from models import Generator
from test_scripts import ROOT, tiny_mnist
from utils.blackbox import BlackBoxTeacher, QueryBudgetExceeded
from utils.run import UserError, load_checkpoint
from utils.teacher import file_sha256


def test_queries_per_iteration_by_hand():
    assert queries_per_iteration(256, g_iter=1, d_iter=5, grad_m=1) == 256 * 2 + 256 * 5 == 1792
    assert queries_per_iteration(128, g_iter=1, d_iter=5, grad_m=10) == 128 * 11 + 128 * 5 == 2048  # MAZE
    assert queries_per_iteration(10, g_iter=2, d_iter=3, grad_m=4) == 10 * 5 * 2 + 10 * 3 == 130


def test_iterations_for_budget_are_whole():
    assert iterations_for_budget(20_000_000, 256, 1, 5, 1) == 11160  # 11160 * 1792 = 19,998,720
    assert iterations_for_budget(1792, 256, 1, 5, 1) == 1
    assert iterations_for_budget(1791, 256, 1, 5, 1) == 0
    assert iterations_for_budget(2 * 1792 - 1, 256, 1, 5, 1) == 1


def test_logit_correction_and_l1_by_hand():
    """p = (1/2, 1/4, 1/4): log p - mean = (2/3 ln 2, -1/3 ln 2, -1/3 ln 2);
    against student logits (1, 0, 0) the L1 is (1 - 2/3 ln 2 + 2/3 ln 2) / 3 = 1/3."""
    probs = torch.tensor([[0.5, 0.25, 0.25]])
    ln2 = math.log(2)
    assert torch.allclose(approximate_logits(probs), torch.tensor([[2 * ln2 / 3, -ln2 / 3, -ln2 / 3]]))
    assert torch.allclose(l1_disagreement(torch.tensor([[1.0, 0.0, 0.0]]), probs), torch.tensor([1 / 3]))
    assert torch.isfinite(approximate_logits(torch.tensor([[1.0, 0.0]]))).all()  # an underflowed answer


def test_zeroth_order_gradient_is_exact_for_a_linear_loss():
    """loss(x) = 3 x1 - 2 x2 along the two axes: slopes (3, -2); d/m sum slope_j u_j = (3, -2)."""
    eps = 1e-3
    directions = torch.eye(2).view(1, 2, 2)
    losses = torch.tensor([[3 * eps, -2 * eps, 0.0]])  # loss(x + eps u_1), loss(x + eps u_2), loss(x) = 0
    assert torch.allclose(zeroth_order_gradient(losses, directions, eps), torch.tensor([[3.0, -2.0]]))


def tiny_dfme(budget=0, **kwargs):
    """DFME over 1x8x8 images: a linear teacher in a soft black box, a linear
    student, the project's generator at width 4."""
    torch.manual_seed(0)
    teacher = BlackBoxTeacher(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), mode="soft", budget=budget)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    generator = Generator(nz=8, ngf=4, channels=1, size=8)
    settings = {"batch_size": 6, "nz": 8, "g_iter": 2, "d_iter": 3, "grad_m": 2, **kwargs}
    return DFME(student, generator, teacher, iterations=10, **settings), teacher


def parameters(model):
    return [p.detach().clone() for p in model.parameters()]


def test_one_step_pays_exactly_one_iteration_and_trains_both():
    method, teacher = tiny_dfme()
    student_before, generator_before = parameters(method.student), parameters(method.generator)
    losses = method.step()
    assert teacher.queries == method.queries_per_iteration == 6 * 3 * 2 + 6 * 3
    assert losses["generator"] <= 0 <= losses["student"]
    for before, model in ((student_before, method.student), (generator_before, method.generator)):
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_whole_iterations_never_pass_the_budget():
    per_iteration = queries_per_iteration(6, 2, 3, 2)
    budget = 3 * per_iteration + per_iteration // 2  # not a multiple
    method, teacher = tiny_dfme(budget)
    for _ in range(iterations_for_budget(budget, 6, 2, 3, 2)):
        method.step()
    assert teacher.queries == 3 * per_iteration <= budget
    with pytest.raises(QueryBudgetExceeded):  # a fourth iteration is refused by the door itself
        method.step()


def test_estimate_matches_the_white_box_gradient():
    """With many directions, the probes' estimate points where autograd's gradient
    of the batch-mean -L1 (through the sigmoid, the teacher opened up) points,
    at the same scale: right sign, right factor."""
    method, _ = tiny_dfme(grad_m=4000)
    network = method.teacher._model  # only this check opens the box, to compare with the truth
    pre = method.pre_activation(torch.randn(6, 8)).detach()
    losses, directions = method.probe_losses(pre)
    estimate = zeroth_order_gradient(losses, directions, method.grad_epsilon) / len(pre)
    pre.requires_grad_(True)
    x = torch.sigmoid(pre)
    (-l1_disagreement(method.student(x), network(x).softmax(1)).mean()).backward()
    assert torch.cosine_similarity(estimate.flatten(), pre.grad.flatten(), dim=0) > 0.95
    assert 0.8 < estimate.norm() / pre.grad.norm() < 1.25


def test_hard_label_teacher_is_refused():
    teacher = BlackBoxTeacher(nn.Linear(1, 1), mode="hard")
    with pytest.raises(UserError, match="soft black box"):
        DFME(nn.Linear(1, 1), Generator(8, 4, 1, 8), teacher, iterations=1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A data dir with tiny MNIST and a teacher trained on it by pretrain.py."""
    root = tmp_path_factory.mktemp("ws")
    data_dir, save_dir = str(root / "data"), str(root / "runs")
    tiny_mnist(data_dir)
    pretrain.main(pretrain.parse_args([
        "--dataset=mnist", "--net=lenet", "--epochs=2", "--batch_size=32", "--lr=0.05",
        f"--data_dir={data_dir}", f"--save_dir={save_dir}"]))
    return {"data_dir": data_dir, "save_dir": save_dir}


# B=10, grad_m=2, g_iter=1, d_iter=2: 10 * 3 + 10 * 2 = 50 queries per iteration
TINY = ["--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--batch_size=10", "--grad_m=2", "--d_iter=2"]


def run_dfme(ws, *flags):
    args = dfme.parse_args([*TINY, f"--data_dir={ws['data_dir']}", f"--save_dir={ws['save_dir']}", *flags])
    return dfme.main(args), os.path.join(ws["save_dir"], "dfme", args.exp_name)


def test_dfme_run_spends_whole_iterations(workspace):
    summary, run_dir = run_dfme(workspace, "--query_budget=175", "--eval_every=2", "--exp_name=plain")
    assert summary["method"] == "dfme" and summary["bb_mode"] == "soft"
    assert summary["iterations"] == 3 and summary["queries_per_iteration"] == 50
    assert summary["queries"] == 150 <= summary["query_budget"] == 175
    assert summary["epochs_run"] == 2  # evaluated at iteration 2 and after the last
    assert 0 <= summary["final_acc"] <= summary["best_acc"] <= 100
    assert set(summary["phase_s"]) == {"generate", "distill", "test"}
    files = set(os.listdir(run_dir))
    assert {"summary.json", "args.json", "last.pt"} <= files
    assert json.load(open(os.path.join(run_dir, "summary.json"))) == summary
    saved = json.load(open(os.path.join(run_dir, "args.json")))
    assert saved["bb_mode"] == "soft"
    teacher = os.path.join(workspace["save_dir"], "teachers", "mnist_lenet.pt")
    assert saved["teacher_sha256"] == file_sha256(teacher)  # compare.py names each row's teacher file by it
    events = EventAccumulator(run_dir).Reload()
    assert {"test/acc", "test_by_queries/acc", "queries", "time/generate_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("test_by_queries/acc")] == [100, 150]


def test_dfme_resume_matches_uninterrupted_run(workspace, monkeypatch):
    flags = ["--query_budget=175", "--eval_every=1"]
    straight, straight_dir = run_dfme(workspace, *flags, "--exp_name=straight")
    real_step, calls = dfme.DFME.step, []

    def crash_at_third_iteration(self, clock=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, clock)

    monkeypatch.setattr(dfme.DFME, "step", crash_at_third_iteration)
    with pytest.raises(KeyboardInterrupt):
        run_dfme(workspace, *flags, "--exp_name=interrupted")
    monkeypatch.setattr(dfme.DFME, "step", real_step)
    resumed, resumed_dir = run_dfme(workspace, *flags, "--exp_name=interrupted", "--resume")
    assert resumed["queries"] == straight["queries"] == 150
    assert resumed["iterations"] == 3 and resumed["final_acc"] == straight["final_acc"]
    a, b = (load_checkpoint(os.path.join(d, "last.pt"), "cpu")["dfme"] for d in (straight_dir, resumed_dir))
    for part in ("student", "generator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)


def test_dfme_resume_refuses_other_settings(workspace):
    run_dfme(workspace, "--query_budget=50", "--exp_name=short")
    with pytest.raises(UserError, match="this run has --query_budget=50, the command line says --query_budget=100"):
        run_dfme(workspace, "--query_budget=100", "--exp_name=short", "--resume")


def test_dfme_resume_refuses_another_teacher_file(workspace, tmp_path):
    """The run's teacher file replaced (same path, other bytes): its rows would name the new file alone."""
    teacher = str(tmp_path / "teacher.pt")
    shutil.copyfile(os.path.join(workspace["save_dir"], "teachers", "mnist_lenet.pt"), teacher)
    run_dfme(workspace, "--query_budget=50", "--exp_name=swapped", f"--teacher_ckpt={teacher}")
    ckpt = torch.load(teacher, weights_only=True)
    ckpt["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, teacher)
    with pytest.raises(UserError, match="not the one this run began with"):
        run_dfme(workspace, "--query_budget=50", "--exp_name=swapped", f"--teacher_ckpt={teacher}", "--resume")


def test_budget_below_one_iteration_is_refused():
    with pytest.raises(UserError, match="does not pay for one DFME iteration"):
        dfme.parse_args([*TINY, "--query_budget=49"])


def test_missing_query_budget_is_one_line(tmp_path):
    with pytest.raises(UserError, match="--query_budget is required"):
        dfme.parse_args(["--dataset=mnist"])
    done = subprocess.run([sys.executable, "dfme.py", f"--save_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --query_budget is required: DFME's schedule is laid out over the iterations it pays for"]


def test_dfme_kill_mid_iteration_never_undercounts(workspace, monkeypatch):
    """Killed after iteration 3's generator step had been answered (last.pt is
    written every iteration, the count before every call): the resumed run pays
    for that step again and counts it, and the count equals the teacher's own log."""
    answered, real_call = [], BlackBoxTeacher.__call__

    def logged(self, images):
        answers = real_call(self, images)
        answered.append(len(images))
        return answers

    monkeypatch.setattr(BlackBoxTeacher, "__call__", logged)
    real_student_step, calls = dfme.DFME.student_step, []

    def crash_in_third_iteration(self):
        calls.append(1)
        if len(calls) == 2 * 2 + 1:  # d_iter=2 student steps per iteration: the first of iteration 3
            raise KeyboardInterrupt
        return real_student_step(self)

    flags = ["--query_budget=200", "--eval_every=50", "--exp_name=killed_mid"]
    with monkeypatch.context() as patch:
        patch.setattr(dfme.DFME, "student_step", crash_in_third_iteration)
        with pytest.raises(KeyboardInterrupt):
            run_dfme(workspace, *flags)
    resumed, _ = run_dfme(workspace, *flags, "--resume")
    assert resumed["queries"] == sum(answered) == 180 <= 200  # 130 before the kill, 50 after
    assert resumed["iterations"] == 3


def test_dfme_schedule_never_decays_before_the_first_step():
    """With 2 iterations, int(0.1 * 2) = 0 would be a milestone that decays at once."""
    student, generator = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), Generator(nz=4, ngf=2, channels=1, size=4)
    teacher = BlackBoxTeacher(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), mode="soft")
    method = DFME(student, generator, teacher, iterations=2, batch_size=2, nz=4)
    assert method.optimizer_s.param_groups[0]["lr"] == 0.1
    assert method.optimizer_g.param_groups[0]["lr"] == 1e-4
