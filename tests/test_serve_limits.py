"""serve_teacher.py's limits (utils/serving.py, utils/http_server.py) under
hostile but bounded clients on 127.0.0.1: a client that dribbles its headers,
an idle flood past the connection cap, a body shorter than its Content-Length,
malformed HTTP; and the server's flags refused in one line. The numbers
printed are those of docs/SERVING.md."""
import json
import os
import socket
import sqlite3
import time

import pytest
import torch

import serve_teacher
from test_serve import KEYS, files, images, post, serve  # noqa: F401  (fixtures)
from utils.http_server import Limits
from utils.pool import to_float
from utils.remote import RemoteBlackBox, encode_npy
from utils.run import UserError
from utils.serving import ServeConfig, build_service, load_keys

TIGHT = Limits(max_connections=8, request_timeout=1.0, keep_alive=0.5)


def raw(port, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock, limit_s=5.0) -> bytes:
    """What the server sends until it closes the connection (at most limit_s)."""
    sock.settimeout(limit_s)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, socket.timeout):
        pass
    return b"".join(chunks)


def head(port, length, extra=b"") -> bytes:
    return (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['alice']}\r\n"
            f"Content-Type: application/x-npy\r\n").encode() + extra + f"Content-Length: {length}\r\n\r\n".encode()


def test_slow_header_client_is_cut_at_the_deadline(serve):
    """One header line every 0.2 s, forever: answered 408 and closed at the
    1 s request deadline (http.server held such a client for minutes)."""
    served = serve(limits=TIGHT)
    sock, start = raw(served.port, b"POST /v1/predict HTTP/1.1\r\n"), time.perf_counter()
    closed = None
    while closed is None and time.perf_counter() - start < 5:
        time.sleep(0.2)
        try:
            sock.sendall(b"X-Slow: 1\r\n")
        except OSError:
            closed = time.perf_counter() - start
    answer = read_all(sock)
    held = time.perf_counter() - start if closed is None else closed
    print(f"\nslow headers: connection closed after {held:.2f} s (deadline {TIGHT.request_timeout} s)")
    assert answer.startswith(b"HTTP/1.1 408") and b"nothing was billed" in answer
    assert TIGHT.request_timeout * 0.9 < held < TIGHT.request_timeout + 1.5


def test_idle_kept_alive_connection_closes_and_a_busy_one_is_not_cut(serve):
    """Two requests on one kept-alive connection, then silence: closed after
    keep_alive (0.5 s), not at the 1 s deadline; the deadline never cuts an answer."""
    served = serve(limits=TIGHT)
    usage = f"GET /v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['alice']}\r\n\r\n".encode()
    sock = raw(served.port, usage)
    time.sleep(0.3)
    sock.sendall(usage)  # pipelined behind nothing: the first answer is already out
    start = time.perf_counter()
    answers = read_all(sock)
    idle = time.perf_counter() - start
    print(f"\nkept-alive connection: closed {idle:.2f} s after the last answer (keep_alive {TIGHT.keep_alive} s)")
    assert answers.count(b"HTTP/1.1 200") == 2 and b"408" not in answers
    assert idle < TIGHT.request_timeout


def test_the_deadline_never_cuts_a_slow_answer(serve, monkeypatch):
    """The deadline is the client's time to send; the server's time to answer is its own."""
    served = serve(limits=TIGHT)
    real = served.service.answer
    monkeypatch.setattr(served.service, "answer", lambda pixels: time.sleep(1.5) or real(pixels))
    status, _, _ = post(served.url, encode_npy(images(3)))
    assert status == 200 and served.used("alice") == 3


@pytest.mark.parametrize("leaves", [True, False])
def test_short_body_is_never_billed(serve, leaves):
    """Content-Length says 2x the bytes sent: the client leaves, or waits.
    Either way no answer is made and nothing billed; the next request is."""
    served = serve(limits=TIGHT)
    body = encode_npy(images(4))
    sock = raw(served.port, head(served.port, 2 * len(body)) + body)
    if leaves:
        sock.shutdown(socket.SHUT_WR)
    answer = read_all(sock)
    assert answer == b"" if leaves else answer.startswith(b"HTTP/1.1 408")
    assert served.used("alice") == 0
    status, _, _ = post(served.url, body)
    assert status == 200 and served.used("alice") == 4


def test_malformed_content_length_is_a_400_not_a_500(serve):
    served = serve(limits=TIGHT)
    for extra in ("Content-Length: \u00b2\r\n".encode(), b"Content-Length: -1\r\n", b"Bad header line\r\n"):
        request = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['alice']}\r\n").encode()
        answer = read_all(raw(served.port, request + extra + b"\r\n"))
        status, _, body = answer.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 400") and "malformed HTTP" in json.loads(body)["error"], extra
    assert served.used("alice") == 0


def test_idle_flood_never_locks_a_client_out(serve):
    """30 idle sockets against a cap of 8: each one past the cap closes the
    oldest idle one (503), so 8 stay, closed 408 at the 1 s deadline; a real
    client asking during the flood takes the place of another idle one at once,
    and is billed once."""
    served = serve(limits=TIGHT)
    start, cpu = time.perf_counter(), time.process_time()
    flood = [raw(served.port) for _ in range(30)]
    time.sleep(0.3)
    evicted = [read_all(s, 0.05).startswith(b"HTTP/1.1 503") for s in flood]
    asked = time.perf_counter()
    remote = RemoteBlackBox(served.url, KEYS["alice"], backoff_s=0.2, retries=6)
    answers = remote(to_float(torch.from_numpy(images(5))))
    served_after = time.perf_counter() - asked
    timed_out = sum(read_all(s, 3.0).startswith(b"HTTP/1.1 408") for s in flood[22:])
    cleared, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\nidle flood: {sum(evicted)} of 30 closed 503 to make room (cap {TIGHT.max_connections}); a real client "
          f"asking then was served in {served_after:.2f} s; the rest closed 408, all gone after {cleared:.2f} s; {cpu:.2f} s CPU")
    assert evicted == [True] * 22 + [False] * 8  # the oldest go first
    assert answers.shape == (5,) and served.used("alice") == remote.queries == 5
    assert served_after < TIGHT.request_timeout  # never waited for the flood to time out
    assert timed_out == TIGHT.max_connections - 1  # one made room for the client's request
    assert cleared < TIGHT.request_timeout + 3


def test_cap_refuses_a_newcomer_when_every_connection_is_busy(serve):
    """8 connections whose headers are in and whose bodies are still coming are
    busy, not idle: the 9th is answered 503 itself, and nothing is billed."""
    served = serve(limits=TIGHT)
    body = encode_npy(images(4))
    busy = [raw(served.port, head(served.port, 2 * len(body)) + body) for _ in range(TIGHT.max_connections)]
    time.sleep(0.3)
    newcomer = read_all(raw(served.port), 0.5)
    assert newcomer.startswith(b"HTTP/1.1 503") and b"all of them sending" in newcomer
    assert all(read_all(s).startswith(b"HTTP/1.1 408") for s in busy)
    assert served.used("alice") == 0


# -- flags, refused in one line ---------------------------------------------------------------

def server_args(files, tmp_path, *flags, keys=None):
    return serve_teacher.parse_args(["--model", files["checkpoint"], "--keys", keys or files["keys"],
                                     "--ledger", str(tmp_path / "ledger.sqlite3"), "--device", "cpu", *flags])


@pytest.mark.parametrize("flags, message", [
    (["--port=-1"], "--port must be 0 to 65535"),
    (["--port=70000"], "--port must be 0 to 65535"),
    (["--max_connections=0"], "--max_connections must be at least 1"),
    (["--max_connections=100000000"], "raise `ulimit -n`"),
    (["--request_timeout=nan"], "--request_timeout must be a finite number > 0"),
    (["--keep_alive=-1"], "--keep_alive must be a finite number > 0"),
])
def test_bad_limits_are_one_line(files, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        serve_teacher.main(server_args(files, tmp_path, *flags))


@pytest.mark.parametrize("flags, message", [
    (["--input_shape", "3", "32", "32"], r"--input_shape \(3, 32, 32\): .* says \(1, 28, 28\)"),
    (["--classes=-5"], "--classes -5: .* says 10"),
])
def test_shape_that_contradicts_the_file_is_refused(files, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        build_service(ServeConfig.of(server_args(files, tmp_path, *flags)))


@pytest.mark.parametrize("flags, message", [
    (["--input_shape", "0", "0", "0", "--classes=10"], "three sizes >= 1"),
    (["--input_shape", "1", "28", "28", "--classes=-5"], "--classes at least 2"),
    (["--input_shape", "3", "32", "32", "--classes=10"], "cannot take one 3x32x32 image"),
    (["--input_shape", "1", "28", "28", "--classes=7"], "not 7 classes"),
])
def test_shape_of_a_program_is_tried_before_serving(files, tmp_path, flags, message):
    """A .pt2 without meta.json: the flags' shape is tried on the model at start."""
    program = torch.export.load(files["export"])
    bare = str(tmp_path / "bare.pt2")
    torch.export.save(program, bare)
    args = serve_teacher.parse_args(["--model", bare, "--keys", files["keys"], "--trust_teacher_code",
                                     "--ledger", str(tmp_path / "l.sqlite3"), *flags])
    with pytest.raises(UserError, match=message):
        build_service(ServeConfig.of(args))


def test_meta_without_input_shape_is_named_as_such(files, tmp_path):
    program = torch.export.load(files["export"])
    path = str(tmp_path / "partial.pt2")
    torch.export.save(program, path, extra_files={"meta.json": json.dumps({"classes": 10})})
    args = serve_teacher.parse_args(["--model", path, "--keys", files["keys"], "--trust_teacher_code",
                                     "--ledger", str(tmp_path / "l.sqlite3")])
    with pytest.raises(UserError, match="does not say its input_shape") as err:
        build_service(ServeConfig.of(args))
    assert "no meta.json" not in str(err.value)


@pytest.mark.parametrize("kind", ["folder", "not a database"])
def test_bad_ledger_is_one_line(files, tmp_path, kind):
    ledger = tmp_path / "ledger.sqlite3"
    if kind == "folder":
        ledger.mkdir()
    else:
        ledger.write_bytes(b"this is not a database, " * 100)
    with pytest.raises(UserError, match="--ledger .*: not a SQLite ledger this process can write"):
        build_service(ServeConfig.of(server_args(files, tmp_path)))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_ledger_is_one_line(files, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    args = server_args(files, tmp_path)
    args.ledger = str(folder / "ledger.sqlite3")
    with pytest.raises(UserError, match="not a SQLite ledger"):
        build_service(ServeConfig.of(args))


@pytest.mark.parametrize("key", ["caf\u00e9-secret-0123456789", "secret with spaces 0123456789"])
def test_key_a_header_cannot_carry_is_refused(tmp_path, key):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"alice": {"key": key, "budget": 1}}))
    with pytest.raises(UserError, match="printable ASCII"):
        load_keys(str(path))


def test_ledger_is_untouched_by_refusals(serve):
    """Not one row for a request that was cut off or malformed (the ledger itself, not only its sums)."""
    served = serve(limits=TIGHT)
    read_all(raw(served.port, head(served.port, 10_000) + b"\x93NUMPY"))
    with sqlite3.connect(served.ledger_path) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
