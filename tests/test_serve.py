"""serve_teacher.py (its server: utils/serving.py) and its client: answers,
keys, budgets, the ledger, retries, IDEAL through the server, a bounded load
test, and what loading a .pt2 or TorchScript teacher can execute. Servers run
in this process on 127.0.0.1."""
import io
import json
import logging
import os
import sqlite3
import threading
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import Counter
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.nn as nn

import ideal
import serve_teacher
from harness import runs
from models import build_model
from test_scripts import tiny_mnist
from test_security import RunsCommand
from utils.http_server import Limits
from utils.loadtest import hammer, summarise
from utils.pool import to_float
from utils.remote import (NPY, RemoteBlackBox, RemoteBudgetExceeded, RemoteTeacherError, decode_npy,
                          encode_npy)
from utils.run import UserError
from utils.serving import ServeConfig, build_service, load_keys, make_server
from utils.teacher import load_blackbox_teacher, save_teacher

KEYS = {"alice": "alice-secret-0123456789", "bob": "bob-secret-0123456789", "load": "load-secret-0123456789"}
BUDGETS = {"alice": 0, "bob": 40, "load": 1200}


class Foreign(nn.Module):
    """An architecture that is not in models/: a residual block and a max-pool head."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        h = self.a(x).relu()
        return self.fc((h + self.b(h).relu()).amax((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random LeNet checkpoint, the Foreign net as a .pt2 and as TorchScript, and keys.json."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    paths = {"checkpoint": str(root / "lenet.pt"), "export": str(root / "foreign.pt2"),
             "torchscript": str(root / "foreign_ts.pt"), "keys": str(root / "keys.json"), "root": root}
    save_teacher(build_model("lenet", 1, 28, 10), paths["checkpoint"], "mnist", "lenet", (1, 28, 10), 42.0)
    foreign, meta = Foreign().eval(), json.dumps({"input_shape": [1, 28, 28], "classes": 10, "test_acc": 12.5})
    program = torch.export.export(foreign, (torch.rand(2, 1, 28, 28),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, paths["export"], extra_files={"meta.json": meta})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; old files still exist
        torch.jit.save(torch.jit.script(foreign), paths["torchscript"], _extra_files={"meta.json": meta})
    with open(paths["keys"], "w") as f:
        json.dump({k: {"key": KEYS[k], "budget": BUDGETS[k]} for k in KEYS}, f)
    return paths


class Served:
    """A server on 127.0.0.1 in a thread; stop() shuts it and closes its ledger."""

    def __init__(self, files, ledger, *flags, model="checkpoint", limits=Limits()):
        args = serve_teacher.parse_args(["--model", files[model], "--keys", files["keys"], "--ledger", str(ledger),
                                         "--device", "cpu", "--max_batch", "64", *flags])
        self.service, self.ledger_path = build_service(ServeConfig.of(args)), str(ledger)
        self.server = make_server(self.service, "127.0.0.1", 0, limits)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def used(self, key_id):
        return self.service.ledger.used(key_id)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.service.ledger.close()


@pytest.fixture
def serve(files, tmp_path):
    """serve(*flags, model=...) starts a server with a fresh ledger; all stop at teardown."""
    started = []

    def start(*flags, model="checkpoint", ledger=None, limits=Limits()):
        started.append(Served(files, ledger or tmp_path / f"ledger{len(started)}.sqlite3", *flags, model=model,
                              limits=limits))
        return started[-1]

    yield start
    for served in started:
        served.stop()


def post(url, body, key=KEYS["alice"], request_id=None, content_length=None):
    """A raw POST /v1/predict -> (status, headers, body bytes)."""
    headers = {"Content-Type": NPY, **({"Authorization": f"Bearer {key}"} if key else {}),
               **({"Idempotency-Key": request_id} if request_id else {})}
    request = urllib.request.Request(f"{url}/v1/predict", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


# -- answers ------------------------------------------------------------------

@pytest.mark.parametrize("model", ["checkpoint", "export"])
@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_answers_equal_the_local_black_box(files, serve, model, mode):
    served = serve(f"--mode={mode}", "--trust_teacher_code", model=model)
    local, acc = load_blackbox_teacher(files[model], "mnist", "lenet", mode, 0, "cpu", trust_code=True)
    remote = RemoteBlackBox(served.url, KEYS["alice"])
    x = to_float(torch.from_numpy(images(150)))  # above --max_batch 64: the client splits it
    assert remote.mode == mode and remote.test_acc == acc
    assert torch.equal(remote(x), local(x))
    assert remote.queries == served.used("alice") == 150


def test_teacher_of_any_architecture_needs_meta_or_flags(files, serve, tmp_path):
    program = torch.export.load(files["export"])
    bare = str(tmp_path / "bare.pt2")
    torch.export.save(program, bare)  # no meta.json
    with pytest.raises(UserError, match="pass --input_shape C H W and --classes K"):
        build_service(ServeConfig.of(serve_teacher.parse_args(
            ["--model", bare, "--keys", files["keys"], "--trust_teacher_code", "--ledger", str(tmp_path / "l")])))
    files = {**files, "bare": bare}
    served = Served(files, tmp_path / "l2", "--trust_teacher_code", "--input_shape", "1", "28", "28",
                    "--classes", "10", model="bare")
    try:
        assert RemoteBlackBox(served.url, KEYS["alice"])(torch.rand(3, 1, 28, 28)).shape == (3,)
    finally:
        served.stop()


# -- refusals: 401, 400, 429, none of them billed ---------------------------------

def test_refusals_are_one_line_and_never_billed(serve):
    served = serve()
    good = encode_npy(images(4))
    cases = {
        "unknown key": (post(served.url, good, key="x" * 20), 401, "unknown or missing API key"),
        "no key": (post(served.url, good, key=None), 401, "unknown or missing API key"),
        "not npy": (post(served.url, b"\x00" * 100), 400, "must be a .npy file"),
        "pickled npy": (post(served.url, encode_pickled_npy()), 400, "must be a .npy file"),
        "float32": (post(served.url, encode_npy(images(4).astype(np.float32))), 400, "must be uint8"),
        "wrong shape": (post(served.url, encode_npy(images(4)[:, :, :20])), 400, "must have shape (N, 1, 28, 28)"),
        "empty batch": (post(served.url, encode_npy(images(0))), 400, "1 to 64 images"),
        "65 images": (post(served.url, encode_npy(images(65))), 400, "1 to 64 images of 1x28x28 uint8"),
        "body too big": (post(served.url, encode_npy(images(80))), 400, "this body has"),
        "bad request id": (post(served.url, good, request_id="no spaces allowed"), 400, "Idempotency-Key"),
    }
    for name, ((status, _, body), want_status, want_text) in cases.items():
        message = json.loads(body)["error"]
        assert status == want_status and want_text in message and "\n" not in message, name
    assert served.used("alice") == 0 and served.used("bob") == 0
    with pytest.raises(RemoteTeacherError, match=r"answered 401: .*\(is \$IDEAL_TEACHER_KEY the key"):
        RemoteBlackBox(served.url, "wrong-key-0123456789")
    assert RemoteBlackBox(served.url, KEYS["alice"])(torch.rand(0, 1, 28, 28)).shape == (0,)


def encode_pickled_npy():
    buffer = io.BytesIO()
    np.save(buffer, np.array([RunsCommand("/nonexistent")], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_npy_round_trip_without_numpy_load():
    """decode_npy parses .npy itself (numpy.load's header parser is not thread-safe on 3.11)."""
    for array in (images(3), np.asfortranarray(np.random.rand(3, 5).astype(np.float32)),
                  np.arange(4, dtype=">i8"), np.zeros((0, 10), np.float32)):
        decoded = decode_npy(encode_npy(array))
        assert decoded.dtype == array.dtype and np.array_equal(decoded, array) and decoded.flags.writeable
    odd = encode_npy(images(2)).replace(b"'descr': '|u1'", b"'descr': 'u1,('")  # numpy's ast: a SyntaxError
    for bad in (b"", encode_npy(images(2))[:-1], encode_pickled_npy(), b"\x93NUMPY\x01\x00\x08\x00{'x': 1}", odd):
        with pytest.raises(ValueError):
            decode_npy(bad)


def test_budget_429_says_what_is_left_and_bills_nothing(serve):
    served = serve()
    bob = RemoteBlackBox(served.url, KEYS["bob"])  # budget 40
    bob(to_float(torch.from_numpy(images(30))))
    status, _, body = post(served.url, encode_npy(images(11, seed=1)), key=KEYS["bob"])
    assert status == 429 and json.loads(body)["remaining"] == 10
    assert served.used("bob") == 30
    other = RemoteBlackBox(served.url, KEYS["bob"])
    bob(to_float(torch.from_numpy(images(10, seed=2))))  # spends the last 10 behind `other`'s back
    with pytest.raises(RemoteBudgetExceeded, match="0 of 40 queries left"):
        other(to_float(torch.from_numpy(images(5, seed=3))))
    assert isinstance(RemoteBudgetExceeded("x"), UserError)  # a script stops with one line
    assert served.used("bob") == 40


# -- the ledger ---------------------------------------------------------------------

def test_replayed_request_id_is_billed_once(serve):
    served = serve()
    body = encode_npy(images(8))
    first = post(served.url, body, request_id="run1.batch7")
    again = post(served.url, body, request_id="run1.batch7")
    assert first[0] == again[0] == 200 and first[2] == again[2]
    assert (first[1]["X-Replayed"], again[1]["X-Replayed"]) == ("0", "1")
    assert served.used("alice") == 8
    other = post(served.url, encode_npy(images(8, seed=1)), request_id="run1.batch7")
    assert other[0] == 409 and json.loads(other[2])["images"] == 8
    assert served.used("alice") == 8


def test_ledger_survives_a_restart(serve, tmp_path):
    ledger = tmp_path / "kept.sqlite3"
    first = serve(ledger=ledger)
    body = encode_npy(images(5))
    answer = post(first.url, body, request_id="before-restart")[2]
    post(first.url, encode_npy(images(7, seed=1)), key=KEYS["bob"])
    first.stop()
    second = serve(ledger=ledger)
    assert (second.used("alice"), second.used("bob")) == (5, 7)
    status, headers, again = post(second.url, body, request_id="before-restart")
    assert status == 200 and again == answer and headers["X-Replayed"] == "1"
    assert second.used("alice") == 5


def test_retry_after_a_5xx_reuses_the_request_id(serve, monkeypatch):
    served = serve()
    real_answer, calls = served.service.answer, []

    def flaky(pixels):
        calls.append(len(pixels))
        if len(calls) == 1:
            raise RuntimeError("the GPU fell over")
        return real_answer(pixels)

    monkeypatch.setattr(served.service, "answer", flaky)
    remote = RemoteBlackBox(served.url, KEYS["alice"], backoff_s=0.01)
    remote(to_float(torch.from_numpy(images(6))))
    assert calls == [6, 6] and remote.queries == served.used("alice") == 6


def test_a_408_is_asked_again_and_billed_once(serve, monkeypatch):
    """A 408 says the server's deadline ran out before the request all arrived
    (a slow link, or a server busy with a flood): nothing was read, so the
    client sends it again, as it does after a 5xx."""
    import utils.remote as remote_module
    served = serve()
    real_open, statuses = remote_module.NO_REDIRECTS.open, []

    def late_once(request, timeout):
        if request.get_method() == "POST" and not statuses:
            statuses.append(408)
            raise urllib.error.HTTPError(request.full_url, 408, "Request Timeout", {}, io.BytesIO(b'{"error": "late"}'))
        statuses.append(200)
        return real_open(request, timeout=timeout)

    remote = RemoteBlackBox(served.url, KEYS["alice"], backoff_s=0.01)
    monkeypatch.setattr(remote_module.NO_REDIRECTS, "open", late_once)
    remote(to_float(torch.from_numpy(images(6))))
    assert statuses == [408, 200] and remote.queries == served.used("alice") == 6


def test_unreachable_server_is_one_line(files):
    with pytest.raises(RemoteTeacherError, match="did not answer after 3 tries"):
        RemoteBlackBox("http://127.0.0.1:9", KEYS["alice"], retries=2, backoff_s=0.01)


def test_logs_name_the_key_id_never_the_key(serve, caplog):
    served = serve()
    with caplog.at_level(logging.INFO, logger="serve_teacher"):
        post(served.url, encode_npy(images(3)))
        post(served.url, encode_npy(images(3)), key="not-a-key-0123456789")
    lines = [r.getMessage() for r in caplog.records]
    assert any("key=alice" in line and "images=3" in line and "status=200" in line for line in lines)
    assert any("key=-" in line and "status=401" in line for line in lines)
    assert not any(secret in line for line in lines for secret in (*KEYS.values(), "not-a-key-0123456789"))


# -- IDEAL through the server ---------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    tiny_mnist(path)
    return path


def run_remote(data_dir, save_dir, url, *flags):
    args = ideal.parse_args(["--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--g_steps=2",
                             "--batch_size=10", "--epochs=3", f"--teacher_url={url}",
                             f"--data_dir={data_dir}", f"--save_dir={save_dir}", *flags])
    return ideal.main(args), os.path.join(save_dir, "ideal", args.exp_name)


def test_ideal_through_the_server_counts_agree(serve, data_dir, tmp_path, monkeypatch):
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    summary, run_dir = run_remote(data_dir, str(tmp_path), served.url)
    with open(os.path.join(run_dir, "summary.json")) as f:
        saved = json.load(f)
    assert summary["queries"] == saved["queries"] == served.used("alice") == summary["samples"] == 30
    assert summary["teacher_acc"] == 42.0
    with open(os.path.join(run_dir, "args.json")) as f:
        assert KEYS["alice"] not in f.read()


def test_ideal_remote_needs_the_key_and_the_servers_mode(serve, data_dir, tmp_path, monkeypatch):
    served = serve("--mode=soft")
    monkeypatch.delenv("IDEAL_TEACHER_KEY", raising=False)
    with pytest.raises(UserError, match="export IDEAL_TEACHER_KEY"):
        run_remote(data_dir, str(tmp_path), served.url)
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    with pytest.raises(UserError, match="answers soft labels .* pass --bb_mode=soft"):
        run_remote(data_dir, str(tmp_path), served.url)


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs."""


@pytest.mark.parametrize("when", ["after the answer", "before the request"])
def test_killed_and_resumed_run_pays_no_sample_twice(serve, data_dir, tmp_path, monkeypatch, when):
    """The third epoch's labelling dies: after the server billed it (and before
    anything was saved), or before the request left. The resumed run asks for
    the same batch under the same request id; the server bills it once."""
    served = serve()
    monkeypatch.setenv("IDEAL_TEACHER_KEY", KEYS["alice"])
    real_call, calls = RemoteBlackBox.__call__, []

    def dies_on_third(self, x):
        calls.append(len(x))
        if len(calls) == 3 and when == "before the request":
            raise Killed
        answers = real_call(self, x)
        if len(calls) == 3:
            raise Killed
        return answers

    monkeypatch.setattr(RemoteBlackBox, "__call__", dies_on_third)
    # a binding budget: the write-ahead count (30) must not stop the resumed run
    # from asking the batch the server never saw (it billed 20)
    budget = ["--query_budget=30"] if when == "before the request" else []
    with pytest.raises(Killed):
        run_remote(data_dir, str(tmp_path), served.url, "--exp_name=killed", *budget)
    assert served.used("alice") == (30 if when == "after the answer" else 20)
    monkeypatch.setattr(RemoteBlackBox, "__call__", real_call)
    summary, _ = run_remote(data_dir, str(tmp_path), served.url, "--exp_name=killed", "--resume", *budget)
    assert summary["queries"] == served.used("alice") == summary["samples"] == 30
    with sqlite3.connect(served.ledger_path) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3  # one billed request per epoch


# -- load -----------------------------------------------------------------------------

def test_bounded_load_loses_no_count_and_passes_no_budget(serve):
    """8 clients x 50 requests x 4 images against a budget of 1,200: exactly
    300 answered, 100 refused, 1,200 billed. A longer run: benchmarks/serve_load.py."""
    served = serve()
    result = hammer(served.url, KEYS["load"], clients=8, requests=50, pixels=images(4))
    stats = summarise(result, images=4)
    print(f"\nload test: {stats}")
    assert sorted(set(result["statuses"]), key=str) == [200, 429], Counter(result["statuses"])
    assert stats["answered"] == 300 and stats["refused_429"] == 100
    assert served.used("load") == 4 * stats["answered"] == BUDGETS["load"]


# -- what loading a model file can execute -----------------------------------------------

def rewrite_zip(src, dst, edit):
    """Copy a zip archive, letting edit(files: name -> bytes) change its entries."""
    with zipfile.ZipFile(src) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    edit(entries)
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def pickled(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def entry(entries, suffix):
    return next(name for name in entries if name.endswith(suffix))


def via_sample_inputs(entries, marker):
    """Every .pt2 holds its example inputs as a pickle; torch.export.load retries
    it with weights_only=False when the safe load fails."""
    entries[entry(entries, "sample_inputs/model.pt")] = pickled(RunsCommand(marker))


def via_pickled_weight(entries, marker):
    """A weight flagged use_pickle is loaded with torch.load(weights_only=False)."""
    config_name = entry(entries, "weights/model_weights_config.json")
    config = json.loads(entries[config_name])
    name, weight = next(iter(config["config"].items()))
    weight["use_pickle"] = True
    entries[config_name] = json.dumps(config).encode()
    entries[entry(entries, "weights/" + weight["path_name"])] = pickled(RunsCommand(marker))


def via_shape_expression(entries, marker):
    """A symbolic size is stored as a Python expression that sympy.sympify evaluates."""
    model = entry(entries, "models/model.json")
    text = entries[model].decode()
    start = text.index('"expr_str": "') + len('"expr_str": "')
    end = text.index('"', start)
    entries[model] = (text[:start] + text[start:end] + f" + 0*__import__('os').system('touch {marker}')"
                      + text[end:]).encode()


class Stateful(nn.Module):
    """A TorchScript module with its own __setstate__, which torch.jit.load runs."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 784))

    def forward(self, x):
        return x.flatten(1) @ self.w.t()

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool]:
        return self.w, self.training

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:
        self.w = state[0]
        self.training = state[1]


def torchscript_writing(path, marker):
    """A TorchScript file is source code, compiled and run on load: here its
    __setstate__ writes a file (torch.from_file with shared=True maps any path
    for writing). Adding to w keeps the write from being optimised away."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(Stateful()), buffer)
    evil = (f'    f = torch.from_file("{marker}", True, 8, dtype=0)\n    _0 = torch.fill_(f, 65)\n'
            '    self.w = torch.add((state)[0], torch.sum(f), alpha=0)\n')

    def edit(entries):
        code = next(name for name in entries if "/code/" in name and name.endswith(".py"))
        assert "    self.w = (state)[0]\n" in entries[code].decode()
        entries[code] = entries[code].decode().replace("    self.w = (state)[0]\n", evil).encode()
        for name in [n for n in entries if n.endswith(".debug_pkl")]:
            del entries[name]  # source positions of the original code
    rewrite_zip(buffer, path, edit)


@pytest.mark.parametrize("attack", [via_sample_inputs, via_pickled_weight, via_shape_expression])
def test_loading_a_pt2_can_run_its_code(files, tmp_path, attack):
    """Found here: torch.export.load runs code a .pt2 carries, three ways. Our
    loader refuses the file unless the user says they trust it; the code never runs."""
    marker, path = tmp_path / "pwned", str(tmp_path / "evil.pt2")
    rewrite_zip(files["export"], path, lambda entries: attack(entries, marker))
    with pytest.raises(UserError, match="can run code that the file carries; pass --trust_teacher_code"):
        load_blackbox_teacher(path, "mnist", "lenet", "hard", 0, "cpu")
    assert not marker.exists()
    try:
        torch.export.load(path)  # the raw loader
    except Exception:
        pass  # the attack has run by then; what it leaves behind need not load
    assert marker.exists()


def test_loading_torchscript_can_run_its_code(files, tmp_path):
    marker, path = tmp_path / "written", str(tmp_path / "evil_ts.pt")
    torchscript_writing(path, marker)
    with pytest.raises(UserError, match="is a TorchScript file: loading it can run code"):
        load_blackbox_teacher(path, "mnist", "lenet", "hard", 0, "cpu")
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(path)
    assert marker.read_bytes() == b"A" * 8


def test_trusted_programs_check_their_declared_shape(files):
    with pytest.raises(UserError, match=r"takes \(1, 28, 28\) images and answers 10 classes; cifar10 has"):
        load_blackbox_teacher(files["export"], "cifar10", "cnn", "hard", 0, "cpu", trust_code=True)
    local, acc = load_blackbox_teacher(files["torchscript"], "mnist", "lenet", "hard", 0, "cpu", trust_code=True)
    assert acc == 12.5 and local(torch.rand(2, 1, 28, 28)).shape == (2,)


def test_ideal_runs_a_local_pt2_teacher_only_when_trusted(files, data_dir, tmp_path):
    flags = ["--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--g_steps=2", "--batch_size=10", "--epochs=1",
             f"--teacher_ckpt={files['export']}", f"--data_dir={data_dir}", f"--save_dir={tmp_path}"]
    with pytest.raises(UserError, match="pass --trust_teacher_code only if you trust whoever made it"):
        ideal.main(ideal.parse_args(flags))
    summary = ideal.main(ideal.parse_args([*flags, "--trust_teacher_code", "--exp_name=trusted"]))
    assert summary["queries"] == 10 and summary["teacher_acc"] == 12.5


@pytest.mark.parametrize("table, message", [
    ({"alice": {"key": "short", "budget": 1}}, "shorter than 16 characters"),
    ({"alice": {"key": "k" * 20, "budget": -1}}, "must map each key id"),
    ({"a": {"key": "k" * 20, "budget": 1}, "b": {"key": "k" * 20, "budget": 2}}, "two key ids share one secret"),
    (["not", "a", "table"], "must map each key id"),
])
def test_bad_keys_file_is_one_line(tmp_path, table, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(table))
    with pytest.raises(UserError, match=message):
        load_keys(str(path))


def test_client_never_follows_a_redirect_with_the_key(monkeypatch):
    """A 3xx would make urllib re-send the Authorization header to its target;
    the client refuses it, and the target never sees the key."""
    import http.server
    seen = []

    class Catcher(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    catcher = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Catcher)

    class Redirector(Catcher):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{catcher.server_address[1]}/steal")
            self.end_headers()

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirector)
    for server in (catcher, redirector):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(RemoteTeacherError, match="302"):
            RemoteBlackBox(f"http://127.0.0.1:{redirector.server_address[1]}", "secret-key", retries=0)
    finally:
        for server in (catcher, redirector):
            server.shutdown()
            server.server_close()
    assert seen == []


def test_a_sweep_report_reads_each_teacher_files_accuracy(files):
    """compare.py --unfinished reports a run under way with its teacher's accuracy,
    read from the file: a checkpoint's test_acc or a .pt2's meta.json (no code run)."""
    assert runs.teacher_file_acc(files["checkpoint"]) == 42.0
    assert runs.teacher_file_acc(files["export"]) == 12.5
