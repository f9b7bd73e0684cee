"""utils/ (losses, black box, pool, augmentation, run bookkeeping, evaluation)
and the two IDEAL steps in ideal.py, on CPU with tiny tensors."""
import copy
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from methods import IdealSynthesizer, NoiseSynthesizer, RandomGeneratorSynthesizer, distill, distill_relabel
from models import Generator, build_model, init_generator_
from utils import run
from datasets import get_spec
from utils.augment import build_augment, random_crop, random_flip, random_jitter, reference_augment
from utils.blackbox import BlackBoxTeacher, QueryBudgetExceeded
from utils.evaluation import evaluate
from utils.losses import balanced_targets, distill_loss, generator_loss, info_loss
from utils.pool import SyntheticPool, to_float, to_uint8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches gain nothing from intra-op threads; on a shared machine the
    thread pool's spin-waits slow them down many times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_net(classes=5, size=8, net="lenet", seed=0):
    """A LeNet (BatchNorm inside) on 1 x size x size images."""
    torch.manual_seed(seed)
    return build_model(net, 1, size, classes)


# ---------------------------------------------------------------- losses

def test_info_loss_by_hand():
    rows = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    total = 0.0
    for row in rows:
        z = sum(math.exp(v) for v in row)
        for v in row:
            p = math.exp(v) / z
            total += p * math.log(p)
    expected = total / 6  # mean over all N x C = 2 x 3 entries
    assert info_loss(torch.tensor(rows)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_info_loss_of_uniform_logits(classes):
    logits = torch.full((4, classes), 3.7)
    assert info_loss(logits).item() == pytest.approx(-math.log(classes) / classes, rel=1e-6)


def hand_cross_entropy(rows, targets):
    return sum(math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(rows, targets)) / len(rows)


def test_generator_loss_is_ce_plus_lambda_info():
    rows = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
    targets = [2, 1]
    logits = torch.tensor(rows, requires_grad=True)
    total, ce, info = generator_loss(logits, torch.tensor(targets), lambda_info=5.0)
    assert ce.item() == pytest.approx(hand_cross_entropy(rows, targets), rel=1e-6)
    assert info.item() == pytest.approx(info_loss(torch.tensor(rows)).item(), rel=1e-6)
    assert total.item() == pytest.approx(ce.item() + 5.0 * info.item(), rel=1e-6)
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_distill_loss_hard_is_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert torch.allclose(distill_loss(logits, targets), F.cross_entropy(logits, targets))


def test_distill_loss_soft_one_hot_equals_hard():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.randint(0, 4, (6,))
    soft = F.one_hot(targets, 4).float()
    assert torch.allclose(distill_loss(logits, soft), distill_loss(logits, targets), atol=1e-6)


def test_distill_loss_soft_on_own_softmax_is_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    p = logits.softmax(1)
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.allclose(distill_loss(logits, p), entropy, atol=1e-6)


@pytest.mark.parametrize("n, classes", [(25, 10), (250, 100), (250, 10), (7, 10)])
def test_balanced_targets(n, classes):
    y = balanced_targets(n, classes)
    assert y.shape == (n,) and y.dtype == torch.int64
    assert y.tolist() == [i % classes for i in range(n)]
    counts = torch.bincount(y, minlength=classes)
    assert counts.max() - counts.min() <= 1


# ---------------------------------------------------------------- black box

@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_blackbox_answers_and_counts_every_image(mode):
    model = tiny_net(classes=5)
    reference = copy.deepcopy(model).eval()
    teacher = BlackBoxTeacher(model, mode=mode)
    torch.manual_seed(1)
    for n, total in [(3, 3), (5, 8), (1, 9), (4, 13)]:
        x = torch.rand(n, 1, 8, 8)
        answers = teacher(x)
        with torch.no_grad():
            expected = reference(x)
        if mode == "hard":
            assert answers.dtype == torch.int64 and answers.shape == (n,)
            assert torch.equal(answers, expected.argmax(1))
        else:
            assert answers.dtype == torch.float32 and answers.shape == (n, 5)
            assert torch.allclose(answers.sum(1), torch.ones(n), atol=1e-6)
            assert torch.allclose(answers, expected.softmax(1), atol=1e-6)
        assert teacher.queries == total


def test_blackbox_runs_the_model_in_eval_mode():
    model = tiny_net().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = BlackBoxTeacher(model, mode="soft")
    torch.manual_seed(1)
    teacher(torch.rand(4, 1, 8, 8))
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running stats (and batch count) untouched


def test_blackbox_records_no_graph():
    teacher = BlackBoxTeacher(tiny_net(), mode="soft")
    x = torch.rand(3, 1, 8, 8, requires_grad=True)
    out = teacher(x)
    assert not out.requires_grad and out.grad_fn is None


def test_blackbox_budget():
    teacher = BlackBoxTeacher(tiny_net(), budget=10)
    x = torch.rand(4, 1, 8, 8)
    teacher(x)
    teacher(x)
    assert teacher.queries == 8
    with pytest.raises(QueryBudgetExceeded):
        teacher(x)
    assert teacher.queries == 8
    assert teacher.remaining == 2
    assert teacher(x[:2]).shape == (2,)
    assert teacher.queries == 10 and teacher.remaining == 0
    with pytest.raises(QueryBudgetExceeded):
        teacher(x[:1])
    assert teacher.queries == 10


def test_blackbox_without_budget_is_unlimited():
    teacher = BlackBoxTeacher(tiny_net(), budget=0)
    assert teacher.remaining == math.inf
    teacher(torch.rand(3, 1, 8, 8))
    assert teacher.remaining == math.inf and teacher.queries == 3


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_blackbox_chunks_give_the_same_answers(mode):
    torch.manual_seed(1)
    x = torch.rand(10, 1, 8, 8)
    whole = BlackBoxTeacher(tiny_net(), mode=mode)(x)
    model = tiny_net()
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    chunked = BlackBoxTeacher(model, mode=mode, chunk=3)
    answers = chunked(x)
    assert seen == [3, 3, 3, 1]
    assert chunked.queries == 10
    if mode == "hard":
        assert torch.equal(answers, whole)
    else:
        assert torch.allclose(answers, whole, atol=1e-6)


def test_blackbox_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="probs"):
        BlackBoxTeacher(tiny_net(), mode="probs")


# ---------------------------------------------------------------- pool

def test_uint8_float_round_trip_is_exact():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() == 0 and f.max() == 1
    assert torch.equal(to_uint8(f), x)


def test_to_uint8_rounds_off_the_half_way_points_and_clamps():
    k = torch.arange(255, dtype=torch.float32)
    eps = 1e-3 / 255
    assert torch.equal(to_uint8((k + 0.5) / 255 - eps), k.to(torch.uint8))
    assert torch.equal(to_uint8((k + 0.5) / 255 + eps), (k + 1).to(torch.uint8))
    out = to_uint8(torch.tensor([-0.3, 1.7]))
    assert out.dtype == torch.uint8 and out.tolist() == [0, 255]
    assert to_uint8(torch.rand(3, requires_grad=True)).dtype == torch.uint8  # detaches


def test_to_uint8_rounds_half_up_like_a_png_writer():
    """torchvision.utils.save_image (what writes 8-bit PNGs) stores floor(255 x + 0.5):
    a value exactly half-way between two levels goes up. (k + 0.5) / 255 is exact
    enough in float32 that 255 x == k + 0.5 for every k."""
    k = torch.arange(255, dtype=torch.float32)
    x = (k + 0.5) / 255
    assert torch.equal(x * 255, k + 0.5)  # the boundary really is hit
    assert to_uint8(x).tolist() == [i + 1 for i in range(255)]


def numbered(first, n):
    """Images whose every pixel is their number, and answers equal to it."""
    ids = torch.arange(first, first + n)
    images = ids.to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return images, ids.clone()


def ids_of(images):
    return images[:, 0, 0, 0].long()


def test_pool_keeps_the_newest_samples_in_order():
    pool = SyntheticPool(capacity=5)
    assert len(pool) == 0
    pool.add(*numbered(0, 3))
    assert len(pool) == 3
    pool.add(*numbered(3, 3))
    assert len(pool) == 5
    assert ids_of(pool.images).tolist() == [1, 2, 3, 4, 5]
    assert torch.equal(pool.answers, ids_of(pool.images))
    pool.add(*numbered(6, 4))
    assert ids_of(pool.images).tolist() == [5, 6, 7, 8, 9]
    assert torch.equal(pool.answers, ids_of(pool.images))
    pool.add(*numbered(10, 7))  # one batch larger than the whole pool
    assert ids_of(pool.images).tolist() == [12, 13, 14, 15, 16]
    assert torch.equal(pool.answers, ids_of(pool.images))


def test_pool_keeps_soft_answers_aligned():
    pool = SyntheticPool(capacity=4)
    for first in (0, 3):
        images, ids = numbered(first, 3)
        pool.add(images, F.one_hot(ids, 6).float())
    assert ids_of(pool.images).tolist() == [2, 3, 4, 5]
    assert torch.equal(pool.answers.argmax(1), ids_of(pool.images))


def test_pool_batches_cover_every_sample_once_per_pass():
    pool = SyntheticPool(capacity=100)
    pool.add(*numbered(0, 6))
    pool.add(*numbered(6, 4))
    torch.manual_seed(0)
    orders = []
    for _ in range(3):
        sizes, seen = [], []
        for images, answers in pool.batches(4):
            assert images.dtype == torch.uint8
            assert torch.equal(answers, ids_of(images))  # answers travel with their images
            sizes.append(len(images))
            seen += ids_of(images).tolist()
        assert sizes == [4, 4, 2]
        assert sorted(seen) == list(range(10))
        orders.append(seen)
    assert len({tuple(o) for o in orders}) > 1  # shuffled anew each pass


def test_pool_state_dict_round_trip(tmp_path):
    pool = SyntheticPool(capacity=4)
    pool.add(*numbered(0, 6))
    path = str(tmp_path / "pool.pt")
    run.save_checkpoint({"pool": pool.state_dict()}, path)
    restored = SyntheticPool(capacity=1)
    restored.load_state_dict(run.load_checkpoint(path, "cpu")["pool"])
    assert restored.capacity == 4 and len(restored) == 4
    assert torch.equal(restored.images, pool.images)
    assert torch.equal(restored.answers, pool.answers)
    restored.add(*numbered(6, 1))  # the restored capacity is the one enforced
    assert ids_of(restored.images).tolist() == [3, 4, 5, 6]


# ---------------------------------------------------------------- augmentation

def shifted(image, dy, dx):
    """image (C, H, W) moved so that out[:, i, j] = image[:, i + dy, j + dx], zeros outside."""
    c, h, w = image.shape
    out = torch.zeros_like(image)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = image[:, i + dy, j + dx]
    return out


def find_shift(original, cropped, padding):
    """The (dy, dx) in [-padding, padding]^2 that explains `cropped`, or None."""
    for dy in range(-padding, padding + 1):
        for dx in range(-padding, padding + 1):
            if torch.equal(shifted(original, dy, dx), cropped):
                return dy, dx
    return None


@pytest.mark.parametrize("padding", [1, 2])
def test_random_crop_is_a_zero_filled_shift_of_each_sample(padding):
    torch.manual_seed(0)
    x = torch.rand(12, 2, 5, 6) + 0.1  # no zeros, so zero fill is recognisable
    out = random_crop(x, padding)
    assert out.shape == x.shape
    for i in range(len(x)):
        assert find_shift(x[i], out[i], padding) is not None, i


def test_random_crop_shifts_each_sample_independently():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 6, 6) + 0.1
    out = random_crop(x)  # the default 4 px padding
    assert out.shape == x.shape
    shifts = [find_shift(x[i], out[i], 4) for i in range(len(x))]
    assert None not in shifts
    assert len(set(shifts)) > 1
    dys, dxs = [dy for dy, _ in shifts], [dx for _, dx in shifts]
    assert min(dys) < 0 < max(dys) and min(dxs) < 0 < max(dxs)  # both ways, both axes


def test_random_crop_passes_gradients():
    x = torch.rand(3, 2, 6, 6, requires_grad=True)
    random_crop(x, 2).sum().backward()
    assert x.grad is not None
    assert x.grad.sum() > 0
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0}  # each pixel lands at most once


def test_random_flip_mirrors_some_samples_and_keeps_others():
    torch.manual_seed(0)
    x = torch.rand(200, 2, 3, 4)
    out = random_flip(x)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_build_augment():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6)
    assert torch.equal(build_augment("none")(x), x)
    flipped = build_augment("flip")(torch.rand(50, 1, 6, 6) + 0.1)
    assert (flipped > 0).all()  # flip alone never crops in zeros
    for kind in ("crop", "flip", "crop+flip", "crop+jitter", "crop+flip+jitter"):
        assert build_augment(kind)(x).shape == x.shape
    with pytest.raises(ValueError, match="rotate"):
        build_augment("rotate")


def test_random_jitter_by_hand():
    """Brightness b then contrast c: clamp(c * clamp(b x) + (1 - c) * mean), per image."""
    x = torch.tensor([[0.0, 0.5], [1.0, 0.25]]).reshape(1, 1, 2, 2).repeat(3, 1, 1, 1)
    torch.manual_seed(3)
    b = 1 + 0.4 * (2 * torch.rand(3) - 1)
    c = 1 + 0.4 * (2 * torch.rand(3) - 1)
    torch.manual_seed(3)
    out = random_jitter(x)
    for i in range(3):
        bright = (x[i] * b[i]).clamp(0, 1)
        assert torch.allclose(out[i], (c[i] * bright + (1 - c[i]) * bright.mean()).clamp(0, 1))
    assert not torch.equal(out[0], out[1])  # each image its own factors
    assert torch.equal(random_jitter(x, strength=0.0), x)


@pytest.mark.parametrize("dataset, crop, flip", [
    ("mnist", False, False), ("fmnist", False, False), ("svhn", True, False), ("cifar10", True, True),
    ("cifar100", True, True), ("tinyimagenet", True, True), ("imagenet12", True, True)])
def test_label_safe_augment(dataset, crop, flip):
    kind = get_spec(dataset).label_safe_augment
    build_augment(kind)  # a known kind
    assert ("crop" in kind) == crop
    assert ("flip" in kind) == flip


def test_reference_augment():
    assert reference_augment(32, 3) == "crop+flip"
    assert reference_augment(28, 1) == "flip"
    assert reference_augment(64, 3) == "flip"


# ---------------------------------------------------------------- run bookkeeping

def test_make_run_dir_never_reuses_a_folder(tmp_path):
    first = run.make_run_dir(str(tmp_path), "ideal", "exp", resume=False)
    second = run.make_run_dir(str(tmp_path), "ideal", "exp", resume=False)
    third = run.make_run_dir(str(tmp_path), "ideal", "exp", resume=False)
    assert first == os.path.join(str(tmp_path), "ideal", "exp")
    assert second == first + "-2" and third == first + "-3"
    assert all(os.path.isdir(p) for p in (first, second, third))


def test_make_run_dir_resume(tmp_path):
    with pytest.raises(run.UserError):
        run.make_run_dir(str(tmp_path), "ideal", "exp", resume=True)
    folder = run.make_run_dir(str(tmp_path), "ideal", "exp", resume=False)
    with pytest.raises(run.UserError):  # the folder exists but holds no last.pt
        run.make_run_dir(str(tmp_path), "ideal", "exp", resume=True)
    run.save_checkpoint({"epoch": 3}, os.path.join(folder, "last.pt"))
    assert run.make_run_dir(str(tmp_path), "ideal", "exp", resume=True) == folder


def test_resume_deletes_temporary_files_a_kill_left(tmp_path):
    folder = run.make_run_dir(str(tmp_path), "ideal", "exp", resume=False)
    run.save_checkpoint({"epoch": 3}, os.path.join(folder, "last.pt"))
    for name in (".tmp-last.pt-abc123", ".tmp-labelled.pt-x"):
        open(os.path.join(folder, name), "wb").write(b"half")
    assert run.make_run_dir(str(tmp_path), "ideal", "exp", resume=True) == folder
    assert os.listdir(folder) == ["last.pt"]


def test_atomic_write_syncs_before_the_rename(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("rename") or real_replace(a, b))
    run.save_json({"a": 1}, str(tmp_path / "x.json"))
    assert events == ["fsync", "rename"]


def test_save_checkpoint_round_trip(tmp_path):
    path = str(tmp_path / "sub" / "last.pt")
    run.save_checkpoint({"w": torch.arange(3), "epoch": 2}, path)
    ckpt = run.load_checkpoint(path, "cpu")
    assert ckpt["epoch"] == 2 and torch.equal(ckpt["w"], torch.arange(3))
    assert os.listdir(tmp_path / "sub") == ["last.pt"]
    with pytest.raises(run.UserError):
        run.load_checkpoint(str(tmp_path / "missing.pt"), "cpu")


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    run.save_checkpoint({"epoch": 1}, path)
    real_save = torch.save

    def crash_half_way(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", crash_half_way)
    with pytest.raises(KeyboardInterrupt):
        run.save_checkpoint({"epoch": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert run.load_checkpoint(path, "cpu") == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_save_json_writes_valid_json(tmp_path):
    obj = {"dataset": "mnist", "lr": 0.01, "phases": {"generate": 1.5}, "tags": [1, 2]}
    path = str(tmp_path / "args.json")
    run.save_json(obj, path)
    with open(path) as f:
        assert json.load(f) == obj
    run.save_json({"epoch": 2}, path)  # overwrites
    with open(path) as f:
        assert json.load(f) == {"epoch": 2}
    assert os.listdir(tmp_path) == ["args.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_pick_device_without_cuda():
    assert run.pick_device("auto") == torch.device("cpu")
    assert run.pick_device("cpu") == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(run.UserError):
            run.pick_device(name)


def test_rng_state_repeats_every_stream(tmp_path):
    state = run.rng_state()
    first = (torch.rand(4), random.random(), np.random.rand(2))
    # what a resume does: the state goes through a checkpoint first
    path = str(tmp_path / "rng.pt")
    run.save_checkpoint({"rng": state}, path)
    torch.rand(7), random.random(), np.random.rand(3)
    run.set_rng_state(run.load_checkpoint(path, "cpu")["rng"])
    second = (torch.rand(4), random.random(), np.random.rand(2))
    assert torch.equal(first[0], second[0])
    assert first[1] == second[1]
    assert np.array_equal(first[2], second[2])


def test_cuda_rng_state_is_restored_from_cpu_copies(monkeypatch):
    """A resume on a GPU: load_checkpoint maps the saved CUDA generator states
    to the GPU, but torch.cuda.set_rng_state_all takes CPU byte tensors only
    (it raised "RNG state must be a torch.ByteTensor"). A run saved with two
    GPUs and resumed on one restores the one it has."""
    saved = [torch.arange(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)]

    class MappedToGpu:  # what a tensor that load_checkpoint put on a GPU offers here
        def __init__(self, tensor):
            self.tensor = tensor

        def cpu(self):
            return self.tensor

    handed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", handed.extend)
    state = {**run.rng_state(), "cuda": [MappedToGpu(t) for t in saved]}
    run.set_rng_state(state)
    assert len(handed) == 1 and handed[0] is saved[0]
    assert handed[0].device.type == "cpu" and handed[0].dtype == torch.uint8


def test_seed_everything_repeats_every_stream():
    run.seed_everything(5)
    first = (torch.rand(3), random.random(), np.random.rand(2))
    run.seed_everything(5)
    second = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert np.array_equal(first[2], second[2])


# ---------------------------------------------------------------- evaluation

class PixelLogits(nn.Module):
    """Logits are the pixels: (N, 1, 1, C) in [0, 1] -> (N, C) = 10 * pixels."""

    def forward(self, x):
        return 10 * x.flatten(1)


def test_evaluate_exact_accuracy_and_cross_entropy():
    pixels = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 51, 0], [0, 102, 255]]
    labels = [0, 2, 2, 1, 2]  # right, wrong, right, wrong, right -> 60%
    images = torch.tensor(pixels, dtype=torch.uint8).view(5, 1, 1, 3)
    rows = [[10 * v / 255 for v in row] for row in pixels]
    expected_ce = hand_cross_entropy(rows, labels)
    for batch_size in (1, 2, 5, 1000):  # uneven last batch included
        loss, acc = evaluate(PixelLogits(), images, torch.tensor(labels), batch_size=batch_size)
        assert acc == pytest.approx(60.0)
        assert loss == pytest.approx(expected_ce, rel=1e-5)


def test_evaluate_leaves_a_batchnorm_model_untouched():
    model = tiny_net(size=8, classes=5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 5, (6,))
    loss, acc = evaluate(model, images, labels, batch_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():  # what eval mode gives on the whole batch at once
        logits = copy.deepcopy(model).eval()(to_float(images))
    assert acc == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


# ---------------------------------------------------------------- methods: synthesizers, distill

def ideal_synthesizer(generator):
    return IdealSynthesizer(generator, nz=8, batch_size=12, classes=10, g_steps=3, lr_g=1e-3, lambda_info=5.0)


@pytest.mark.parametrize("training", [True, False])
def test_synthesize_trains_only_the_generator(training):
    student = tiny_net(classes=10, size=28).train(training)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    generator = Generator(nz=8, ngf=4, channels=1, size=28)
    torch.manual_seed(0)
    x, losses = ideal_synthesizer(generator).synthesize(student)
    loss, ce, info = losses["loss"], losses["ce"], losses["info"]
    assert x.shape == (12, 1, 28, 28)
    assert x.min() >= 0 and x.max() <= 1
    assert not x.requires_grad
    assert loss == pytest.approx(ce + 5.0 * info, rel=1e-5)
    assert -math.log(10) / 10 - 1e-6 <= info <= 0
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and BN statistics alike
    assert all(p.requires_grad for p in student.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert student.training == training


def test_synthesize_moves_the_generator():
    student = tiny_net(classes=10, size=28)
    generator = Generator(nz=8, ngf=4, channels=1, size=28)
    torch.manual_seed(0)
    ideal_synthesizer(generator).synthesize(student)
    trained = [p.detach().clone() for p in generator.parameters()]
    # replaying the same draws without the Adam steps gives the initial weights
    torch.manual_seed(0)
    init = [p.detach().clone() for p in init_generator_(generator).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(trained, init))


def random_pool(n=50, classes=5, size=8, seed=0):
    torch.manual_seed(seed)
    pool = SyntheticPool(capacity=1000)
    pool.add(torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8), torch.randint(0, classes, (n,)))
    return pool


def test_distill_trains_the_student():
    student = tiny_net(classes=5)
    before = [p.detach().clone() for p in student.parameters()]
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9)
    loss, agreement = distill(student, optimizer, random_pool(), build_augment("crop"), 16)
    assert math.isfinite(loss) and loss > 0
    assert student.training
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, student.parameters()))


def frozen_mlp():
    """An MLP (no BN, no dropout: train and eval agree) and an optimizer that never moves it."""
    student = tiny_net(classes=5, net="mlp")
    return student, torch.optim.SGD(student.parameters(), lr=0.0)


@pytest.mark.parametrize("soft", [False, True])
def test_distill_reports_the_pool_mean_loss_and_agreement(soft):
    student, optimizer = frozen_mlp()
    pool = random_pool()
    with torch.no_grad():
        logits = student(to_float(pool.images))
    predicted = logits.argmax(1)
    wrong = (predicted + 1) % 5
    for answers, agreement in [(predicted, 100.0), (wrong, 0.0)]:
        pool.answers = F.one_hot(answers, 5).float() if soft else answers
        loss, agree = distill(student, optimizer, pool, build_augment("none"), 16)
        assert agree == pytest.approx(agreement)
        # batches of 16, 16, 16, 2: the mean is per sample, not per batch
        assert loss == pytest.approx(F.cross_entropy(logits, answers).item(), rel=1e-5)


def test_distill_relabel_asks_once_per_sample_per_pass():
    student, optimizer = frozen_mlp()
    teacher = BlackBoxTeacher(copy.deepcopy(student))
    pool = random_pool()
    pool.answers.fill_(-1)  # stored answers must not be read in relabel mode
    for passes in (1, 2):
        _, agreement = distill_relabel(student, optimizer, pool, build_augment("crop"), 16, teacher)
        assert teacher.queries == 50 * passes
        assert agreement == pytest.approx(100.0)  # the teacher is the student's twin


def test_distill_relabel_stops_at_the_budget():
    student = tiny_net(classes=5)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    teacher = BlackBoxTeacher(tiny_net(classes=5, seed=1), budget=30)
    pool = random_pool()
    loss, agreement = distill_relabel(student, optimizer, pool, build_augment("none"), 16, teacher)
    assert teacher.queries == 30 and teacher.remaining == 0
    assert math.isfinite(loss)
    before = [p.detach().clone() for p in student.parameters()]
    distill_relabel(student, optimizer, pool, build_augment("none"), 16, teacher)
    assert teacher.queries == 30
    assert all(torch.equal(a, p.detach()) for a, p in zip(before, student.parameters()))


def test_distill_relabel_reports_on_the_answered_samples_only():
    """30 of 50 answered by the student's twin: 100% agreement, not 60%."""
    student, optimizer = frozen_mlp()
    teacher = BlackBoxTeacher(copy.deepcopy(student), budget=30)
    _, agreement = distill_relabel(student, optimizer, random_pool(), build_augment("none"), 16, teacher)
    assert teacher.queries == 30 and agreement == pytest.approx(100.0)


def test_synthesize_refuses_a_loss_that_is_never_finite():
    """lambda_info=nan makes every step's loss NaN: one clear error, not a crash on None."""
    student = tiny_net(classes=10, size=28)
    synthesizer = IdealSynthesizer(Generator(nz=8, ngf=4, channels=1, size=28), nz=8, batch_size=12,
                                   classes=10, g_steps=2, lambda_info=float("nan"))
    with pytest.raises(run.UserError, match="not finite at any of 2 steps"):
        synthesizer.synthesize(student)


@pytest.mark.parametrize("make", ["noise", "random_generator"])
def test_baseline_synthesizers_make_a_batch_in_range(make):
    torch.manual_seed(0)
    synthesizer = (NoiseSynthesizer(12, (1, 28, 28), "cpu") if make == "noise"
                   else RandomGeneratorSynthesizer(Generator(nz=8, ngf=4, channels=1, size=28), 8, 12))
    x, losses = synthesizer.synthesize(None)  # no student needed: nothing is trained
    assert x.shape == (12, 1, 28, 28) and losses is None
    assert x.min() >= 0 and x.max() <= 1 and not x.requires_grad
    assert x.std() > 0.01  # not one flat grey image
    again, _ = synthesizer.synthesize(None)
    assert not torch.equal(x, again)  # a fresh draw every call


def test_unlabelled_pool_keeps_no_answers():
    pool = SyntheticPool(capacity=20, labelled=False)
    pool.add(torch.zeros(15, 1, 4, 4, dtype=torch.uint8))
    pool.add(torch.ones(15, 1, 4, 4, dtype=torch.uint8))
    assert len(pool) == 20 and pool.answers is None
    assert all(answers is None for _, answers in pool.batches(8))
    with pytest.raises(ValueError):
        pool.add(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, dtype=torch.long))


class FirstPixels(torch.nn.Module):
    """A 'student' whose logits are the first `classes` pixels: entropy by hand."""

    def __init__(self, classes):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return x.flatten(1)[:, :self.classes]


def test_least_sure_takes_the_most_uncertain_of_each_target():
    from methods.synthesizers import least_sure
    logits = torch.tensor([[5.0, 0], [0, 0], [0.1, 0], [0, 4], [3, 0], [1, 0]])  # targets 0,1,0,1,0,1
    x = torch.zeros(6, 1, 2, 2)
    x.view(6, -1)[:, :2] = logits
    targets = balanced_targets(6, 2)
    # target 0: samples 0, 2, 4 -> sample 2 is the least sure; target 1: 1, 3, 5 -> sample 1 (uniform)
    assert least_sure(FirstPixels(2), x, targets, keep=2, classes=2).tolist() == [1, 2]
    assert least_sure(FirstPixels(2), x, targets, keep=4, classes=2).tolist() == [1, 2, 4, 5]


def test_candidates_train_on_k_batches_and_return_one():
    torch.manual_seed(0)
    generator = Generator(nz=8, ngf=4, channels=1, size=28)
    seen = []
    generator.register_forward_hook(lambda module, inputs, output: seen.append(len(output)))
    synthesizer = IdealSynthesizer(generator, nz=8, batch_size=12, classes=10, g_steps=2, candidates=3)
    x, losses = synthesizer.synthesize(tiny_net(classes=10, size=28))
    assert x.shape == (12, 1, 28, 28) and seen == [36, 36]
    assert math.isfinite(losses["loss"])


def test_warm_generator_carries_over_and_fresh_does_not():
    student = tiny_net(classes=10, size=28)
    for warm in (False, True):
        torch.manual_seed(0)
        synthesizer = IdealSynthesizer(Generator(nz=8, ngf=4, channels=1, size=28), nz=8, batch_size=12,
                                       classes=10, g_steps=2, warm=warm)
        synthesizer.synthesize(student)
        after_first = [p.detach().clone() for p in synthesizer.generator.parameters()]
        state = synthesizer.state_dict()
        # the second batch starts from where the first ended (warm) or from a new draw (fresh)
        starts = []
        real_step = torch.optim.Adam.step
        torch.optim.Adam.step = lambda self, *a, **k: starts.append(
            [p.detach().clone() for p in synthesizer.generator.parameters()]) or real_step(self, *a, **k)
        try:
            synthesizer.synthesize(student)
        finally:
            torch.optim.Adam.step = real_step
        same = all(torch.equal(a, b) for a, b in zip(after_first, starts[0]))
        assert same == warm
        assert (state is None) == (not warm)
    restored = IdealSynthesizer(Generator(nz=8, ngf=4, channels=1, size=28), nz=8, batch_size=12,
                                classes=10, g_steps=2, warm=True)
    restored.load_state_dict(state)
    for key, value in state["generator"].items():
        assert torch.equal(restored.generator.state_dict()[key], value), key
    assert restored.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()


def test_per_class_recall_by_hand():
    """A 'model' that names class 0 for every image: 100% recall on 0, 0% on the
    rest, NaN for a class with no image."""
    from utils.evaluation import per_class_recall

    class AlwaysZero(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[1.0, 0.0, 0.0]]).expand(len(x), 3)

    images = torch.zeros(5, 1, 2, 2, dtype=torch.uint8)
    recall = per_class_recall(AlwaysZero(), images, torch.tensor([0, 0, 1, 1, 1]), classes=3, batch_size=2)
    assert recall[:2].tolist() == [100.0, 0.0] and torch.isnan(recall[2])


def test_held_out_images_cover_every_class_of_a_class_sorted_training_split(monkeypatch):
    """tinyimagenet's and imagenet12's training images are stored class by class:
    their held-out images are a fixed random draw, not the tail (a few classes);
    MNIST keeps the tail, as every reported held-out figure used."""
    import datasets.registry as registry
    labels = torch.arange(200).repeat_interleave(500)  # 200 classes, sorted, as tinyimagenet's files
    monkeypatch.setattr(registry, "load_split", lambda name, data_dir, train: (labels.clone(), labels.clone()))
    _, held = registry.load_eval_split("tinyimagenet", split="val")
    assert len(held) == 10_000 and len(held.unique()) == 200
    assert torch.equal(held, registry.load_eval_split("tinyimagenet", split="val")[1])  # the same draw each time
    assert torch.equal(registry.load_eval_split("mnist", split="val")[1], labels[-10_000:])
