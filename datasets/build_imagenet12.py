"""Build ImageNet-12 (12 classes, 64x64) from an ImageNet folder.

    python -m datasets.build_imagenet12 --imagenet_dir PATH --out_dir data/imagenet12

reads PATH/train/<wnid>/*.JPEG and PATH/val/<wnid>/*.JPEG (the validation
images must already be sorted into one folder per class) and writes
OUT_DIR/train.npz and OUT_DIR/test.npz in the format datasets/imagenet12.py
reads. Each image: shorter side resized to 64 (PIL bilinear, antialiased when
shrinking), then the centre 64x64 crop.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.common import DatasetError, atomic_open
from datasets.imagenet12 import IMAGENET12_CLASSES, IMAGENET12_WNIDS, SPLIT_FILES

SIZE = 64
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# ImageNet folder -> our split: ImageNet's labelled validation set is our test set
SOURCE_SPLITS = {True: "train", False: "val"}


def parse_args(argv=None):
    """Command-line flags; `argv` None means sys.argv."""
    names = ", ".join(f"{wnid} {name}" for wnid, name in IMAGENET12_CLASSES)
    parser = argparse.ArgumentParser(prog="python -m datasets.build_imagenet12",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--imagenet_dir", type=Path, required=True,
                        help="ImageNet root holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
                             "(val already sorted into one folder per class)")
    parser.add_argument("--out_dir", type=Path, default=Path("data/imagenet12"),
                        help="where train.npz and test.npz are written")
    parser.add_argument("--classes", default=",".join(IMAGENET12_WNIDS),
                        help=f"comma-separated wnids, label = position (default: {names})")
    return parser.parse_args(argv)


def parse_classes(text):
    """'n1,n2,...' -> tuple of exactly 12 distinct wnids."""
    wnids = tuple(w.strip() for w in text.split(",") if w.strip())
    if len(wnids) != len(IMAGENET12_WNIDS) or len(set(wnids)) != len(wnids):
        raise DatasetError(f"--classes needs {len(IMAGENET12_WNIDS)} distinct wnids, "
                           f"got {len(wnids)} ({len(set(wnids))} distinct)")
    return wnids


def class_files(split_dir, wnids):
    """Per class, the sorted image files in `split_dir/<wnid>/`."""
    missing = [w for w in wnids if not (split_dir / w).is_dir()]
    if missing:
        raise DatasetError(f"missing class folders in {split_dir}: {', '.join(missing)} "
                           "(expected <split>/<wnid>/*.JPEG; val must be sorted into class folders)")
    files = [sorted(p for p in (split_dir / w).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
             for w in wnids]
    empty = [w for w, found in zip(wnids, files) if not found]
    if empty:
        raise DatasetError(f"no images in {split_dir} for: {', '.join(empty)}")
    return files


def resize_center_crop(path, size=SIZE):
    """Load one image as RGB, shorter side -> `size`, centre crop: (size, size, 3) uint8."""
    with Image.open(path) as image:
        image.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale, much faster
        image = image.convert("RGB")
    scale = size / min(image.size)
    width, height = (max(size, round(side * scale)) for side in image.size)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def build_split(split_dir, wnids):
    """images (N, 64, 64, 3) uint8 and labels (N,) int64 for one ImageNet split."""
    files = class_files(split_dir, wnids)
    labels = np.concatenate([np.full(len(f), label, np.int64) for label, f in enumerate(files)])
    images = np.stack([resize_center_crop(path) for per_class in files for path in per_class])
    return images, labels


def main(argv=None):
    """Build both splits, then write them atomically to OUT_DIR/{train,test}.npz:
    a build that fails or is stopped on one split replaces neither file."""
    args = parse_args(argv)
    wnids = parse_classes(args.classes)
    built = {train: build_split(args.imagenet_dir / source, wnids) for train, source in SOURCE_SPLITS.items()}
    for train, source in SOURCE_SPLITS.items():
        images, labels = built[train]
        path = args.out_dir / SPLIT_FILES[train]
        with atomic_open(path) as f:
            np.savez(f, images=images, labels=labels, classes=np.array(wnids))
        print(f"{source}: {len(images)} images of {len(wnids)} classes -> {path}")


if __name__ == "__main__":
    try:
        main()
    except DatasetError as error:
        sys.exit(f"build_imagenet12: {error}")
