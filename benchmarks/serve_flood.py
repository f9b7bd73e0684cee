"""The idle flood of issue 21 against a real serve_teacher.py process, on loopback.

    python benchmarks/serve_flood.py                 # 120 idle sockets, ulimit -n 128, default limits
    python benchmarks/serve_flood.py --sockets 200 --max_connections 32

The server runs as its own process with its open-file limit lowered to
--nofile (the issue's 128), as the issue found http.server: about 120 idle
sockets locked every new client out. This opens --sockets connections that
send nothing, then asks one batch as a real client (RemoteBlackBox, default
retries) and reports how long it waited, what the idle sockets were answered
(503 when closed to make room for a newer connection, 408 at the deadline), and
the server's CPU seconds over it all. Bounded: under a minute.
"""
import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402  (after the path line, as a script run from benchmarks/)
from utils.remote import RemoteBlackBox  # noqa: E402
from utils.teacher import save_teacher  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "flood-key-0123456789abcdef"


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(folder: str, args) -> tuple:
    """serve_teacher.py under `ulimit -n args.nofile`; returns (process, port)."""
    model, keys = os.path.join(folder, "teacher.pt"), os.path.join(folder, "keys.json")
    save_teacher(build_model("lenet", 1, 28, 10), model, "mnist", "lenet", (1, 28, 10), float("nan"))
    with open(keys, "w") as f:
        json.dump({"flood": {"key": KEY, "budget": 0}}, f)
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))  # noqa: E731
    server = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "serve_teacher.py"), "--model", model, "--keys", keys, "--port=0",
         "--ledger", os.path.join(folder, "ledger.sqlite3"), "--device=cpu",
         f"--max_connections={args.max_connections}", f"--request_timeout={args.request_timeout}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, preexec_fn=limit)
    line = server.stdout.readline()  # "serving ... on http://HOST:PORT/v1/predict ..."
    if "http://" not in line:
        server.kill()
        sys.exit(f"the server did not start: {line.strip() or 'no output'}")
    return server, int(line.split("http://")[1].split("/")[0].rsplit(":", 1)[1])


def flood(port: int, sockets: int) -> list:
    """`sockets` connections that send nothing (fewer if this process runs out of files)."""
    opened = []
    for _ in range(sockets):
        try:
            opened.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return opened


def first_bytes(sock) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(12)
    except (BlockingIOError, ConnectionResetError):
        return b""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sockets", type=int, default=120, help="idle connections to open")
    p.add_argument("--nofile", type=int, default=128, help="the server's open-file limit")
    p.add_argument("--max_connections", type=int, default=64)
    p.add_argument("--request_timeout", type=float, default=10.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server, port = start_server(folder, args)
        try:
            cpu0 = cpu_seconds(server.pid)
            idle = flood(port, args.sockets)
            time.sleep(0.5)
            refused = sum(first_bytes(s).startswith(b"HTTP/1.1 503") for s in idle)
            start = time.perf_counter()
            answers = RemoteBlackBox(f"http://127.0.0.1:{port}", KEY)(torch.rand(5, 1, 28, 28))
            waited = time.perf_counter() - start
            time.sleep(args.request_timeout + 1)  # what the flood still holds times out
            timed_out = sum(first_bytes(s).startswith(b"HTTP/1.1 408") for s in idle)
            result = {"idle_sockets": len(idle), "server_nofile": args.nofile,
                      "max_connections": args.max_connections, "request_timeout_s": args.request_timeout,
                      "closed_503_to_make_room": refused, "closed_408_at_deadline": timed_out,
                      "client_served_after_s": round(waited, 2), "client_answers": len(answers),
                      "server_cpu_s": round(cpu_seconds(server.pid) - cpu0, 2)}
        finally:
            server.terminate()
            server.wait(timeout=15)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
