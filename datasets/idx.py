"""The IDX files of MNIST and Fashion-MNIST (torchvision's `raw/` layout),
read by torchvision's own MNIST and FashionMNIST classes.

torchvision reads only the uncompressed files, so gzip'd ones (Debian's
Fashion-MNIST package, a manual download) are unpacked beside them once. An
IDX file is a big-endian header (two zero bytes, a type byte, the number of
dimensions, then one uint32 per dimension) followed by the raw values; only
the unsigned-byte type (0x08) occurs in (Fashion-)MNIST.
"""
import gzip
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from datasets.common import DatasetError, atomic_open, read_with

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
    """True if all four (Fashion-)MNIST IDX files are in `folder`, gzip'd or not."""
    return all(find_idx(folder, name) is not None for name in IDX_NAMES)


def unpack_idx(source, raw_dir):
    """Give `raw_dir` the four uncompressed IDX files torchvision reads, from
    `source` (the same folder or another), unpacking .gz files as needed."""
    for name in IDX_NAMES:
        target = Path(raw_dir) / name
        if target.is_file():
            continue
        path = find_idx(source, name)
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rb") as src, atomic_open(target) as dst:
                shutil.copyfileobj(src, dst)
        except (OSError, EOFError, zlib.error) as err:  # gzip's bad header, bad CRC, cut-off stream
            raise DatasetError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                               "delete it and fetch it again") from None


def read_idx_split(dataset_class, data_dir, train):
    """One split through torchvision's MNIST or FashionMNIST reader, from
    data_dir/<class name>/raw: images (N, 1, H, W) uint8, labels (N,) int64."""
    mnist = read_with(dataset_class, data_dir, train=train)
    return mnist.data.numpy()[:, None], mnist.targets.numpy().astype(np.int64)


def write_idx(path, array):
    """Write a uint8 array as an uncompressed IDX file, atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_open(path) as f:
        f.write(header)
        f.write(array.tobytes())
