"""Which augmentations keep the teacher's answer? The check behind
`--distill_aug auto` (datasets/registry.py: flip_safe, shift_safe).

    python benchmarks/label_safety.py --dataset=fmnist --net=lenet
    python benchmarks/label_safety.py --dataset=fmnist --pool=runs/ideal/RUN/last.pt

A cached label was asked for the un-augmented image, so it stays true only
where the teacher gives the same answer to the augmented one. This asks the
teacher about real test images (and, with --pool, a run's synthetic images)
before and after each augmentation, and prints the share of answers kept. Its
queries go through the counting black box and are printed; they belong to no
run's budget (a diagnostic, like the teacher's own test accuracy).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS, DatasetError, load_split  # noqa: E402
from models import MODELS, ModelError  # noqa: E402
from utils.augment import KINDS, build_augment  # noqa: E402
from utils.pool import to_float  # noqa: E402
from utils.run import UserError, load_checkpoint, pick_device, run_cli, save_json, seed_everything  # noqa: E402
from utils.teacher import default_teacher_path, load_blackbox_teacher  # noqa: E402

AUGMENTS = tuple(k for k in KINDS if k != "none")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--net", default="lenet", choices=sorted(MODELS), help="the teacher's architecture")
    p.add_argument("--teacher_ckpt", default=None, help="default: SAVE_DIR/teachers/DATASET_NET.pt")
    p.add_argument("--pool", default=None, help="a run's last.pt: also check its synthetic images")
    p.add_argument("--limit", type=int, default=10000, help="at most this many images from each source")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--save_dir", default="runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="for the random crops and flips")
    p.add_argument("--json", default=None, help="also write the shares to this file")
    args = p.parse_args(argv)
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    return args


@torch.no_grad()
def kept_answers(teacher, images: torch.Tensor, batch_size: int = 1000) -> dict:
    """{augmentation: share of the teacher's answers that it leaves unchanged}
    for uint8 images (N, C, H, W). 'crop' shifts each image by up to 4 px and
    'crop+flip' also mirrors half of them, as in training; 'flip' here mirrors
    every image, so its share is that of mirrored images alone."""
    shares = {}
    for kind in AUGMENTS:
        change = (lambda x: x.flip(3)) if kind == "flip" else build_augment(kind)
        kept = 0
        for batch in images.split(batch_size):
            x = to_float(batch)
            kept += (teacher(x) == teacher(change(x))).sum().item()
        shares[kind] = kept / max(len(images), 1)
    return shares


def sources(args, device):
    """{name: uint8 images}: the real test split, and the pool of --pool."""
    images = {"real test images": load_split(args.dataset, args.data_dir, train=False)[0][:args.limit]}
    if args.pool:
        ckpt = load_checkpoint(args.pool, "cpu")
        if not isinstance(ckpt.get("pool"), dict) or ckpt["pool"].get("images") is None:
            raise UserError(f"--pool {args.pool} holds no synthetic images (give an ideal.py run's last.pt)")
        images[f"pool of {args.pool}"] = ckpt["pool"]["images"][:args.limit]
    return {name: x.to(device) for name, x in images.items()}


def main(args):
    device = pick_device(args.device)
    seed_everything(args.seed)
    teacher, teacher_acc = load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net, "hard", 0, device)
    results = {name: kept_answers(teacher, images) for name, images in sources(args, device).items()}
    print(f"{args.dataset} {args.net} teacher ({teacher_acc:.2f}%): share of answers an augmentation leaves "
          "unchanged ('flip' mirrors every image; 'crop' shifts by up to 4 px; 'crop+flip' shifts and "
          "mirrors half, as in training)")
    for name, shares in results.items():
        print(f"  {name}: " + ", ".join(f"{kind} {share:.1%}" for kind, share in shares.items()))
    print(f"teacher queries of this check: {teacher.queries:,} (no run's budget)")
    if args.json:
        save_json({"teacher_acc": teacher_acc, "shares": results, "queries": teacher.queries}, args.json)
    return results, teacher.queries


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
