"""The IDX format of MNIST and Fashion-MNIST (torchvision's `raw/` layout).

An IDX file is a big-endian header (two zero bytes, a type byte, the number of
dimensions, then one uint32 per dimension) followed by the raw values. Only the
unsigned-byte type (0x08) occurs in (Fashion-)MNIST.
"""
import gzip
import struct
from pathlib import Path

import numpy as np

from datasets.common import DatasetError, atomic_open

UBYTE = 0x08
# split -> (images file, labels file); each may also be stored as NAME.gz
IDX_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_NAMES = IDX_FILES[True] + IDX_FILES[False]


def find_idx(folder, name):
    """Path of `folder/name` or `folder/name.gz`, whichever exists, else None."""
    for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def has_idx_files(folder):
    """True if all four (Fashion-)MNIST IDX files are in `folder`."""
    return all(find_idx(folder, name) is not None for name in IDX_NAMES)


def read_idx(path):
    """Read an unsigned-byte IDX file (optionally gzip'd) into a uint8 array
    of the shape stored in its header."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())  # bytearray: writable, so torch can share it
    zeros, dtype, ndim = struct.unpack_from(">HBB", data)
    if zeros != 0 or dtype != UBYTE:
        raise DatasetError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack_from(f">{ndim}I", data, 4)
    values = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if values.size != np.prod(shape):
        raise DatasetError(f"{path} is truncated: header says {shape}, "
                           f"found {values.size} values; delete it and fetch it again")
    return values.reshape(shape)


def write_idx(path, array):
    """Write a uint8 array as an uncompressed IDX file, atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_open(path) as f:
        f.write(header)
        f.write(array.tobytes())


def read_idx_split(folder, train):
    """One split from `folder`: images (N, 1, H, W) uint8, labels (N,) int64."""
    images_name, labels_name = IDX_FILES[train]
    images = read_idx(find_idx(folder, images_name))
    labels = read_idx(find_idx(folder, labels_name))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise DatasetError(f"{folder}: {images_name} has shape {images.shape} "
                           f"but {labels_name} has shape {labels.shape}")
    return images[:, None], labels.astype(np.int64)
