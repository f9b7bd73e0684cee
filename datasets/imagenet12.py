"""ImageNet-12: twelve ImageNet classes at 64x64, in our own .npz format.

Made once by `python -m datasets.build_imagenet12 --imagenet_dir PATH
--out_dir data/imagenet12` from an ImageNet folder; loaded here from
`data_dir/imagenet12/{train,test}.npz` (train from ImageNet's train split, test
from its 50-per-class validation split). Each file holds `images` (N, 64, 64, 3)
uint8, `labels` (N,) int64 and `classes` (the wnids, in label order).
"""
from pathlib import Path

import numpy as np

from datasets.common import DatasetError

# Imagenette's ten classes (fast.ai's easy ImageNet subset) plus two more
# familiar ones; label = position in this tuple.
IMAGENET12_CLASSES = (
    ("n01440764", "tench"),
    ("n02102040", "English springer"),
    ("n02979186", "cassette player"),
    ("n03000684", "chain saw"),
    ("n03028079", "church"),
    ("n03394916", "French horn"),
    ("n03417042", "garbage truck"),
    ("n03425413", "gas pump"),
    ("n03445777", "golf ball"),
    ("n03888605", "parachute"),
    ("n02099601", "golden retriever"),
    ("n02123045", "tabby cat"),
)
IMAGENET12_WNIDS = tuple(wnid for wnid, _ in IMAGENET12_CLASSES)
SPLIT_FILES = {True: "train.npz", False: "test.npz"}


def load_imagenet12(data_dir, train):
    """ImageNet-12 split: images (N, 3, 64, 64) uint8, labels (N,) int64."""
    out_dir = Path(data_dir) / "imagenet12"
    path = out_dir / SPLIT_FILES[train]
    if not path.is_file():
        raise DatasetError(f"missing {path}: build it with `python -m datasets.build_imagenet12 "
                           f"--imagenet_dir PATH --out_dir {out_dir}`")
    images, labels, classes = _read(path, out_dir)
    other = out_dir / SPLIT_FILES[not train]
    if other.is_file() and _read(other, out_dir, arrays=("classes",))[0].tolist() != classes.tolist():
        raise DatasetError(f"{out_dir}/train.npz and test.npz hold different classes (a build that stopped "
                           f"half way?): build both again with `python -m datasets.build_imagenet12 "
                           f"--imagenet_dir PATH --out_dir {out_dir}`")
    if images.ndim != 4:
        raise DatasetError(f"{path} holds images of shape {images.shape}, expected (N, 64, 64, 3)")
    return images.transpose(0, 3, 1, 2), labels


def _read(path, out_dir, arrays=("images", "labels", "classes")):
    """The named arrays of one split file; a damaged file is one line."""
    try:
        with np.load(path) as npz:
            return tuple(npz[name] for name in arrays)
    except Exception as err:  # BadZipFile, bad CRC, a missing array, an object array
        raise DatasetError(f"{path} is corrupt or incomplete ({type(err).__name__}: {err}); build it again "
                           f"with `python -m datasets.build_imagenet12 --imagenet_dir PATH --out_dir {out_dir}`"
                           ) from None
