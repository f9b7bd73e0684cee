"""Issue 21, trust round 2: what a hostile but fair user found, each a test.
Server-side limits are in test_serve_limits.py."""
import math
import os
import sqlite3
import zipfile

import pytest
import torch

from test_scripts import run_ideal, workspace  # noqa: F401  (fixture)
from test_serve import KEYS, Killed, data_dir, files, run_remote, serve  # noqa: F401  (fixtures)
from utils.remote import RemoteBlackBox
from utils.report import budget_spent
from utils.run import UserError, load_checkpoint


def kill_on_call(monkeypatch, call):
    """RemoteBlackBox dies (as if SIGKILLed) right after its `call`-th answer."""
    real_call, calls = RemoteBlackBox.__call__, []

    def dies(self, x):
        calls.append(len(x))
        answers = real_call(self, x)
        if len(calls) == call:
            raise Killed
        return answers

    monkeypatch.setattr(RemoteBlackBox, "__call__", dies)
    return lambda: monkeypatch.setattr(RemoteBlackBox, "__call__", real_call)


# -- 1. the count is the bill ----------------------------------------------------------------

def test_resume_without_teacher_run_json_is_refused(serve, data_dir, tmp_path, monkeypatch):
    """Deleting teacher_run.json used to start a new run id at 0 queries, and the
    provider billed the run twice past its budget. Now the resume is refused."""
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    restore = kill_on_call(monkeypatch, 3)
    flags = ("--exp_name=lost_id", "--epochs=6", "--query_budget=40")
    with pytest.raises(Killed):
        run_remote(data_dir, str(tmp_path), served.url, *flags)
    restore()
    run_dir = tmp_path / "ideal" / "lost_id"
    os.remove(run_dir / "teacher_run.json")
    with pytest.raises(UserError, match="teacher_run.json is missing: .* restore the file"):
        run_remote(data_dir, str(tmp_path), served.url, *flags, "--resume")
    assert served.used("alice") == 30


def test_resume_against_a_ledger_that_lost_the_run_keeps_the_budget(serve, data_dir, tmp_path, monkeypatch):
    """The provider's bill for the run reads 0 (its ledger lost the run): the
    run's own write-ahead count is the count, so what was billed before and
    after together is the budget, no more."""
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    restore = kill_on_call(monkeypatch, 3)
    flags = ("--exp_name=lost_ledger", "--epochs=6", "--query_budget=40")
    with pytest.raises(Killed):
        run_remote(data_dir, str(tmp_path), served.url, *flags)
    restore()
    before = served.used("alice")
    with sqlite3.connect(served.ledger_path) as db:
        db.execute("DELETE FROM usage")
        db.execute("DELETE FROM requests")
    summary, _ = run_remote(data_dir, str(tmp_path), served.url, *flags, "--resume")
    assert before + served.used("alice") == summary["queries"] == 40


@pytest.mark.parametrize("content", ["", '{"url": "x"}', '{"run_id": "bad id with spaces"}'])
def test_damaged_teacher_run_json_is_one_line(serve, data_dir, tmp_path, monkeypatch, content):
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    run_remote(data_dir, str(tmp_path), served.url, "--exp_name=damaged", "--epochs=1")
    (tmp_path / "ideal" / "damaged" / "teacher_run.json").write_text(content)
    with pytest.raises(UserError, match="teacher_run.json is damaged"):
        run_remote(data_dir, str(tmp_path), served.url, "--exp_name=damaged", "--epochs=2", "--resume")


# -- 2. a damaged checkpoint is refused ------------------------------------------------------

def flip_bytes_in_largest_entry(path, count=8):
    """Flip `count` bytes in the middle of the largest entry's data (a tensor), as a bad disk would."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(open(path, "rb").read())
    start = data.index(entry.filename.encode(), entry.header_offset) + len(entry.filename)
    middle = start + entry.file_size // 2
    data[middle:middle + count] = bytes(b ^ 0xFF for b in data[middle:middle + count])
    open(path, "wb").write(bytes(data))


def test_bit_flipped_last_pt_is_refused(workspace):
    _, run_dir = run_ideal(workspace, "--epochs=2", "--exp_name=flipped")
    flip_bytes_in_largest_entry(os.path.join(run_dir, "last.pt"))
    with pytest.raises(UserError, match="damaged checkpoint: .*last.pt fails its checksum .* restore it"):
        run_ideal(workspace, "--epochs=3", "--exp_name=flipped", "--resume")


@pytest.mark.parametrize("name, remedy", [("best.pt", "remove it and resume"),
                                          ("labelled.pt", "remove it and resume; the teacher is asked")])
def test_truncated_side_file_says_it_can_be_removed(workspace, name, remedy):
    _, run_dir = run_ideal(workspace, "--epochs=2", f"--exp_name=truncated_{name[:-3]}")
    path = os.path.join(run_dir, name)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    with pytest.raises(UserError, match=f"{name}.*{remedy}"):
        run_ideal(workspace, "--epochs=3", f"--exp_name=truncated_{name[:-3]}", "--resume")
    os.remove(path)
    summary, _ = run_ideal(workspace, "--epochs=3", f"--exp_name=truncated_{name[:-3]}", "--resume")
    assert summary["epochs_run"] == 3


# -- 3. no run goes on with NaN, no teacher is written with NaN ----------------------------------

def test_dfme_stops_at_a_non_finite_loss_and_keeps_the_last_good_state(workspace, monkeypatch):
    from methods.dfme import DFME
    from test_dfme import run_dfme
    real, steps = DFME.step, []

    def poisoned(self, clock=None):
        steps.append(1)
        losses = real(self, clock)
        if len(steps) == 3:
            with torch.no_grad():
                next(self.student.parameters()).fill_(math.nan)
            losses["student"] = math.nan
        return losses

    monkeypatch.setattr(DFME, "step", poisoned)
    with pytest.raises(UserError, match="the run diverged at iteration 3 .*student.* last.pt keeps the last good"):
        run_dfme(workspace, "--query_budget=250", "--eval_every=1", "--exp_name=nan_dfme")
    ckpt = load_checkpoint(os.path.join(workspace["save_dir"], "dfme", "nan_dfme", "last.pt"), "cpu")
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(t).all() for t in ckpt["dfme"]["student"].values() if t.is_floating_point())


def test_pretrain_never_writes_a_non_finite_teacher(workspace, tmp_path, monkeypatch):
    import pretrain
    real = pretrain.train

    def diverges(args, ranks, model, *rest):
        loss = real(args, ranks, model, *rest)
        with torch.no_grad():
            next(model.parameters()).fill_(math.inf)
        return loss

    monkeypatch.setattr(pretrain, "train", diverges)
    teacher = tmp_path / "teacher.pt"
    args = pretrain.parse_args(["--epochs=1", "--batch_size=32", f"--data_dir={workspace['data_dir']}",
                                f"--save_dir={tmp_path}", f"--teacher_ckpt={teacher}"])
    with pytest.raises(UserError, match="the run diverged at epoch 1 .*weights not finite"):
        pretrain.main(args)
    assert not teacher.exists()


# -- 9. words a user reads -------------------------------------------------------------------

def test_budget_message_names_whose_budget_ran_out():
    assert budget_spent(200, 200) == "query budget of 200 spent"
    assert budget_spent(0, 25000) == ("the teacher's provider has no budget left for this API key "
                                      "(25,000 queries by this run)")


def test_progress_bar_shows_queries_with_thousands(workspace, capsys):
    run_ideal(workspace, "--epochs=1", "--batch_size=1000", "--g_steps=1", "--exp_name=bar")
    assert "queries=1,000" in capsys.readouterr().err


def test_provider_budget_message_is_not_a_budget_of_0(serve, data_dir, tmp_path, monkeypatch, capsys):
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["bob"])  # the provider's budget: 40
    summary, _ = run_remote(data_dir, str(tmp_path), served.url, "--epochs=6", "--exp_name=provider_budget")
    out = capsys.readouterr().out
    assert summary["queries"] == served.used("bob") == 40
    assert "the teacher's provider has no budget left for this API key (40 queries by this run)" in out
    assert "query budget of 0" not in out
