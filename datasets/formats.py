"""SVHN, CIFAR-10 and CIFAR-100, read by torchvision's own classes
(download=False) from the files torchvision downloads.

Each loader returns images (N, 3, 32, 32) uint8 and labels (N,) int64. A
missing file gives a one-line DatasetError naming it and how to get it; a file
torchvision refuses (its md5 check, or one it cannot parse) gives one too.
"""
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100, SVHN

from datasets.common import DatasetError, read_with

SVHN_FILES = {True: "train_32x32.mat", False: "test_32x32.mat"}
# torchvision checks every file of both splits, and the meta file, before it reads either split
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
CIFAR100_FILES = ["train", "test", "meta"]


def load_svhn(data_dir, train):
    """SVHN from `data_dir/svhn/{train,test}_32x32.mat`; torchvision maps the
    label 10 of the digit 0 to 0."""
    folder = Path(data_dir) / "svhn"
    _require(folder, [SVHN_FILES[train]],
             f"torchvision.datasets.SVHN(root='{folder}', split='train' and 'test', download=True)")
    svhn = read_with(SVHN, folder, split="train" if train else "test")
    return svhn.data, svhn.labels.astype(np.int64)


def load_cifar10(data_dir, train):
    """CIFAR-10 from the python pickles in `data_dir/cifar-10-batches-py`."""
    _require(Path(data_dir) / "cifar-10-batches-py", CIFAR10_FILES,
             f"torchvision.datasets.CIFAR10(root='{data_dir}', download=True)")
    return _images_and_labels(read_with(CIFAR10, data_dir, where=Path(data_dir) / "cifar-10-batches-py", train=train))


def load_cifar100(data_dir, train):
    """CIFAR-100 (its 100 fine labels) from the pickles in `data_dir/cifar-100-python`."""
    _require(Path(data_dir) / "cifar-100-python", CIFAR100_FILES,
             f"torchvision.datasets.CIFAR100(root='{data_dir}', download=True)")
    return _images_and_labels(read_with(CIFAR100, data_dir, where=Path(data_dir) / "cifar-100-python", train=train))


def _images_and_labels(cifar):
    """torchvision's CIFAR keeps images (N, 32, 32, 3) and a list of labels."""
    return cifar.data.transpose(0, 3, 1, 2), np.asarray(cifar.targets, np.int64)


def _require(folder, names, how):
    """A DatasetError naming the first of `names` missing from `folder`, and how to get it."""
    for name in names:
        if not (folder / name).is_file():
            raise DatasetError(f"missing {folder / name}: download it on a machine with internet, "
                               f"e.g. {how}, and copy it there")
