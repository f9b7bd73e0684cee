"""The bad command lines of issue 21, rerun: every script given values a
hostile but fair user would try. Each must end in one line (exit 2: a UserError,
or argparse's own usage error), never a traceback, and never be accepted.

    python tests/bad_flags.py            # all cases, counts per script
    python tests/bad_flags.py --verbose  # and the line each case ended with

Runs in this process on a scratch folder (tiny MNIST, a one-epoch teacher, a
keys file): about 150 cases in about a minute and a half on 2 cores. tests/test_bad_flags.py
runs it and wants 0 tracebacks and 0 accepted.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import traceback
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dfme  # noqa: E402  (after the path line, as a script run from benchmarks/)
import ideal  # noqa: E402
import pretrain  # noqa: E402
import serve_teacher  # noqa: E402
from datasets import DatasetError  # noqa: E402
from models import ModelError  # noqa: E402
from utils.run import UserError  # noqa: E402
from utils.serving import ServeConfig, build_service, make_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_LINE = (UserError, DatasetError, ModelError)
KEY = "sweep-key-0123456789abcdef"
HUGE = str(10 ** 9)


def make_scratch(root: str) -> dict:
    """Tiny MNIST, a teacher, keys, a file, a folder and broken files to pass as flags."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_scripts import tiny_mnist
    data, runs = os.path.join(root, "data"), os.path.join(root, "runs")
    tiny_mnist(data)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        pretrain.main(pretrain.parse_args(["--epochs=1", "--batch_size=32", f"--data_dir={data}",
                                           f"--save_dir={runs}"]))
    paths = {"data": data, "runs": runs, "teacher": os.path.join(runs, "teachers", "mnist_lenet.pt"),
             "file": os.path.join(root, "a_file"), "presets": os.path.join(root, "presets")}
    for name, text in {"file": "x", "keys": json.dumps({"a": {"key": KEY, "budget": 0}}),
                       "keys_broken": '{"a": {"key": ', "keys_short": json.dumps({"a": {"key": "k", "budget": 0}}),
                       "keys_latin": json.dumps({"a": {"key": "caf\u00e9" + KEY, "budget": 0}}),
                       "not_db": "not a database " * 100}.items():
        paths[name] = os.path.join(root, name)
        with open(paths[name], "w") as f:
            f.write(text)
    os.makedirs(paths["presets"])
    for name, text in {"broken": '{"ngf": ', "float_epochs": '{"epochs": 1.5}', "string_lr": '{"lr": "fast"}',
                       "bad_choice": '{"bb_mode": "medium"}'}.items():
        with open(os.path.join(paths["presets"], f"{name}.json"), "w") as f:
            f.write(text)
    return paths


def ideal_cases(p: dict) -> list:
    """(script, flags, environment) of ideal.py's bad command lines."""
    tiny = ["--nz=8", "--ngf=4", "--g_steps=1", "--batch_size=10", "--epochs=1", f"--data_dir={p['data']}",
            f"--save_dir={p['runs']}"]
    ideal_bad = [
        *[[f"--{flag}={value}"] for flag in ("lr", "lr_g") for value in ("nan", "inf", "0", "-1")],
        *[[f"--{flag}={value}"] for flag in ("lambda_info", "momentum", "weight_decay", "prior_share", "seed_share")
          for value in ("nan", "inf")],
        ["--momentum=-1"], ["--weight_decay=-1"], ["--prior_share=1"], ["--prior_share=-0.5"], ["--seed_share=1"],
        ["--epochs=0"], ["--batch_size=0"], ["--nz=0"], ["--ngf=0"], ["--g_steps=0"], ["--pool_batches=0"],
        ["--candidates=0"], ["--query_budget=-1"], ["--distill_epochs=-1"],
        [f"--batch_size={HUGE}"], [f"--nz={HUGE}"], [f"--ngf={HUGE}"], ["--seed=-1"], [f"--seed={2 ** 40}"],
        [f"--save_dir={p['file']}"], [f"--save_dir={p['file']}/sub"], ["--save_dir=/proc/runs"],
        ["--exp_name=../../../x"], ["--exp_name=a/b"], ["--exp_name=.hidden"],
        ["--preset=../../x"], ["--preset=nonexistent"], ["--preset=broken"], ["--preset=float_epochs"],
        ["--preset=string_lr"], ["--preset=bad_choice"],
        [f"--teacher_ckpt={os.path.join(ROOT, 'README.md')}"], [f"--teacher_ckpt={p['runs']}"],
        [f"--teacher_ckpt={p['file']}"], ["--teacher_ckpt=/nonexistent.pt"],
        ["--device=foo"], ["--device=cuda:0"], ["--amp"], ["--resume", "--exp_name=never_ran"],
        ["--dataset=foo"], ["--net=foo"], ["--epochs=1.5"], ["--lr=fast"],
    ]
    remote = ["--teacher_url=http://127.0.0.1:9"]
    ideal_env = [
        (["--teacher_url=notaurl"], {"IDEAL_TEACHER_KEY": KEY}),
        (["--teacher_url=ftp://127.0.0.1/x"], {"IDEAL_TEACHER_KEY": KEY}),
        (["--teacher_url=http://127.0.0.1:port"], {"IDEAL_TEACHER_KEY": KEY}),
        (remote, {"IDEAL_TEACHER_KEY": "caf\u00e9" + KEY}),
        (remote, {"IDEAL_TEACHER_KEY": KEY + "\nsecond line"}),
        (remote, {"IDEAL_TEACHER_KEY": ""}),
    ]
    return [("ideal.py", tiny + bad, {}) for bad in ideal_bad] + [("ideal.py", tiny + bad, env) for bad, env in ideal_env]


def other_cases(p: dict) -> list:
    """(script, flags, environment) of the other scripts' bad command lines."""
    dfme_tiny = ["--nz=8", "--ngf=4", "--batch_size=10", "--query_budget=1000", "--eval_every=1",
                 f"--data_dir={p['data']}", f"--save_dir={p['runs']}"]
    dfme_bad = [
        *[[f"--{flag}={value}"] for flag in ("lr_s", "lr_g", "grad_epsilon", "lr_decay")
          for value in ("nan", "inf", "0", "-1")],
        ["--lr_steps", "2"], ["--lr_steps", "nan"], ["--query_budget=1"], ["--query_budget=0"], ["--batch_size=0"],
        [f"--batch_size={HUGE}"], [f"--nz={HUGE}"], ["--g_iter=0"], ["--d_iter=0"], ["--grad_m=0"],
        ["--eval_every=0"], ["--seed=-1"], ["--exp_name=../x"], [f"--save_dir={p['file']}"], ["--device=foo"],
        ["--resume", "--exp_name=never_ran"],
    ]
    pretrain_tiny = ["--epochs=1", "--batch_size=32", f"--data_dir={p['data']}", f"--save_dir={p['runs']}"]
    pretrain_bad = [
        *[[f"--{flag}={value}"] for flag in ("lr", "weight_decay", "momentum") for value in ("nan", "inf", "-1")],
        ["--lr=0"], ["--epochs=0"], ["--batch_size=0"], ["--seed=-1"], [f"--seed={2 ** 33}"], ["--exp_name=../x"],
        [f"--save_dir={p['file']}"], [f"--teacher_ckpt={p['runs']}"], ["--nesterov", "--momentum=0"],
        ["--device=foo"], ["--device=mps"], ["--amp"], ["--resume", "--exp_name=never_ran"],
    ]
    serve_base = ["--model", p["teacher"], "--keys", p["keys"], "--device=cpu"]
    serve_bad = [
        ["--port=-1"], ["--port=70000"], ["--max_batch=0"], ["--input_shape", "3", "32", "32"],
        ["--input_shape", "0", "0", "0"], ["--classes=-5"], ["--classes=7"], [f"--ledger={p['runs']}"],
        [f"--ledger={p['not_db']}"], ["--ledger=/proc/ledger.sqlite3"], ["--max_connections=0"],
        ["--request_timeout=nan"], ["--request_timeout=0"], ["--keep_alive=inf"], ["--host=999.1.1.1"],
        ["--device=foo"], ["--mode=medium"],
        ["--keys", p["keys_broken"]], ["--keys", p["keys_short"]], ["--keys", p["keys_latin"]],
        ["--keys", "/nonexistent.json"], ["--model", os.path.join(ROOT, "README.md")], ["--model", "/nonexistent.pt"],
        ["--model", p["runs"]],
    ]
    export_bad = [["--lr=nan"], ["--lr=inf"], ["--lr=0"], ["--epochs=0"], ["--batch_size=0"], ["--seed=-1"],
                  ["--device=foo"], [f"--out={p['teacher']}"]]
    return ([("export_teacher.py", [f"--data_dir={p['data']}", f"--out={p['runs']}/x.pt2"] + bad, {})
             for bad in export_bad]
            + [("dfme.py", dfme_tiny + bad, {}) for bad in dfme_bad]
            + [("pretrain.py", pretrain_tiny + bad, {}) for bad in pretrain_bad]
            + [("serve_teacher.py", serve_base + ["--ledger", os.path.join(p["runs"], "l.sqlite3"), "--port=0"]
                + bad, {}) for bad in serve_bad])


def cases(p: dict) -> list:
    """(script, flags, environment) of every bad command line."""
    return ideal_cases(p) + other_cases(p)


def serve_check(argv) -> None:
    """serve_teacher.py up to the point where it would serve: flags, model,
    keys, ledger, the listening socket."""
    args = serve_teacher.parse_args(argv)
    limits = serve_teacher.check_limits(args)
    service = build_service(ServeConfig.of(args))
    try:
        make_server(service, args.host, args.port, limits).server_close()
    except OSError as err:  # what main() turns into one line
        raise UserError(f"cannot listen: {err}") from None
    finally:
        service.ledger.close()


def export_teacher(argv) -> None:
    """scripts/export_teacher.py reads sys.argv itself."""
    spec = importlib.util.spec_from_file_location("export_teacher", os.path.join(ROOT, "scripts", "export_teacher.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    saved, sys.argv = sys.argv, ["export_teacher.py", *argv]
    try:
        module.main()
    finally:
        sys.argv = saved


ENTRIES = {"export_teacher.py": export_teacher,
           "ideal.py": lambda a: ideal.main(ideal.parse_args(a)),
           "dfme.py": lambda a: dfme.main(dfme.parse_args(a)),
           "pretrain.py": lambda a: pretrain.main(pretrain.parse_args(a)),
           "serve_teacher.py": serve_check}


def run_case(script: str, argv: list, env: dict, presets: str) -> tuple:
    """('one line' | 'traceback' | 'accepted', the last line it printed)."""
    saved_env, saved_presets = {k: os.environ.get(k) for k in env}, ideal.CONFIG_DIR
    os.environ.update(env)
    ideal.CONFIG_DIR = presets if any(a.startswith("--preset=") and a[9:] in PRESETS for a in argv) else saved_presets
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            ENTRIES[script](argv)
        return "accepted", out.getvalue().strip().splitlines()[-1:] or [""]
    except ONE_LINE as err:
        return ("traceback" if "\n" in str(err) else "one line"), [f"error: {err}"]
    except SystemExit as err:  # argparse: usage and one error line, exit 2
        lines = out.getvalue().strip().splitlines()
        return ("one line" if err.code == 2 else "traceback"), lines[-1:]
    except Exception:  # noqa: BLE001 - what the sweep is looking for
        return "traceback", traceback.format_exc().strip().splitlines()[-1:]
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ideal.CONFIG_DIR = saved_presets


PRESETS = ("broken", "float_epochs", "string_lr", "bad_choice")


def sweep(verbose: bool = False, every: int = 1) -> dict:
    """{script: Counter of outcomes}, and the cases that went wrong; every
    `every`-th case only, for a quicker check (tests/test_bad_flags.py)."""
    with tempfile.TemporaryDirectory() as root:
        paths = make_scratch(root)
        counts, wrong = {}, []
        for script, argv, env in cases(paths)[::every]:
            outcome, last = run_case(script, argv, env, paths["presets"])
            counts.setdefault(script, Counter())[outcome] += 1
            bad = " ".join(a for a in argv if a not in cases_base(paths, script))
            if outcome != "one line":
                wrong.append((script, bad, env, outcome, last[0] if last else ""))
            if verbose:
                print(f"{outcome:9s} {script} {bad} {list(env) or ''}\n          {last[0] if last else ''}")
    return {"counts": counts, "wrong": wrong}


def cases_base(p: dict, script: str) -> set:
    """The flags every case of `script` shares (left out of the report)."""
    return {arg for s, argv, _ in cases(p) if s == script for arg in argv
            if all(arg in a for s2, a, _ in cases(p) if s2 == script)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="print every case and the line it ended with")
    p.add_argument("--every", type=int, default=1, help="run every N-th case only")
    args = p.parse_args()
    result = sweep(args.verbose, max(1, args.every))
    print("| script | cases | one line | traceback | accepted |\n|---|---|---|---|---|")
    for script, c in result["counts"].items():
        print(f"| {script} | {sum(c.values())} | {c['one line']} | {c['traceback']} | {c['accepted']} |")
    for script, bad, env, outcome, last in result["wrong"]:
        print(f"{outcome}: {script} {bad} {list(env) or ''}: {last}")
    sys.exit(1 if result["wrong"] else 0)


if __name__ == "__main__":
    main()
