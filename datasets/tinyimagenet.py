"""Tiny-ImageNet-200 from its standard folder layout.

    data_dir/tiny-imagenet-200/wnids.txt                      200 class ids
    data_dir/tiny-imagenet-200/train/<wnid>/images/*.JPEG     500 per class
    data_dir/tiny-imagenet-200/val/images/*.JPEG              10,000 images
    data_dir/tiny-imagenet-200/val/val_annotations.txt        file<TAB>wnid<TAB>bbox

Class index = position of the wnid in sorted(wnids), the order torchvision's
ImageFolder gives `train/`. The test split is `val/` (the real test set has no
labels). The JPEGs are decoded once and cached beside them as
`cache_{train,val}.npz`; delete those to decode again.
"""
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.common import DatasetError, atomic_open

FOLDER = "tiny-imagenet-200"
SIZE = 64
JPEG_SUFFIXES = (".jpeg", ".jpg")


def load_tinyimagenet(data_dir, train):
    """Tiny-ImageNet split: images (N, 3, 64, 64) uint8, labels (N,) int64."""
    root = Path(data_dir) / FOLDER
    wnids = read_wnids(root)
    cache = root / f"cache_{'train' if train else 'val'}.npz"
    if cache.is_file():
        try:
            with np.load(cache) as arrays:
                # else made from another wnids.txt (other labels), or, before that was checked, from a cut folder
                if arrays["wnids"].tolist() == wnids and not (train and uneven(arrays["labels"], len(wnids))):
                    return arrays["images"], arrays["labels"]
        except Exception as err:  # BadZipFile, bad CRC, a missing array: decode again below
            print(f"tinyimagenet: {cache} is damaged ({type(err).__name__}: {err})", flush=True)
    files, labels = (train_files if train else val_files)(root, wnids)
    print(f"tinyimagenet: decoding {len(files)} JPEGs once, caching them in {cache}", flush=True)
    images = decode_jpegs(files)
    with atomic_open(cache) as f:
        np.savez(f, images=images, labels=labels, wnids=np.array(wnids))
    return images, labels


def read_wnids(root):
    """Sorted class ids from `root/wnids.txt`."""
    path = root / "wnids.txt"
    if not path.is_file():
        raise DatasetError(f"missing {path}: unzip tiny-imagenet-200.zip "
                           f"(http://cs231n.stanford.edu/tiny-imagenet-200.zip) into {root.parent}")
    wnids = sorted(line.strip() for line in path.read_text().splitlines() if line.strip())
    train = root / "train"
    folders = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else wnids
    if len(set(wnids)) != len(wnids) or wnids != folders:  # a cut or edited wnids.txt shifts every label
        raise DatasetError(f"{path} lists {len(wnids)} wnids ({len(set(wnids))} distinct) but {train} "
                           f"has {len(folders)} class folders, not the same: the tiny-imagenet-200 folder is "
                           "incomplete; unzip it again")
    return wnids


def train_files(root, wnids):
    """All `train/<wnid>/images/*.JPEG` files (sorted) and their labels (N,) int64."""
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        found = sorted(p for p in folder.glob("*") if p.suffix.lower() in JPEG_SUFFIXES)
        if not found:
            raise DatasetError(f"no JPEGs in {folder}: the tiny-imagenet-200 folder is incomplete")
        files += found
        labels += [label] * len(found)
    if uneven(labels, len(wnids)):  # the real set holds 500 per class; an unzip cut short leaves one class light
        counts = np.bincount(labels, minlength=len(wnids))
        light = wnids[int(counts.argmin())]
        raise DatasetError(f"{root / 'train' / light / 'images'} holds {counts.min()} JPEGs where the other classes "
                           f"hold up to {counts.max()}: the tiny-imagenet-200 folder is incomplete; unzip it again")
    return files, np.array(labels, np.int64)


def uneven(labels, classes: int) -> bool:
    """True if the classes do not all hold as many images."""
    counts = np.bincount(np.asarray(labels), minlength=classes)
    return counts.min() != counts.max()


def val_files(root, wnids):
    """The `val/images` files named in `val/val_annotations.txt`, sorted by
    name, and their labels (N,) int64."""
    path = root / "val" / "val_annotations.txt"
    if not path.is_file():
        raise DatasetError(f"missing {path}: the tiny-imagenet-200 folder is incomplete")
    label_of = {wnid: label for label, wnid in enumerate(wnids)}
    rows = sorted(line.split("\t")[:2] for line in path.read_text().splitlines() if line.strip())
    unknown = {wnid for _, wnid in rows} - label_of.keys()
    if unknown:
        raise DatasetError(f"{path} names wnids absent from wnids.txt: {sorted(unknown)[:5]}")
    on_disk = sorted(p.name for p in (root / "val" / "images").glob("*") if p.suffix.lower() in JPEG_SUFFIXES)
    if [name for name, _ in rows] != on_disk:  # a cut annotations file, or images missing
        raise DatasetError(f"{path} names {len(rows)} images but {root / 'val' / 'images'} holds {len(on_disk)} "
                           "JPEGs, not the same: the tiny-imagenet-200 folder is incomplete; unzip it again")
    files = [root / "val" / "images" / name for name, _ in rows]
    return files, np.array([label_of[wnid] for _, wnid in rows], np.int64)


def decode_jpegs(files):
    """Decode 64x64 images (grey ones converted to RGB) into (N, 3, 64, 64) uint8."""
    images = np.empty((len(files), 3, SIZE, SIZE), np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                if image.size != (SIZE, SIZE):
                    raise DatasetError(f"{path} is {image.size}, expected {SIZE}x{SIZE}")
                images[i] = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
        except OSError as err:  # PIL's UnidentifiedImageError and truncated-file errors are OSErrors
            raise DatasetError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                               "unzip tiny-imagenet-200 again") from None
    return images
