"""Loaders for the files torchvision downloads for SVHN, CIFAR-10 and CIFAR-100.

Each returns images (N, 3, 32, 32) uint8 and labels (N,) int64, and raises a
one-line DatasetError naming the missing file and how to get it.
"""
import pickle
from pathlib import Path

import numpy as np
import scipy.io

from datasets.common import DatasetError

SVHN_FILES = {True: "train_32x32.mat", False: "test_32x32.mat"}
CIFAR10_FILES = {True: [f"data_batch_{i}" for i in range(1, 6)], False: ["test_batch"]}
CIFAR100_FILES = {True: ["train"], False: ["test"]}


def load_svhn(data_dir, train):
    """SVHN from `data_dir/svhn/{train,test}_32x32.mat` (MATLAB v5: X is
    (32, 32, 3, N) uint8, y is (N, 1) with 10 standing for the digit 0)."""
    path = _require(Path(data_dir) / "svhn" / SVHN_FILES[train],
                    f"torchvision.datasets.SVHN(root='{Path(data_dir) / 'svhn'}', "
                    "split='train' and 'test', download=True)")
    mat = scipy.io.loadmat(path)
    images = np.transpose(mat["X"], (3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    labels = mat["y"].reshape(-1).astype(np.int64) % 10  # SVHN's label 10 is digit 0
    return images, labels


def load_cifar10(data_dir, train):
    """CIFAR-10 from the python pickles in `data_dir/cifar-10-batches-py`."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    return _load_cifar(folder, CIFAR10_FILES[train], b"labels",
                       f"torchvision.datasets.CIFAR10(root='{data_dir}', download=True)")


def load_cifar100(data_dir, train):
    """CIFAR-100 (fine labels) from the pickles in `data_dir/cifar-100-python`."""
    folder = Path(data_dir) / "cifar-100-python"
    return _load_cifar(folder, CIFAR100_FILES[train], b"fine_labels",
                       f"torchvision.datasets.CIFAR100(root='{data_dir}', download=True)")


def _load_cifar(folder, names, label_key, how):
    """Concatenate CIFAR pickles: each a dict with b'data' (N, 3072) uint8,
    rows laid out channel by channel (CHW), and a list of labels."""
    images, labels = [], []
    for name in names:
        with open(_require(folder / name, how), "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # pickled by Python 2
        images.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _require(path, how):
    """`path` if it is a file, else a DatasetError saying how to make it."""
    if not path.is_file():
        raise DatasetError(f"missing {path}: download it on a machine with internet, "
                           f"e.g. {how}, and copy it there")
    return path
