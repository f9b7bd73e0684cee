"""IDEAL: query-efficient data-free distillation from a black-box teacher.

    python ideal.py --dataset=mnist --net=lenet --epochs=100 --batch_size=250

Each epoch: (1) a freshly initialised generator is trained for g_steps against
the *student* only (zero teacher queries) and its lowest-loss batch is kept;
(2) the teacher labels that batch once; (3) the student is distilled for one
pass over the whole pool of labelled samples; (4) the student is tested on the
real test set (real labels, no query).
"""
import argparse
import json
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from datasets import DATASETS, DatasetError, get_spec, load_split
from methods import (PHASES, SYNTHESIZERS, Clock, IdealSynthesizer, NoiseSynthesizer,
                     RandomGeneratorSynthesizer, distill, distill_relabel, label_once)
from methods.steps import affordable
from models import MODELS, Generator, ModelError, build_model
from models.registry import check_fits
from utils.augment import KINDS, build_augment, label_safe_augment, reference_augment
from utils.blackbox import MODES
from utils.evaluation import evaluate
from utils.pool import SyntheticPool, to_float
from utils.report import base_summary, log_test
from utils.run import (UserError, load_checkpoint, make_run_dir, pick_device, rng_state, run_cli,
                       save_checkpoint, save_json, seed_everything, set_rng_state, to_device)
from utils.teacher import default_teacher_path, load_blackbox_teacher

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # presets, one JSON each


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="IDEAL data-free distillation from a black-box teacher.")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--net", default="lenet", choices=sorted(MODELS), help="the teacher's architecture")
    p.add_argument("--method", default="ideal", choices=sorted(SYNTHESIZERS),
                   help="where each epoch's images come from: ideal (the paper), or a baseline in the same "
                        "loop: random_generator (IDEAL's generator, never trained), noise (uniform pixels)")
    p.add_argument("--student_net", default=None, choices=sorted(MODELS), help="default: same as --net")
    p.add_argument("--epochs", type=int, default=100, help="generation epochs E; each adds batch_size samples")
    p.add_argument("--batch_size", type=int, default=250, help="B: samples generated per epoch, and distillation batch")
    p.add_argument("--g_steps", type=int, default=30, help="generator Adam steps per epoch (paper: MNIST 30, CIFAR10 5)")
    p.add_argument("--lr", type=float, default=0.01, help="student SGD learning rate")
    p.add_argument("--lr_g", type=float, default=1e-3, help="generator Adam learning rate")
    p.add_argument("--nz", type=int, default=256, help="generator latent size")
    p.add_argument("--ngf", type=int, default=64, help="generator width")
    p.add_argument("--lambda_info", type=float, default=5.0, help="weight of the information (entropy) term")
    p.add_argument("--momentum", type=float, default=0.9, help="student SGD momentum")
    p.add_argument("--weight_decay", type=float, default=5e-4, help="student SGD weight decay")
    p.add_argument("--pool_batches", type=int, default=400, help="pool keeps the newest N*batch_size samples")
    p.add_argument("--distill_epochs", type=int, default=0,
                   help="extra distillation-only epochs on the cached pool after the last generation epoch (no queries)")
    p.add_argument("--distill_aug", default="auto", choices=["auto", *KINDS],
                   help="distillation augmentation; auto = label-safe under cached labels "
                        "(crop; flip too where a mirror keeps the class), the reference's with --relabel_every_epoch")
    p.add_argument("--bb_mode", default="hard", choices=MODES, help="teacher answers top-1 labels or probabilities")
    p.add_argument("--query_budget", type=int, default=0, help="cap on teacher queries (0 = no cap)")
    p.add_argument("--relabel_every_epoch", action="store_true",
                   help="reference-code behaviour: re-query the teacher on every augmented pool image every epoch")
    p.add_argument("--teacher_ckpt", default=None, help="default: SAVE_DIR/teachers/DATASET_NET.pt from pretrain.py")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data", help="where the real test set is found (or fetched to)")
    p.add_argument("--save_dir", default="runs", help="run folders go to SAVE_DIR/ideal/EXP_NAME")
    p.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET_STUDENT)")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR/ideal/EXP_NAME")
    p.add_argument("--preset", default=None,
                   help="take defaults from configs/PRESET.json (cpu: the README's CPU preset); "
                        "flags given on the command line still win")
    apply_preset(p, argv)
    args = p.parse_args(argv)
    return resolve_args(args)


def apply_preset(parser, argv):
    """Make the preset's values the parser's defaults, so explicit flags override them."""
    name = parser.parse_known_args(argv)[0].preset
    if name is None:
        return
    path = os.path.join(CONFIG_DIR, f"{name}.json")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
        raise UserError(f"no preset '{name}' ({path}); known: {', '.join(known)}")
    with open(path) as f:
        preset = json.load(f)
    unknown = set(preset) - {a.dest for a in parser._actions}
    if unknown:
        raise UserError(f"preset {path} sets unknown flags: {', '.join(sorted(unknown))}")
    parser.set_defaults(**preset)


def resolve_args(args):
    """Fill the defaults that depend on other flags; reject impossible settings."""
    args.student_net = args.student_net or args.net
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}_{args.student_net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    if args.distill_aug == "auto":
        spec = get_spec(args.dataset)
        args.distill_aug = (reference_augment(spec.size, spec.channels) if args.relabel_every_epoch
                            else label_safe_augment(args.dataset))
    for name in ("epochs", "batch_size", "pool_batches"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if args.g_steps < 1 or args.query_budget < 0 or args.distill_epochs < 0:
        raise UserError("--g_steps must be >= 1, --query_budget and --distill_epochs >= 0")
    return args


def build_synthesizer(args, spec, device):
    """The zero-query image source of --method (see methods/synthesizers.py)."""
    if args.method == "noise":
        return NoiseSynthesizer(args.batch_size, (spec.channels, spec.size, spec.size), device)
    generator = to_device(Generator(args.nz, args.ngf, spec.channels, spec.size), device)
    if args.method == "random_generator":
        return RandomGeneratorSynthesizer(generator, args.nz, args.batch_size)
    return IdealSynthesizer(generator, args.nz, args.batch_size, spec.classes, args.g_steps,
                            args.lr_g, args.lambda_info)


def main(args):
    device = pick_device(args.device)
    seed_everything(args.seed)
    spec = get_spec(args.dataset)
    for net in (args.net, args.student_net):
        check_fits(net, spec.size)
    teacher, teacher_acc = load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net,
                                                 args.bb_mode, args.query_budget, device)
    test_images, test_labels = (t.to(device) for t in load_split(args.dataset, args.data_dir, train=False))
    student = to_device(build_model(args.student_net, spec.channels, spec.size, spec.classes), device)
    synthesizer = build_synthesizer(args, spec, device)
    optimizer = torch.optim.SGD(student.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    pool = SyntheticPool(args.pool_batches * args.batch_size, labelled=not args.relabel_every_epoch)
    run_dir = make_run_dir(args.save_dir, "ideal", args.exp_name, args.resume)
    state = {"epoch": 0, "samples": 0, "best_acc": 0.0, "final_acc": 0.0, "wall_s": 0.0,
             "phase_s": dict.fromkeys(PHASES, 0.0), "budget_hit": False}
    if args.resume:
        state = resume(run_dir, device, student, optimizer, pool, teacher)
    save_json(vars(args), os.path.join(run_dir, "args.json"))
    writer = SummaryWriter(run_dir)
    augment = build_augment(args.distill_aug)
    clock = Clock(device, state["phase_s"])
    total_epochs = args.epochs + args.distill_epochs
    print(f"IDEAL: {args.net} teacher ({teacher_acc:.2f}% test acc, {args.bb_mode}-label black box) -> "
          f"{args.student_net} student on {args.dataset}, {device}; run folder {run_dir}")
    t0 = time.time() - state["wall_s"]
    bar = tqdm(range(state["epoch"] + 1, total_epochs + 1), desc="ideal",
               initial=state["epoch"], total=total_epochs)
    for epoch in bar:
        generating = epoch <= args.epochs and teacher.remaining > 0
        if generating:
            with clock("generate"):
                x, g_losses = synthesizer.synthesize(student)
            with clock("label"):  # relabel mode asks later, in distill_relabel
                images, answers = (affordable(teacher, x), None) if args.relabel_every_epoch \
                    else label_once(teacher, x)
            pool.add(images, answers)
            state["samples"] += len(images)
            log_generation(writer, epoch, images, answers, g_losses, spec.classes)
        if teacher.remaining <= 0 and not state["budget_hit"]:
            state["budget_hit"] = True
            tqdm.write(f"query budget of {args.query_budget} spent at epoch {epoch}: no more generation; " + (
                "relabel mode has no cached answers, so the run ends" if args.relabel_every_epoch
                else "distilling on the pool already labelled"))
        if args.relabel_every_epoch and teacher.remaining <= 0 and not generating:
            break  # relabel mode has no cached answers to train on without asking again
        with clock("distill"):
            d_loss, d_agree = (distill_relabel(student, optimizer, pool, augment, args.batch_size, teacher)
                               if args.relabel_every_epoch
                               else distill(student, optimizer, pool, augment, args.batch_size))
        with clock("test"):
            test_loss, test_acc = evaluate(student, test_images, test_labels)
        state.update(epoch=epoch, final_acc=test_acc, wall_s=time.time() - t0)
        is_best = test_acc > state["best_acc"]
        state["best_acc"] = max(state["best_acc"], test_acc)
        log_epoch(writer, epoch, teacher.queries, clock.totals,
                  {"loss": d_loss, "agreement": d_agree}, test_loss, test_acc)
        bar.set_postfix(acc=f"{test_acc:.2f}", queries=teacher.queries)
        save_run(run_dir, state, student, optimizer, pool, teacher, is_best)
    writer.close()
    summary = make_summary(args, state, teacher, teacher_acc, device)
    save_json(summary, os.path.join(run_dir, "summary.json"))
    print(f"student {args.student_net} on {args.dataset}: final test accuracy {summary['final_acc']:.2f}% "
          f"(best {summary['best_acc']:.2f}%), teacher {teacher_acc:.2f}%, "
          f"teacher queries {summary['queries']:,}, synthetic samples {summary['samples']:,}, "
          f"{summary['wall_s']:.0f}s; summary in {run_dir}/summary.json")
    return summary


def log_generation(writer, epoch, images, answers, g_losses, classes):
    """Generator losses (methods that train one), an image grid and (when asked
    this epoch) the teacher's labels."""
    for name, value in (g_losses or {}).items():
        writer.add_scalar(f"generator/{name}", value, epoch)
    writer.add_image("synthetic", make_grid(to_float(images[:64]), nrow=8), epoch)
    if answers is not None:
        hard = answers if answers.dim() == 1 else answers.argmax(1)
        writer.add_histogram("teacher/labels", hard, epoch, bins=classes)


def log_epoch(writer, epoch, queries, phase_s, distill_stats, test_loss, test_acc):
    log_test(writer, epoch, queries, test_loss, test_acc)
    writer.add_scalar("distill/loss", distill_stats["loss"], epoch)
    writer.add_scalar("distill/agreement", distill_stats["agreement"], epoch)
    for phase, seconds in phase_s.items():
        writer.add_scalar(f"time/{phase}_s", seconds, epoch)


def save_run(run_dir, state, student, optimizer, pool, teacher, is_best):
    """last.pt holds everything a resume needs, the pool included, so no sample
    already paid for is ever asked again. best.pt is the student with the
    highest test accuracy so far (selected on the test set, as the paper
    reports; final_acc is the unselected figure)."""
    ckpt = {"student": student.state_dict(), "optimizer": optimizer.state_dict(),
            "pool": pool.state_dict(), "queries": teacher.queries, "rng": rng_state(), **state}
    save_checkpoint(ckpt, os.path.join(run_dir, "last.pt"))
    if is_best:
        save_checkpoint({"student": student.state_dict(), "epoch": state["epoch"],
                         "test_acc": state["final_acc"]}, os.path.join(run_dir, "best.pt"))


def resume(run_dir, device, student, optimizer, pool, teacher):
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
    student.load_state_dict(ckpt.pop("student"))
    optimizer.load_state_dict(ckpt.pop("optimizer"))
    pool.load_state_dict(ckpt.pop("pool"))
    set_rng_state(ckpt.pop("rng"))
    teacher.queries = ckpt.pop("queries")  # paid for by the interrupted run
    return ckpt


def make_summary(args, state, teacher, teacher_acc, device):
    e, b = args.epochs, args.batch_size
    return {
        **base_summary(args.method, args, state, teacher.queries, teacher_acc, device),
        "epochs": args.epochs, "distill_epochs": args.distill_epochs,
        "batch_size": b, "g_steps": args.g_steps, "ngf": args.ngf,
        "relabel_every_epoch": args.relabel_every_epoch, "distill_aug": args.distill_aug,
        "reference_code_queries": b * e * (e + 1) // 2,
        "phase_s": {k: round(v, 1) for k, v in state["phase_s"].items()},
    }


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
