"""scripts/gpu_evidence.sh: its --smoke mode runs every step tiny on the CPU,
so the one GPU call it is written for cannot fail on a mistake a CPU finds."""
import json
import os
import shutil
import subprocess
import sys

import pretrain
from test_scripts import ROOT, tiny_mnist
from utils.run import load_checkpoint

SCRIPT = os.path.join(ROOT, "scripts", "gpu_evidence.sh")


def test_smoke_runs_every_step_and_writes_the_results(tmp_path):
    data_dir = tmp_path / "data"
    tiny_mnist(str(data_dir))
    shutil.copytree(data_dir / "MNIST", data_dir / "FashionMNIST")  # the same IDX format, under FMNIST's name
    for dataset in ("mnist", "fmnist"):
        pretrain.main(pretrain.parse_args([f"--dataset={dataset}", "--epochs=1", "--batch_size=32",
                                           f"--data_dir={data_dir}", f"--save_dir={tmp_path / 'sweep'}"]))
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "DATA_DIR": str(data_dir),
           "TEACHERS": str(tmp_path / "sweep" / "teachers"), "RESULTS": str(tmp_path / "results"),
           "SAVE_DIR": str(tmp_path / "runs")}
    done = subprocess.run(["bash", SCRIPT, "--smoke"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "results" / "gpu_evidence_smoke_cpu"
    summary = (out / "summary.md").read_text()
    assert "device: cpu" in summary
    assert "error: --amp is bf16 autocast for CUDA" in summary
    assert json.load(open(out / "speed_fp32.json"))["device"] == "cpu"
    runs = json.load(open(out / "compare" / "compare.json"))["runs"]
    assert sorted((r["dataset"], r["method"], r["queries"]) for r in runs) == [
        ("fmnist", "ideal_paper", 20), ("mnist", "ideal_paper", 20)]
    teacher = load_checkpoint(str(tmp_path / "sweep" / "teachers" / "mnist_lenet.pt"), "cpu")
    assert [r["teacher_acc"] for r in runs if r["dataset"] == "mnist"] == [teacher["test_acc"]]  # the sweep's


def test_without_cuda_the_full_mode_refuses_in_one_line(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(tmp_path)}
    done = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {sys.executable} sees no CUDA device; for the CPU dry run use --smoke"
    assert os.listdir(tmp_path) == []
