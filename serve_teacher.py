"""Serve one teacher over HTTP: API keys with budgets, a SQLite ledger, and
answers that only the provider chooses the kind of.

    python serve_teacher.py --model runs/teachers/mnist_lenet.pt --keys keys.json
    python serve_teacher.py --model teacher.pt2 --trust_teacher_code --mode soft --port 8000

keys.json maps a key id (what the logs and the ledger name) to its secret and
its budget in images (0 = no cap):
    {"alice": {"key": "<at least 16 characters>", "budget": 25000}}
The protocol is in utils/remote.py; ideal.py --teacher_url is its client.
This script is the command line only: the server is utils/serving.py, on
uvicorn with the limits of utils/http_server.py (docs/SERVING.md).
"""
import argparse
import logging
import resource

from utils.blackbox import MODES
from utils.checks import check_positive
from utils.http_server import Limits, run_blocking
from utils.run import UserError, run_cli
from utils.serving import ServeConfig, build_service, make_server

DEFAULTS = ServeConfig._field_defaults  # the library's defaults are the flags' defaults
FD_RESERVE = 64  # files the process holds besides connections: the ledger, the model, libraries (a margin)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Serve one teacher over HTTP, with API keys, budgets and a ledger.")
    p.add_argument("--model", required=True,
                   help="a teacher checkpoint from pretrain.py, a torch.export .pt2 program or a TorchScript file")
    p.add_argument("--trust_teacher_code", action="store_true",
                   help="allow a .pt2 or TorchScript model: loading one can run code the file carries")
    p.add_argument("--input_shape", type=int, nargs=3, metavar=("C", "H", "W"),
                   help="image shape the model takes (default: from the file's meta.json or checkpoint)")
    p.add_argument("--classes", type=int, help="classes the model answers (default: from the file)")
    p.add_argument("--mode", default=DEFAULTS["mode"], choices=MODES, help="answer top-1 labels or probabilities")
    p.add_argument("--keys", required=True, help='JSON file: {"KEY_ID": {"key": SECRET, "budget": IMAGES}}')
    p.add_argument("--ledger", default=DEFAULTS["ledger"], help="SQLite file of queries billed per key")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--max_batch", type=int, default=DEFAULTS["max_batch"], help="most images in one request")
    p.add_argument("--device", default=DEFAULTS["device"],
                   help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--max_connections", type=int, default=Limits().max_connections,
                   help="connections open at once; one more is answered 503 and closed (docs/SERVING.md)")
    p.add_argument("--request_timeout", type=float, default=Limits().request_timeout,
                   help="seconds a client has to send a whole request; a late one is answered 408, unbilled")
    p.add_argument("--keep_alive", type=float, default=Limits().keep_alive,
                   help="seconds an idle kept-alive connection stays open between requests")
    return p.parse_args(argv)


def main(args):
    limits = check_limits(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    service = build_service(ServeConfig.of(args))
    try:
        server = make_server(service, args.host, args.port, limits)
    except OSError as err:  # a port in use, an address not on this machine
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}; "
                        "choose another --port or --host") from None
    host, port = server.server_address[:2]
    print(f"serving a {service.teacher.mode}-label teacher ({'x'.join(map(str, service.input_shape))} -> "
          f"{service.classes} classes) on http://{host}:{port}/v1/predict with uvicorn; at most "
          f"{limits.max_connections} connections, {limits.request_timeout:g} s per request; ledger {args.ledger}",
          flush=True)
    try:
        run_blocking(server)
    finally:
        service.ledger.close()


def check_limits(args) -> Limits:
    """The server's limits from the flags, refused in one line when they cannot hold."""
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be 0 to 65535 (0 picks a free port), not {args.port}")
    if args.max_connections < 1:
        raise UserError("--max_connections must be at least 1")
    check_positive(args, "request_timeout", "keep_alive")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and args.max_connections + FD_RESERVE > soft:
        raise UserError(f"--max_connections {args.max_connections} needs {args.max_connections + FD_RESERVE} "
                        f"open files and this process may open {soft}: lower it, or raise `ulimit -n`")
    return Limits(args.max_connections, args.request_timeout, args.keep_alive)


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()))
