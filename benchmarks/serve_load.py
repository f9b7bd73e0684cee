"""Load test of serve_teacher.py and the cost of the HTTP path, on loopback.

    python benchmarks/serve_load.py                       # 8 clients x 50 requests, and the label overhead
    python benchmarks/serve_load.py --clients 16 --requests 200 --images 250

Both parts start their own server in this process on 127.0.0.1, built by
utils/serving.py as serve_teacher.py builds it (a random LeNet teacher for
MNIST's shape: its weights do not change the cost):
1. load: `clients` threads each send `requests` batches of `images` images under
   one key whose budget is 3/4 of the demand. It reports throughput and p50/p99
   latency, and checks that the ledger billed exactly the answered images and
   never more than the budget.
2. overhead: IDEAL's labelling step of the MNIST CPU preset (E=100 calls of
   B=250 images), in-process black box against RemoteBlackBox over HTTP.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model  # noqa: E402  (after the path line, as a script run from benchmarks/)
from utils.pool import to_float  # noqa: E402
from utils.loadtest import hammer, summarise  # noqa: E402
from utils.remote import RemoteBlackBox  # noqa: E402
from utils.serving import ServeConfig, build_service, make_server  # noqa: E402
from utils.teacher import load_blackbox_teacher, save_teacher  # noqa: E402

KEY = "benchmark-key-0123456789"


def start_server(folder: str, budget: int, max_batch: int = 1024):
    """A served random MNIST LeNet in a thread: (server, service, url, teacher file)."""
    model_path, keys_path = os.path.join(folder, "teacher.pt"), os.path.join(folder, "keys.json")
    torch.manual_seed(0)
    save_teacher(build_model("lenet", 1, 28, 10), model_path, "mnist", "lenet", (1, 28, 10), float("nan"))
    with open(keys_path, "w") as f:
        json.dump({"bench": {"key": KEY, "budget": budget}}, f)
    service = build_service(ServeConfig(model_path, keys_path, ledger=os.path.join(folder, "ledger.sqlite3"),
                                        max_batch=max_batch, device="cpu"))
    server = make_server(service, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, service, f"http://127.0.0.1:{server.server_address[1]}", model_path


def load_part(args) -> dict:
    demand = args.clients * args.requests * args.images
    with tempfile.TemporaryDirectory() as folder:
        server, service, url, _ = start_server(folder, budget=demand * 3 // 4)
        pixels = np.random.default_rng(0).integers(0, 256, (args.images, 1, 28, 28), dtype=np.uint8)
        stats = summarise(hammer(url, KEY, args.clients, args.requests, pixels), args.images)
        stats.update(budget=demand * 3 // 4, billed=service.ledger.used("bench"),
                     clients=args.clients, images_per_request=args.images)
        server.shutdown()
    return stats


def overhead_part(calls: int = 100, batch: int = 250) -> dict:
    """Seconds for `calls` labelling calls of `batch` MNIST-shaped images, in
    process and over HTTP (the CPU preset: E=100, B=250)."""
    with tempfile.TemporaryDirectory() as folder:
        server, _, url, model_path = start_server(folder, budget=0)
        local, _ = load_blackbox_teacher(model_path, "mnist", "lenet", "hard", 0, "cpu")
        remote = RemoteBlackBox(url, KEY)
        batches = [to_float(torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)) for _ in range(calls)]
        seconds = {"in_process": 0.0, "http": 0.0}
        for x in batches:  # in turns, so that a busy spell of a shared machine hits both paths
            for name, teacher in (("in_process", local), ("http", remote)):
                start = time.perf_counter()
                teacher(x)
                seconds[name] += time.perf_counter() - start
        server.shutdown()
    seconds = {name: round(value, 2) for name, value in seconds.items()}
    seconds["overhead_s"] = round(seconds["http"] - seconds["in_process"], 2)
    seconds["per_call_ms"] = round(1000 * seconds["overhead_s"] / calls, 2)
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=50, help="per client")
    p.add_argument("--images", type=int, default=4, help="per request")
    p.add_argument("--overhead_calls", type=int, default=100,
                   help="labelling calls of 250 images in the overhead part (100 = the CPU preset's E)")
    args = p.parse_args()
    print(json.dumps({"load": load_part(args), "label_overhead_mnist_cpu_preset": overhead_part(args.overhead_calls),
                      "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
