"""The IDX files of MNIST and Fashion-MNIST (torchvision's `raw/` layout),
read by torchvision's own MNIST and FashionMNIST classes.

torchvision reads only the uncompressed files, so gzip'd ones (Debian's
Fashion-MNIST package, a manual download) are unpacked beside them once. An
IDX file is a big-endian header (two zero bytes, a type byte, the number of
dimensions, then one uint32 per dimension) followed by the raw values; only
the unsigned-byte type (0x08) occurs in (Fashion-)MNIST.
"""
import gzip
import hashlib
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
# (size, SHA-256) of the real uncompressed files (MNIST's match the md5 sums of the original files).
# torchvision reads any file whose header matches its size, so a file of a real file's size must be
# that real file: a same-size corruption, or train and t10k swapped, is refused. Tiny test files pass.
REAL_IDX = {
    "MNIST": {
        "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": (47040016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": (60008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": (7840016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": (10008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}


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
                while chunk := _read_chunk(src, path):
                    dst.write(chunk)
        except OSError as err:  # writing failed (disk full, read-only folder): the source is not to blame
            raise DatasetError(f"cannot unpack {path} into {target} ({type(err).__name__}: {err}); "
                               "free space or make the folder writable and run again") from None


def _read_chunk(src, path):
    """Next MiB of `src`; a read error means the file is damaged."""
    try:
        return src.read(1 << 20)
    except (OSError, EOFError, zlib.error) as err:  # gzip's bad header, bad CRC, cut-off stream
        raise DatasetError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                           "delete it and fetch it again") from None


def read_idx_split(dataset_class, data_dir, train):
    """One split through torchvision's MNIST or FashionMNIST reader, from
    data_dir/<class name>/raw: images (N, 1, H, W) uint8, labels (N,) int64."""
    raw_dir = Path(data_dir) / dataset_class.__name__ / "raw"
    real = REAL_IDX.get(dataset_class.__name__, {})
    sizes = {size for size, _ in real.values()}
    for name in IDX_FILES[train]:
        path = raw_dir / name
        if path.is_file() and path.stat().st_size in sizes:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if real[name][1] != digest:
                raise DatasetError(f"{path} is not {dataset_class.__name__}'s {name} (SHA-256 {digest[:16]}...): "
                                   "it is corrupt or another split's file; delete it and fetch it again")
    mnist = read_with(dataset_class, data_dir, where=f"{raw_dir} ({', '.join(IDX_FILES[train])})", train=train)
    return mnist.data.numpy()[:, None], mnist.targets.numpy().astype(np.int64)


def write_idx(path, array):
    """Write a uint8 array as an uncompressed IDX file, atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with atomic_open(path) as f:
        f.write(header)
        f.write(array.tobytes())
