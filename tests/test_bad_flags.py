"""Issue 21, points 5 and 6: bad command lines end in one line, never a
traceback, and no bad value is accepted. One test per group of the issue's
sweep; tests/bad_flags.py is the sweep itself (every 10th case here)."""
import json
import os

import pytest

import dfme
import ideal
import pretrain
from test_scripts import ROOT, load_script
from utils.resume import paid_queries, record_resume
from utils.run import UserError


def test_the_sweep_has_no_traceback_and_accepts_nothing():
    sweep = load_script("tests/bad_flags.py").sweep(every=10)
    assert sum(sum(c.values()) for c in sweep["counts"].values()) >= 15
    assert sweep["wrong"] == []


PARSERS = {"ideal": lambda *a: ideal.parse_args(list(a)),
           "dfme": lambda *a: dfme.parse_args(["--query_budget=10000", *a]),
           "pretrain": lambda *a: pretrain.parse_args(list(a))}


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_save_dir_that_is_a_file_or_unwritable_is_one_line(script, tmp_path):
    (tmp_path / "f").write_text("x")
    for save_dir in (tmp_path / "f", tmp_path / "f" / "sub", "/proc/runs"):
        with pytest.raises(UserError, match=f"--save_dir {save_dir}: cannot write there"):
            PARSERS[script](f"--save_dir={save_dir}")


@pytest.mark.parametrize("script", sorted(PARSERS))
@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_seed_out_of_range_is_one_line(script, seed, tmp_path):
    with pytest.raises(UserError, match="--seed must be 0 to 4294967295"):
        PARSERS[script](f"--seed={seed}", f"--save_dir={tmp_path}")


@pytest.mark.parametrize("script", sorted(PARSERS))
@pytest.mark.parametrize("name", ["../../../x", "a/b", ".hidden", "/abs"])
def test_run_names_are_names_not_paths(script, name, tmp_path):
    with pytest.raises(UserError, match="--exp_name .*: a name of letters"):
        PARSERS[script](f"--exp_name={name}", f"--save_dir={tmp_path}")
    assert not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("preset, message", [
    ("../../x", "--preset '../../x': a name of letters"),
    ("broken", "is not valid JSON"), ("float_epochs", "epochs = 1.5 is not a value --epochs takes"),
])
def test_presets_are_names_and_checked(tmp_path, monkeypatch, preset, message):
    (tmp_path / "broken.json").write_text('{"ngf": ')
    (tmp_path / "float_epochs.json").write_text('{"epochs": 1.5}')
    (tmp_path.parent / "x.json").write_text('{"ngf": 8}')  # what ../ would reach
    monkeypatch.setattr(ideal, "CONFIG_DIR", str(tmp_path))
    with pytest.raises(UserError, match=message):
        ideal.parse_args([f"--preset={preset}", f"--save_dir={tmp_path}"])


@pytest.mark.parametrize("flags, message", [
    (["--batch_size=1000000000"], "--batch_size and --ngf needs .* GiB for one tensor"),
    (["--nz=1000000000"], "--nz and --ngf needs .* GiB for one tensor"),
])
def test_sizes_that_cannot_fit_in_memory_are_one_line(flags, message, tmp_path):
    with pytest.raises(UserError, match=message):
        ideal.parse_args([*flags, f"--save_dir={tmp_path}"])


@pytest.mark.parametrize("script, flag", [
    ("dfme", "--lr_s=nan"), ("dfme", "--lr_g=nan"), ("dfme", "--grad_epsilon=0"), ("dfme", "--grad_epsilon=nan"),
    ("dfme", "--lr_decay=nan"), ("pretrain", "--lr=inf"), ("pretrain", "--weight_decay=inf"),
    ("ideal", "--lr=inf"), ("ideal", "--lambda_info=nan"), ("ideal", "--momentum=inf"),
])
def test_non_finite_floats_are_refused(script, flag, tmp_path):
    with pytest.raises(UserError, match=f"--{flag[2:].split('=')[0]} must be a finite number"):
        PARSERS[script](flag, f"--save_dir={tmp_path}")


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/x", "http://127.0.0.1:port", "http://"])
def test_teacher_url_that_is_not_a_url_is_one_line(url, tmp_path, monkeypatch):
    from utils.remote import connect_teacher
    monkeypatch.setenv("IDEAL_TEACHER_KEY", "k" * 20)
    with pytest.raises(UserError, match="not a teacher URL"):
        connect_teacher(url, (1, 28, 28), 10, "hard", 0)


@pytest.mark.parametrize("key", ["caf\u00e9-0123456789abcdef", "secret-0123456789\nsecond-line"])
def test_key_a_header_cannot_carry_is_one_line_and_never_printed(key, monkeypatch):
    from utils.remote import connect_teacher
    monkeypatch.setenv("IDEAL_TEACHER_KEY", key)
    with pytest.raises(UserError, match="IDEAL_TEACHER_KEY holds characters") as err:
        connect_teacher("http://127.0.0.1:9", (1, 28, 28), 10, "hard", 0)
    assert "0123456789" not in str(err.value)


@pytest.mark.parametrize("content", ["", '{"queries": ', '{"asking": 3}', '["x"]'])
def test_truncated_queries_json_is_one_line(tmp_path, content):
    (tmp_path / "queries.json").write_text(content)
    with pytest.raises(UserError, match="queries.json is damaged, .* restore it"):
        paid_queries(str(tmp_path))


def test_truncated_resumes_json_is_kept_aside(tmp_path):
    (tmp_path / "resumes.json").write_text('[{"time": ')
    args = ideal.parse_args([f"--save_dir={tmp_path}"])
    record_resume(str(tmp_path), vars(args), args, from_epoch=3)
    history = json.loads((tmp_path / "resumes.json").read_text())
    assert "kept as resumes.json.damaged" in history[0]["damaged"] and history[1]["from_epoch"] == 3
    assert (tmp_path / "resumes.json.damaged").read_text() == '[{"time": '


def test_teacher_ckpt_that_is_a_folder_says_so(tmp_path):
    with pytest.raises(UserError, match="--teacher_ckpt .* is a folder; give the teacher's file name"):
        pretrain.parse_args([f"--teacher_ckpt={tmp_path}", f"--save_dir={tmp_path}"])
    from utils.teacher import load_blackbox_teacher
    with pytest.raises(UserError, match="is a folder; pass the teacher's file"):
        load_blackbox_teacher(str(tmp_path), "mnist", "lenet", "hard", 0, "cpu")


def test_readme_as_a_teacher_is_named_as_the_wrong_file():
    from utils.teacher import load_blackbox_teacher
    with pytest.raises(UserError, match="neither a whole torch.save zip nor a pickle") as err:
        load_blackbox_teacher(os.path.join(ROOT, "README.md"), "mnist", "lenet", "hard", 0, "cpu")
    assert "names code to run" not in str(err.value)
