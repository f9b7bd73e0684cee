"""pretrain.py under torchrun (two CPU processes, gloo), the shard each rank
trains on, the device each rank takes, and --amp."""
import contextlib
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

import ideal
import pretrain
from methods import IdealSynthesizer, distill
from models import Generator, build_model
from test_scripts import ROOT, tiny_mnist
from utils.blackbox import BlackBoxTeacher
from utils.distributed import Ranks, shard_indices
from utils.pool import SyntheticPool, to_uint8
from utils.run import UserError, amp_autocast, load_checkpoint, pick_device


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """One epoch of pretrain.py on tiny MNIST, run by torch's launcher as two
    CPU processes."""
    root = tmp_path_factory.mktemp("ddp")
    data_dir, save_dir = str(root / "data"), str(root / "runs")
    tiny_mnist(data_dir)
    flags = ["--dataset=mnist", "--net=lenet", "--epochs=1", "--batch_size=16", "--lr=0.05",
             f"--data_dir={data_dir}", f"--save_dir={save_dir}"]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           os.path.join(ROOT, "pretrain.py"), *flags],
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"data_dir": data_dir, "save_dir": save_dir, "flags": flags, "stdout": done.stdout}


def test_two_processes_write_what_one_would(two_processes):
    """Rank 0 alone writes: one run folder, one TensorBoard file, one teacher,
    and one line per epoch in the log."""
    save_dir = two_processes["save_dir"]
    written = sorted(os.path.relpath(os.path.join(d, f), save_dir) for d, _, files in os.walk(save_dir) for f in files)
    events = [f for f in written if "events.out.tfevents" in f]
    assert len(events) == 1
    assert sorted(set(written) - set(events)) == [
        "pretrain/mnist_lenet/args.json", "pretrain/mnist_lenet/last.pt", "pretrain/mnist_lenet/summary.json",
        "teachers/mnist_lenet.pt"]
    assert two_processes["stdout"].count("epoch 1: train loss") == 1
    assert "x 2 processes (global batch 32)" in two_processes["stdout"]
    summary = json.load(open(os.path.join(save_dir, "pretrain", "mnist_lenet", "summary.json")))
    assert summary["processes"] == 2 and summary["epochs"] == 1
    assert load_checkpoint(os.path.join(save_dir, "pretrain", "mnist_lenet", "last.pt"), "cpu")["processes"] == 2


def test_two_process_teacher_loads_into_ideal(two_processes):
    """The checkpoint has the single-process format: ideal.py distils from it."""
    summary = ideal.main(ideal.parse_args([
        "--dataset=mnist", "--net=lenet", "--nz=8", "--ngf=4", "--g_steps=2", "--batch_size=10", "--epochs=1",
        f"--data_dir={two_processes['data_dir']}", f"--save_dir={two_processes['save_dir']}"]))
    assert summary["queries"] == 10
    teacher = json.load(open(os.path.join(two_processes["save_dir"], "pretrain", "mnist_lenet", "summary.json")))
    assert summary["teacher_acc"] == teacher["test_acc"]


def test_resume_refuses_another_process_count(two_processes):
    """The global batch is processes x --batch_size: a plain resume of a
    two-process run is refused."""
    with pytest.raises(UserError, match=r"trained by 2 process\(es\), this start has 1.*--nproc_per_node=2"):
        pretrain.main(pretrain.parse_args([*two_processes["flags"], "--resume"]))


@pytest.mark.parametrize("n, world", [(200, 2), (203, 2), (203, 3), (5, 4)])
def test_shards_are_disjoint_equal_and_reshuffled(n, world):
    shards = [shard_indices(n, rank, world, epoch=3, seed=7) for rank in range(world)]
    seen = torch.cat(shards)
    assert all(len(s) == n // world for s in shards)  # every rank takes the same number of steps
    assert len(set(seen.tolist())) == len(seen) == n - n % world  # disjoint; only the remainder sits out
    assert torch.equal(shards[0], shard_indices(n, 0, world, epoch=3, seed=7))  # every rank draws alike
    assert not torch.equal(seen, torch.cat([shard_indices(n, r, world, epoch=4, seed=7) for r in range(world)]))
    assert not torch.equal(seen, torch.cat([shard_indices(n, r, world, epoch=3, seed=8) for r in range(world)]))


def test_epoch_order_is_the_rank_shard_and_unchanged_alone():
    """train() visits shard_indices under torchrun, and the old global-stream
    permutation in a plain run."""
    args = pretrain.parse_args(["--seed=5"])
    for rank in (0, 1):
        assert torch.equal(pretrain.epoch_order(args, Ranks(rank, 2), 50, "cpu", epoch=2),
                           shard_indices(50, rank, 2, epoch=2, seed=5))
    torch.manual_seed(0)
    alone = pretrain.epoch_order(args, Ranks(), 50, "cpu", epoch=2)
    torch.manual_seed(0)
    assert torch.equal(alone, torch.randperm(50))


def test_each_torchrun_process_takes_its_own_gpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="each process takes cuda:LOCAL_RANK"):
        pick_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == pick_device("cuda") == torch.device("cuda:1")


def test_amp_is_refused_on_the_cpu_before_any_work(tmp_path):
    for script, flags in ((pretrain, []), (ideal, ["--epochs=1"])):
        with pytest.raises(UserError, match=r"^--amp is bf16 autocast for CUDA, and this run is on cpu; drop --amp$"):
            script.main(script.parse_args([*flags, "--amp", "--device=cpu", f"--save_dir={tmp_path}"]))
    assert os.listdir(tmp_path) == []


def test_amp_autocast():
    """Off: nothing at all (default runs unchanged); on CUDA: bf16 autocast."""
    assert amp_autocast(torch.device("cpu"), False) is contextlib.nullcontext
    with warnings.catch_warnings():  # built, never entered: without a GPU torch warns that it would be off
        warnings.simplefilter("ignore")
        context = amp_autocast(torch.device("cuda", 0), True)()
    assert (context.device, context.fast_dtype) == ("cuda", torch.bfloat16)


def test_forward_passes_run_under_the_autocast_handed_in():
    """The generator, student and teacher forwards take the context passed
    down (CPU bf16 autocast stands in for CUDA's): their outputs are bf16,
    while the images kept, the answers and the loss stay float32."""
    dtypes = []
    student, net = build_model("lenet", 1, 28, 10), build_model("lenet", 1, 28, 10)
    generator = Generator(8, 4, 1, 28)
    for module in (student, net, generator):
        module.register_forward_hook(lambda m, i, out: dtypes.append((type(m).__name__, out.dtype)))
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    x, _ = IdealSynthesizer(generator, 8, 10, 10, g_steps=2, autocast=bf16).synthesize(student)
    probs = BlackBoxTeacher(net, mode="soft", autocast=bf16)(x)
    pool = SyntheticPool(10)
    pool.add(to_uint8(x), probs)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    loss, _ = distill(student, optimizer, pool, lambda v: v, 10, autocast=bf16)
    assert x.dtype == probs.dtype == torch.float32 and loss == loss
    assert {d for _, d in dtypes} == {torch.bfloat16}
    assert {name for name, _ in dtypes} == {type(student).__name__, type(generator).__name__}
    assert len(dtypes) == 2 * 2 + 1 + 1  # 2 generator steps (G and S), 1 teacher call, 1 distill step
