"""Train a teacher whose architecture is not in models/ and save it as a
torch.export program (.pt2) with its meta.json: a model that serve_teacher.py
can serve, and that our registry could not rebuild.

    python scripts/export_teacher.py --dataset mnist --epochs 2 --out runs/teachers/mnist_resmax.pt2
"""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from datasets import DATASETS, DatasetError, get_spec, load_split  # noqa: E402
from datasets.common import atomic_open  # noqa: E402
from utils.checks import check_diverged, check_positive, check_seed  # noqa: E402
from utils.evaluation import evaluate  # noqa: E402
from utils.pool import to_float  # noqa: E402
from utils.run import UserError, pick_device, run_cli, seed_everything  # noqa: E402


class ResMax(nn.Module):
    """conv3x3(16) + pool, one residual block of two conv3x3(16) with BN,
    conv3x3(32) stride 2, global max-pool, linear. Small enough to train on
    two CPU cores in a minute; nothing like it is in the registry."""

    def __init__(self, channels: int, classes: int, width: int = 16):
        super().__init__()
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width))
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.max_pool2d(self.stem(x).relu(), 2)
        h = (h + self.block(h)).relu()
        return self.head(self.down(h).relu().amax((2, 3)))


def train(model, images, labels, epochs, batch_size, lr):
    """SGD with a one-cycle schedule on uint8 images; no augmentation."""
    steps = epochs * ((len(images) + batch_size - 1) // batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images)).split(batch_size):
            loss = F.cross_entropy(model(to_float(images[idx])), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()


def check_args(args) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    check_positive(args, "lr")
    check_seed(args)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="default: runs/teachers/DATASET_resmax.pt2")
    p.add_argument("--overwrite", action="store_true", help="replace a teacher already at --out")
    args = p.parse_args()
    check_args(args)
    out = args.out or os.path.join("runs", "teachers", f"{args.dataset}_resmax.pt2")
    if os.path.exists(out) and not args.overwrite:  # refused before any work: runs name their teacher by its bytes
        raise UserError(f"{out} exists; runs that asked it name it by its sha256: choose another --out, "
                        "or pass --overwrite to replace it")
    device, spec = pick_device(args.device), get_spec(args.dataset)
    seed_everything(args.seed)
    model = ResMax(spec.channels, spec.classes).to(device)
    train_images, train_labels = (t.to(device) for t in load_split(args.dataset, args.data_dir, train=True))
    train(model, train_images, train_labels, args.epochs, args.batch_size, args.lr)
    test_images, test_labels = (t.to(device) for t in load_split(args.dataset, args.data_dir, train=False))
    _, test_acc = evaluate(model, test_images, test_labels)
    check_diverged({"test accuracy": test_acc}, [model], "the end", "no teacher was written; lower --lr")
    model.eval()  # the program is traced in eval mode: BatchNorm uses its running statistics
    example = torch.zeros(2, spec.channels, spec.size, spec.size, device=device)
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    meta = {"input_shape": [spec.channels, spec.size, spec.size], "classes": spec.classes,
            "test_acc": round(test_acc, 2), "architecture": "ResMax (scripts/export_teacher.py)"}
    with atomic_open(out) as f:  # a kill leaves the old file or the new one, never half of one
        torch.export.save(program, f, extra_files={"meta.json": json.dumps(meta)})
    print(f"ResMax on {args.dataset}: {test_acc:.2f}% test accuracy; saved {out}")


if __name__ == "__main__":
    run_cli(main, errors=(DatasetError,))
