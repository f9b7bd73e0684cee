"""A load-test client for a served teacher (serve_teacher.py, utils/serving.py):
raw POSTs from many threads, their latencies and statuses. Used by
benchmarks/serve_load.py and tests/test_serve.py; it never reads a count
itself, so a test can compare what it saw with what the ledger billed."""
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from utils.remote import NPY, encode_npy


def post(url: str, key: str, pixels: np.ndarray, request_id: str):
    """One raw POST /v1/predict; returns the HTTP status, or the name of the
    error if no answer came (so a load test reports it instead of losing a thread)."""
    request = urllib.request.Request(f"{url}/v1/predict", data=encode_npy(pixels), method="POST", headers={
        "Authorization": f"Bearer {key}", "Idempotency-Key": request_id, "Content-Type": NPY})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            reply.read()
            return reply.status
    except urllib.error.HTTPError as err:
        err.read()
        return err.code
    except OSError as err:
        return type(err).__name__


def hammer(url: str, key: str, clients: int, requests: int, pixels: np.ndarray) -> dict:
    """`clients` threads x `requests` POSTs of `pixels`, each under a new request
    id. Returns wall seconds, per-request latencies (s) and statuses."""
    latencies, statuses, lock = [], [], threading.Lock()

    def client(c):
        for r in range(requests):
            start = time.perf_counter()
            status = post(url, key, pixels, f"load-{c}-{r}")
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses.append(status)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall_s": time.perf_counter() - start, "latencies": latencies, "statuses": statuses}


def summarise(result: dict, images: int) -> dict:
    """Throughput (requests and images per second) and p50/p99 latency in ms."""
    ms = np.array(result["latencies"]) * 1000
    answered = result["statuses"].count(200)
    return {"requests": len(ms), "answered": answered, "refused_429": result["statuses"].count(429),
            "requests_per_s": round(len(ms) / result["wall_s"], 1),
            "images_per_s": round(answered * images / result["wall_s"], 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}
