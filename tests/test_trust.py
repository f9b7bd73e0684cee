"""Issue 21, trust round 2: what a hostile but fair user found, each a test.
Server-side limits are in test_serve_limits.py."""
import json
import os
import sqlite3

import pytest

from test_serve import KEYS, Killed, data_dir, files, run_remote, serve  # noqa: F401  (fixtures)
from utils.remote import RemoteBlackBox
from utils.run import UserError


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
