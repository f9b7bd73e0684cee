"""Are two runs the same run? Compares two run folders bit for bit: every
tensor of last.pt that both hold (student, optimizer, pool, synthesizer, ...),
and the accuracies and query count of summary.json. For checking that a
refactor left seeded results unchanged: run the same command at two commits,
then

    python benchmarks/same_run.py RUN_A RUN_B

Exits 0 when they are identical, 1 (and names what differs) otherwise.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils.run import load_checkpoint  # noqa: E402

SUMMARY_KEYS = ("final_acc", "best_acc", "queries", "samples", "epochs_run")


def tensors(obj, prefix=""):
    """{dotted path: tensor} of every tensor inside nested dicts and lists."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    found = {}
    for key, value in items:
        found.update(tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


def differences(run_a: str, run_b: str) -> list:
    a, b = (tensors(load_checkpoint(os.path.join(r, "last.pt"), "cpu")) for r in (run_a, run_b))
    shared = sorted(set(a) & set(b))
    diffs = [key for key in shared if a[key].shape != b[key].shape or not torch.equal(a[key], b[key])]
    summaries = []
    for run in (run_a, run_b):
        with open(os.path.join(run, "summary.json")) as f:
            summaries.append(json.load(f))
    diffs += [f"summary.{k}" for k in SUMMARY_KEYS if summaries[0].get(k) != summaries[1].get(k)]
    print(f"{len(shared)} tensors compared ({len(set(a) ^ set(b))} held by one run only), "
          f"summary {', '.join(f'{k}={summaries[0].get(k)}' for k in SUMMARY_KEYS)}")
    return diffs


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python benchmarks/same_run.py RUN_A RUN_B")
    found = differences(sys.argv[1], sys.argv[2])
    print("identical" if not found else f"differ in {len(found)}: {', '.join(found[:20])}")
    sys.exit(1 if found else 0)
