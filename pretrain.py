"""Train a teacher on real data: the network that IDEAL later treats as a black box.

    python pretrain.py --dataset=mnist --net=lenet --epochs=100

Recipe (documented in the README): SGD with Nesterov momentum and weight decay,
a one-cycle learning-rate schedule over the whole run, and label-safe augmentation. The
reference used plain SGD at lr 0.1 with no schedule; this reaches a better
teacher in far fewer epochs. The final model is the teacher: nothing is
selected on the test set. An existing teacher file is replaced only by a
teacher at least as good, or with --overwrite.

    torchrun --nproc_per_node=N pretrain.py ...   # N processes, DistributedDataParallel

Under torchrun every process trains on its own shard of the training set, with
--batch_size images per step, so the global batch is N x --batch_size and --lr
is used as given (see the README's "More than one GPU"). Rank 0 alone tests,
logs and writes files.
"""
import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import DATASETS, DatasetError, get_spec, load_split
from models import MODELS, ModelError, build_model
from utils.augment import KINDS, build_augment
from utils.checks import check_common, check_diverged
from utils.distributed import agreed, data_parallel, derived_seed, mean_over_ranks, process_group, shard_indices
from utils.evaluation import evaluate
from utils.pool import to_float
from utils.resume import record_resume, refuse_changes, saved_settings
from utils.run import (UserError, amp_autocast, load_checkpoint, make_run_dir, pick_device, removed_unless_started,
                       rng_state, run_cli, save_checkpoint, save_json, seed_everything, set_rng_state, to_device)
from utils.teacher import default_teacher_path, save_teacher

WARMUP = 0.15  # fraction of steps spent warming up (chosen on MNIST; docs/RESULTS.md)
START_DIV = 25  # warm-up starts at lr / 25
# What a resume may not change: the schedule spans the whole run, so with it
# --epochs defines the run too (see check_resume).
DEFINING = ("dataset", "net", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "schedule",
            "augment", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a teacher network on a real dataset.")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--net", default="lenet", choices=sorted(MODELS))
    p.add_argument("--epochs", type=int, default=200, help="training epochs (reference: 200, MNIST 100)")
    p.add_argument("--batch_size", type=int, default=128,
                   help="images per SGD step; per process under torchrun (global batch = N x this)")
    p.add_argument("--lr", type=float, default=0.1, help="peak SGD learning rate")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (default: on with --schedule onecycle, off with none as in the reference)")
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="onecycle", choices=["onecycle", "none"],
                   help="onecycle: linear warm-up over the first 15%% of steps from lr/25, then cosine "
                        "decay to 0; none: constant lr, as in the reference")
    p.add_argument("--augment", default="auto", choices=["auto", *KINDS],
                   help="training augmentation; auto = none for grey 28x28 data, else the dataset's label-safe "
                        "policy (datasets/registry.py): crop, plus flip where a mirror keeps the class")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data", help="where datasets are found (or fetched to)")
    p.add_argument("--save_dir", default="runs", help="run folders go to SAVE_DIR/pretrain/EXP_NAME")
    p.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET)")
    p.add_argument("--teacher_ckpt", default=None,
                   help="where to write the teacher (default: SAVE_DIR/teachers/DATASET_NET.pt, "
                        "which is where ideal.py looks)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the teacher at --teacher_ckpt even if the new one is worse")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...; "
                                                    "under torchrun each process takes cuda:LOCAL_RANK")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for the training forward passes (CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR/pretrain/EXP_NAME")
    return resolve_args(p.parse_args(argv))


def resolve_args(args):
    """Fill the defaults that depend on other flags; reject impossible settings."""
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    if args.augment == "auto":
        spec = get_spec(args.dataset)
        args.augment = "none" if spec.channels == 1 else spec.label_safe_augment
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if not args.lr > 0:  # `not >` refuses NaN too
        raise UserError("--lr must be positive")
    for name in ("momentum", "weight_decay"):
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name} must be >= 0")
    check_common(args)  # every float finite, the seed, the run name, the save folder
    if os.path.isdir(args.teacher_ckpt):
        raise UserError(f"--teacher_ckpt {args.teacher_ckpt} is a folder; give the teacher's file name, e.g. "
                        f"{os.path.join(args.teacher_ckpt, args.dataset + '_' + args.net + '.pt')}")
    if args.nesterov is None:
        args.nesterov = args.schedule == "onecycle"
    if args.nesterov and args.momentum == 0:
        raise UserError("--nesterov needs --momentum above 0; add --no-nesterov")
    return args


def train(args, ranks, model, data, optimizer, scheduler, augment, autocast, epoch):
    """One epoch over the in-memory training tensors (this rank's shard of
    them under torchrun), the forward pass and loss under `autocast()`;
    returns the mean loss."""
    images, labels = data
    model.train()
    order = epoch_order(args, ranks, labels.shape[0], labels.device, epoch)
    total, steps = 0.0, 0
    for idx in tqdm(order.split(args.batch_size), desc=f"epoch {epoch}", leave=False, disable=not ranks.main):
        with autocast():
            loss = F.cross_entropy(model(augment(to_float(images[idx]))), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total, steps = total + loss.item(), steps + 1
    return total / steps


def epoch_order(args, ranks, n, device, epoch):
    """The order in which this process visits the n training images in
    `epoch`. One process: a permutation from the global random stream, as
    before torchrun was supported. Under torchrun: this rank's shard of a
    permutation that all ranks draw alike from (seed, epoch); the rank's own
    stream (its crops and flips) is re-seeded from (seed, epoch, rank), so the
    ranks augment differently and nothing a rank draws depends on earlier
    epochs: a resume needs no per-rank RNG state."""
    if ranks.world == 1:
        return torch.randperm(n, device=device)
    torch.manual_seed(derived_seed(args.seed, epoch, ranks.rank))
    return shard_indices(n, ranks.rank, ranks.world, epoch, args.seed).to(device)


def build_scheduler(args, optimizer, steps_per_epoch):
    """onecycle: torch's LinearLR from lr/START_DIV up to lr over the first
    WARMUP of all steps, then CosineAnnealingLR down to 0 at the last step;
    none: a constant lr."""
    if args.schedule == "none":
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    total = args.epochs * steps_per_epoch
    warm = max(1, int(WARMUP * total))
    return lr_scheduler.SequentialLR(optimizer, [
        lr_scheduler.LinearLR(optimizer, start_factor=1 / START_DIV, end_factor=1.0, total_iters=warm),
        lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm), eta_min=0.0),
    ], milestones=[warm])


def check_resume(args, saved, processes, saved_processes):
    """Refuse a command line that would change the run being resumed; the
    number of processes sets the global batch, so it may not change either."""
    refuse_changes(saved, args, DEFINING + (("epochs",) if args.schedule == "onecycle" else ()))
    if args.epochs < saved["epochs"]:
        raise UserError(f"--resume: --epochs={args.epochs} is below this run's {saved['epochs']}")
    if processes != saved_processes:
        raise UserError(f"--resume: this run was trained by {saved_processes} process(es), this start has "
                        f"{processes}; the global batch is processes x --batch_size, so use "
                        f"torchrun --nproc_per_node={saved_processes} (or plain python for 1)")


def teacher_to_beat(args):
    """Test accuracy of the teacher already at --teacher_ckpt (None: nothing
    there, or --overwrite). Read before training, so a refusal costs nothing."""
    if args.overwrite or not os.path.exists(args.teacher_ckpt):
        return None
    try:
        ckpt = load_checkpoint(args.teacher_ckpt, "cpu")
    except UserError as err:
        raise UserError(f"{err}; pass --overwrite to replace it, or choose another --teacher_ckpt") from None
    if "test_acc" not in ckpt:
        raise UserError(f"{args.teacher_ckpt} is not a teacher of pretrain.py; pass --overwrite to replace it, "
                        "or choose another --teacher_ckpt")
    return ckpt["test_acc"]


def save_unless_worse(args, model, spec, test_acc, to_beat, run_dir):
    """Write the teacher to --teacher_ckpt unless the one there is better; then
    it goes to RUN_DIR/teacher.pt instead. Returns where it went."""
    path = args.teacher_ckpt
    check_diverged({"test accuracy": test_acc}, [model], "the end", "no teacher was written; lower --lr")
    if to_beat is not None and not test_acc >= to_beat:  # a NaN accuracy never wins
        path = os.path.join(run_dir, "teacher.pt")
        tqdm.write(f"kept the better teacher at {args.teacher_ckpt} ({to_beat:.2f}% against {test_acc:.2f}%); "
                   f"the new one is in {path} (--overwrite replaces it)")
    save_teacher(model, path, args.dataset, args.net, (spec.channels, spec.size, spec.classes), test_acc)
    return path


def main(args):
    device = pick_device(args.device)
    autocast = amp_autocast(device, args.amp)  # --amp on the CPU is refused before any work
    with process_group(device) as ranks:
        return train_teacher(args, device, ranks, autocast)


def train_teacher(args, device, ranks, autocast):
    """What each process does. Every rank reads the data, checks a resume
    and trains; rank 0 alone makes the run folder, writes into it and the
    teacher, and returns the summary (the other ranks return None)."""
    seed_everything(args.seed)
    spec = get_spec(args.dataset)
    to_beat = teacher_to_beat(args)
    model = to_device(build_model(args.net, spec.channels, spec.size, spec.classes), device)
    train_data = [t.to(device) for t in load_split(args.dataset, args.data_dir, train=True)]
    test_data = [t.to(device) for t in load_split(args.dataset, args.data_dir, train=False)]
    run_dir = agreed(ranks, lambda: make_run_dir(args.save_dir, "pretrain", args.exp_name, args.resume))
    with removed_unless_started(run_dir):
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                    weight_decay=args.weight_decay, nesterov=args.nesterov)
        shard = train_data[1].shape[0] // ranks.world  # images per rank and epoch (all of them with one process)
        scheduler = build_scheduler(args, optimizer, math.ceil(shard / args.batch_size))
        state = {"epoch": 0, "wall_s": 0.0, "test_acc": float("nan"), "train_loss": float("nan")}
        if args.resume:
            state = resume(run_dir, args, ranks, device, model, optimizer, scheduler)
        if ranks.main:
            save_json(vars(args), os.path.join(run_dir, "args.json"))
        state = fit(args, run_dir, ranks, model, (train_data, test_data), optimizer, scheduler, state, autocast)
    if not ranks.main:
        return None
    teacher_ckpt = save_unless_worse(args, model, spec, state["test_acc"], to_beat, run_dir)
    summary = {"dataset": args.dataset, "net": args.net, "epochs": args.epochs, "test_acc": state["test_acc"],
               "train_loss": state["train_loss"], "wall_s": round(state["wall_s"], 1),
               "device": str(device), "threads": torch.get_num_threads(), "processes": ranks.world,
               "amp": args.amp, "teacher_ckpt": teacher_ckpt}
    save_json(summary, os.path.join(run_dir, "summary.json"))
    print(f"teacher {args.net} on {args.dataset}: test accuracy {state['test_acc']:.2f}% -> {teacher_ckpt}")
    return summary


def fit(args, run_dir, ranks, model, data, optimizer, scheduler, state, autocast):
    """The epochs from state["epoch"] + 1 to --epochs. Every rank trains
    (through DistributedDataParallel under torchrun); rank 0 alone tests,
    logs and checkpoints each epoch to last.pt. Returns the final state
    (rank 0's: the other ranks keep no state)."""
    (train_data, test_data), augment = data, build_augment(args.augment)
    device = train_data[1].device
    net = data_parallel(model, ranks)
    writer = SummaryWriter(run_dir) if ranks.main else None
    if ranks.main:
        processes = f" x {ranks.world} processes (global batch {ranks.world * args.batch_size})"
        print(f"pretrain {args.net} on {args.dataset} ({train_data[1].shape[0]} images) on {device}"
              f"{processes if ranks.world > 1 else ''}; run folder {run_dir}")
    t0 = time.time() - state["wall_s"]
    for epoch in tqdm(range(state["epoch"] + 1, args.epochs + 1), desc="pretrain",
                      initial=state["epoch"], total=args.epochs, disable=not ranks.main):
        shard_loss = train(args, ranks, net, train_data, optimizer, scheduler, augment, autocast, epoch)
        train_loss = mean_over_ranks(shard_loss, ranks, device)
        check_diverged({"train loss": train_loss}, [model], f"epoch {epoch}",  # every rank: the same mean
                       "start a new run with a lower --lr or --weight_decay")
        if not ranks.main:
            continue
        test_loss, test_acc = evaluate(model, *test_data)  # the bare model: DDP's forward would wait for the others
        writer.add_scalar("train/loss", train_loss, epoch)
        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], epoch)
        writer.add_scalar("test/loss", test_loss, epoch)
        writer.add_scalar("test/acc", test_acc, epoch)
        tqdm.write(f"epoch {epoch}: train loss {train_loss:.4f}, test acc {test_acc:.2f}%")
        state = {"epoch": epoch, "wall_s": time.time() - t0, "test_acc": test_acc, "train_loss": train_loss}
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(), "config": vars(args),
                         "processes": ranks.world, **state}, os.path.join(run_dir, "last.pt"))
    if writer is not None:
        writer.close()
    return state


def resume(run_dir, args, ranks, device, model, optimizer, scheduler):
    """Restore model, optimizer, schedule and RNG from last.pt, once the command
    line is found to be the same run; returns the state it was saved with.
    Under torchrun every rank reads the same last.pt, so all of them restore
    the same state and reach the same verdict; rank 0 alone records it."""
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
    saved = saved_settings(ckpt, run_dir)
    check_resume(args, saved, ranks.world, ckpt.get("processes", 1))
    model.load_state_dict(ckpt.pop("model"))
    optimizer.load_state_dict(ckpt.pop("optimizer"))
    scheduler.load_state_dict(ckpt.pop("scheduler"))
    set_rng_state(ckpt.pop("rng"))
    if ranks.main:
        record_resume(run_dir, saved, args, from_epoch=ckpt["epoch"])
    return {"epoch": ckpt["epoch"], "wall_s": ckpt["wall_s"], "test_acc": ckpt.get("test_acc", float("nan")),
            "train_loss": ckpt.get("train_loss", float("nan"))}


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
