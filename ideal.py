"""IDEAL: query-efficient data-free distillation from a black-box teacher.

    python ideal.py --dataset=mnist --net=lenet --epochs=100 --batch_size=250

Each epoch: (1) a freshly initialised generator is trained for g_steps against
the *student* only (zero teacher queries) and its lowest-loss batch is kept;
(2) the teacher labels that batch once; (3) the student is distilled for one
pass over the whole pool of labelled samples; (4) the student is tested on the
real test set (real labels, no query).
"""
import argparse
import math
import os
import time

import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from datasets import DATASETS, EVAL_SPLITS, DatasetError, get_spec, load_eval_split
from methods import (PHASES, SYNTHESIZERS, Clock, IdealSynthesizer, NoiseSynthesizer,
                     RandomGeneratorSynthesizer, distill, distill_relabel, label_once)
from methods.steps import affordable
from methods.student import SCHEDULES, Learner
from models import MODELS, Generator, ModelError, build_model
from models.registry import check_fits
from utils.augment import KINDS, build_augment, reference_augment
from utils.blackbox import MODES
from utils.checks import (check_common, check_diverged, check_memory, check_name, check_preset_types,
                          generator_sizes, read_json_object)
from utils.evaluation import evaluate
from utils.losses import rebalanced_weights
from utils.pool import SyntheticPool, to_float, top1
from utils.report import base_summary, budget_spent, log_test
from utils.resume import (JournaledTeacher, billed_queries, load_labelled, paid_queries, record_resume,
                          refuse_changes, save_labelled, saved_settings)
from utils.run import (UserError, amp_autocast, load_checkpoint, make_run_dir, pick_device, rng_state, run_cli,
                       save_args, save_checkpoint, save_json, seed_everything, set_rng_state, single_process,
                       to_device)
from utils.remote import connect_teacher
from utils.teacher import default_teacher_path, file_sha256, load_blackbox_teacher

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
    p.add_argument("--warm_generator", action="store_true",
                   help="keep the generator and its Adam state from epoch to epoch instead of re-initialising "
                        "it every epoch (the paper); each epoch still draws a fresh z")
    p.add_argument("--candidates", type=int, default=1,
                   help="over-generate: train the generator on K*batch_size images, then pay the teacher for "
                        "only the batch_size the student is least sure of (highest entropy, balanced over the "
                        "generator's targets); costs K times the generator's time, no query (1 = off, the paper)")
    p.add_argument("--rebalance_targets", type=float, default=0.0,
                   help="a lever, not the paper (0 = off, the paper's balanced targets): before each batch, "
                        "weight the generator's target classes by (times the teacher named the class in the "
                        "pool + B/classes) ** -POWER, so the classes it rarely names get more tries (1 = inverse "
                        "frequency). Zero queries")
    p.add_argument("--distill_passes", type=int, default=1,
                   help="shuffled passes over the pool per epoch (1 = the paper); more train the student "
                        "further on answers already paid for, no query")
    p.add_argument("--mixup", type=float, default=0.0,
                   help="distil on pool images mixed in pairs, lam ~ Beta(ALPHA, ALPHA), with the same mix of "
                        "their cached answers' losses; no query (0 = off, the paper)")
    p.add_argument("--label_smoothing", type=float, default=0.0,
                   help="distil on (1 - EPS) * answer + EPS / classes instead of the answer itself, hard or "
                        "soft; no query (0 = off, the paper)")
    p.add_argument("--lr_schedule", default="constant", choices=SCHEDULES,
                   help="student learning rate over the run: constant (the reference); cosine to zero "
                        "at the last epoch, distill-only epochs included; anneal: constant while generating, "
                        "then cosine to zero over the --distill_epochs (a finished constant run can be "
                        "resumed into one, at no query)")
    p.add_argument("--ema_decay", type=float, default=0.0,
                   help="test and report an exponential moving average of the student's weights, updated "
                        "every SGD step with this decay (0 = off, the reference)")
    p.add_argument("--distill_aug", default="auto", choices=["auto", *KINDS],
                   help="distillation augmentation; auto = label-safe under cached labels "
                        "(crop; flip too where a mirror keeps the class), the reference's with --relabel_every_epoch")
    p.add_argument("--bb_mode", default="hard", choices=MODES, help="teacher answers top-1 labels or probabilities")
    p.add_argument("--query_budget", type=int, default=0, help="cap on teacher queries (0 = no cap)")
    p.add_argument("--relabel_every_epoch", action="store_true",
                   help="reference-code behaviour: re-query the teacher on every augmented pool image every epoch")
    p.add_argument("--teacher_ckpt", default=None, help="default: SAVE_DIR/teachers/DATASET_NET.pt from pretrain.py; "
                                                        "a torch.export .pt2 or TorchScript file needs --trust_teacher_code")
    p.add_argument("--trust_teacher_code", action="store_true",
                   help="allow a .pt2 or TorchScript teacher: loading one can run code the file carries")
    p.add_argument("--teacher_url", default=None,
                   help="ask a teacher served by serve_teacher.py instead, with the API key in $IDEAL_TEACHER_KEY")
    p.add_argument("--eval_split", default="test", choices=EVAL_SPLITS,
                   help="score the student on the real test set, or on val: the last 10,000 real training "
                        "images, never trained on, for choosing hyperparameters without the test set")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data", help="where the real test set is found (or fetched to)")
    p.add_argument("--save_dir", default="runs", help="run folders go to SAVE_DIR/ideal/EXP_NAME")
    p.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET_STUDENT)")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast for the generator, student and teacher forward passes (CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR/ideal/EXP_NAME")
    p.add_argument("--preset", default=None,
                   help="take defaults from configs/PRESET.json (cpu: the README's CPU preset); "
                        "flags given on the command line still win")
    apply_preset(p, argv)
    args = p.parse_args(argv)
    return resolve_args(args)


def apply_preset(parser, argv):
    """Make the preset's values the parser's defaults, so explicit flags override them.

    A preset may hold a "per_dataset" section: {"fmnist": {...}} is laid over the rest for
    that dataset, because a lever chosen on one dataset's held-out images can hurt another's.
    """
    known = parser.parse_known_args(argv)[0]
    if known.preset is None:
        return
    path = os.path.join(CONFIG_DIR, f"{check_name(known.preset, 'preset')}.json")  # a name, never a path
    if not os.path.isfile(path):
        names = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".json"))
        raise UserError(f"no preset '{known.preset}' ({path}); known: {', '.join(names)}")
    preset = read_json_object(path, "preset")
    per_dataset = preset.pop("per_dataset", {})
    sections = list(per_dataset.values()) if isinstance(per_dataset, dict) else [None]
    if not all(isinstance(v, dict) for v in sections):
        raise UserError(f"preset {path} must be a JSON object of flags, its per_dataset one object per dataset")
    strangers = set(per_dataset) - set(DATASETS)
    if strangers:
        raise UserError(f"preset {path} has a section for unknown datasets: {', '.join(sorted(strangers))}")
    settable = {a.dest for a in parser._actions} - {"dataset", "preset", "help"}  # the dataset picks the section
    unknown = set(preset).union(*sections) - settable
    if unknown:
        raise UserError(f"preset {path} sets unknown flags: {', '.join(sorted(unknown))}")
    values = {**preset, **per_dataset.get(known.dataset, {})}
    check_preset_types(parser, values, path)
    parser.set_defaults(**values)


def resolve_args(args):
    """Fill the defaults that depend on other flags; reject impossible settings."""
    args.student_net = args.student_net or args.net
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}_{args.student_net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    # which teacher this run asks, beyond its path: pretrain.py may replace the file with a better one
    args.teacher_sha256 = None if args.teacher_url else file_sha256(args.teacher_ckpt)
    if args.distill_aug == "auto":
        spec = get_spec(args.dataset)
        args.distill_aug = (reference_augment(spec.size, spec.channels) if args.relabel_every_epoch
                            else spec.label_safe_augment)
    for name in ("epochs", "batch_size", "pool_batches", "g_steps", "nz", "ngf", "candidates", "distill_passes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    for name in ("lr", "lr_g"):
        if not getattr(args, name) > 0:  # `not >` refuses NaN too
            raise UserError(f"--{name} must be positive")
    if args.method != "ideal" and (args.candidates > 1 or args.warm_generator):
        raise UserError(f"--candidates and --warm_generator shape IDEAL's generator; --method={args.method} "
                        "has none to shape (use --method=ideal)")
    if not (args.rebalance_targets >= 0 and math.isfinite(args.rebalance_targets)):
        raise UserError("--rebalance_targets must be a finite number >= 0 (0 = off)")
    if args.rebalance_targets and (args.method != "ideal" or args.relabel_every_epoch):
        raise UserError("--rebalance_targets steers IDEAL's generator by the cached answers: it needs --method=ideal "
                        "without --relabel_every_epoch")
    if not 0 <= args.label_smoothing < 1:
        raise UserError("--label_smoothing must be in [0, 1) (0 = off)")
    if not args.mixup >= 0:
        raise UserError("--mixup must be >= 0 (0 = off)")
    if args.mixup and args.relabel_every_epoch:
        raise UserError("--mixup mixes cached answers; --relabel_every_epoch has none (use one or the other)")
    if args.distill_passes > 1 and args.relabel_every_epoch:
        raise UserError("--distill_passes reuses cached answers; --relabel_every_epoch would pay for every pass "
                        "(use one or the other)")
    if not 0 <= args.ema_decay < 1:
        raise UserError("--ema_decay must be in [0, 1) (0 = no average)")
    if args.lr_schedule == "anneal" and args.distill_epochs < 1:
        raise UserError("--lr_schedule=anneal decays over the distill-only epochs: give --distill_epochs=N, N >= 1")
    for name in ("momentum", "weight_decay", "query_budget", "distill_epochs"):
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name} must be >= 0")
    check_common(args)  # every float finite, the seed, the run name, the save folder
    spec = get_spec(args.dataset)
    check_memory(generator_sizes(args.nz, args.ngf, spec.size, args.batch_size * args.candidates))
    return args


# The settings that make a run what it is. A resume that changed one would mix
# two runs in one pool, one student or one query count, so it is refused; the
# length (--epochs, --distill_epochs) and the budget may grow.
DEFINING = ("dataset", "net", "student_net", "method", "bb_mode", "batch_size", "pool_batches", "seed",
            "nz", "ngf", "g_steps", "lr", "lr_g", "momentum", "weight_decay", "lambda_info",
            "relabel_every_epoch", "distill_aug",  # relabel first: it changes distill_aug's auto choice
            "lr_schedule", "ema_decay", "warm_generator", "amp", "teacher_ckpt", "teacher_url", "eval_split",
            "candidates", "mixup", "distill_passes", "rebalance_targets", "label_smoothing")


def check_resume(args, saved, epochs_done, queries):
    """Refuse a command line that would change the run being resumed (one
    line naming the flag); allow a longer run and any budget not yet spent."""
    if into_anneal(args, saved, epochs_done):  # the same run so far: its rate was constant, as an anneal's is
        refuse_changes({**saved, "lr_schedule": "anneal"}, args, DEFINING)
    else:
        refuse_changes(saved, args, DEFINING)
    if saved.get("teacher_sha256") and saved["teacher_sha256"] != args.teacher_sha256:
        raise UserError(f"--resume: the teacher file {args.teacher_ckpt} is not the one this run began with "
                        "(its sha256 differs); answers of two teachers cannot share one pool, start a new run")
    if args.query_budget and args.query_budget < queries:
        raise UserError(f"--resume: --query_budget={args.query_budget} is below the {queries} queries "
                        "this run has already spent")
    for name in ("epochs", "distill_epochs"):
        if getattr(args, name) < saved.get(name, 0):
            raise UserError(f"--resume: --{name}={getattr(args, name)} is below this run's {saved[name]}; "
                            "a resume may make a run longer, not shorter")
    if saved.get("lr_schedule", "constant") != "constant" and (
            (args.epochs, args.distill_epochs) != (saved["epochs"], saved["distill_epochs"])):
        raise UserError("--resume: --epochs and --distill_epochs cannot change in a run with a learning-rate "
                        "schedule: it is laid out over the run's original length")
    if epochs_done > saved["epochs"] and args.epochs != saved["epochs"]:
        raise UserError(f"--resume: --epochs cannot change once the distill-only epochs have begun "
                        f"(this run has --epochs={saved['epochs']} and has run {epochs_done} epochs)")


def into_anneal(args, saved, epochs_done) -> bool:
    """A constant-rate run asked to go on as an anneal before any of its
    distill-only epochs: the epochs it has run are an anneal's flat ones."""
    return (saved.get("lr_schedule", "constant"), args.lr_schedule) == ("constant", "anneal") and (
        epochs_done <= min(saved["epochs"], args.epochs))


def build_synthesizer(args, spec, device, autocast):
    """The zero-query image source of --method (see methods/synthesizers.py),
    its forward passes under `autocast()`."""
    if args.method == "noise":
        return NoiseSynthesizer(args.batch_size, (spec.channels, spec.size, spec.size), device)
    generator = to_device(Generator(args.nz, args.ngf, spec.channels, spec.size), device)
    if args.method == "random_generator":
        return RandomGeneratorSynthesizer(generator, args.nz, args.batch_size, autocast)
    return IdealSynthesizer(generator, args.nz, args.batch_size, spec.classes, args.g_steps,
                            args.lr_g, args.lambda_info, autocast=autocast, warm=args.warm_generator,
                            candidates=args.candidates)


def main(args):
    single_process("ideal.py")
    device = pick_device(args.device)
    autocast = amp_autocast(device, args.amp)  # --amp on the CPU is refused before any work
    resumed = open_resumed(args, device) if args.resume else None  # a changed run is refused before any work
    seed_everything(args.seed)
    spec = get_spec(args.dataset)
    for net in (args.net, args.student_net):
        check_fits(net, spec.size)
    teacher, teacher_acc = open_teacher(args, spec, device, autocast)
    test_images, test_labels = (t.to(device) for t in load_eval_split(args.dataset, args.data_dir, args.eval_split))
    student = to_device(build_model(args.student_net, spec.channels, spec.size, spec.classes), device)
    synthesizer = build_synthesizer(args, spec, device, autocast)
    learner = Learner(student, args.lr, args.momentum, args.weight_decay, args.epochs + args.distill_epochs,
                      args.lr_schedule, args.ema_decay, flat_epochs=args.epochs)
    pool = SyntheticPool(args.pool_batches * args.batch_size, labelled=not args.relabel_every_epoch)
    run_dir = resumed["run_dir"] if resumed else make_run_dir(args.save_dir, "ideal", args.exp_name, resume=False)
    if args.teacher_url:
        teacher.bind_run(run_dir)  # the same request ids after --resume: the server bills no batch twice
    teacher = JournaledTeacher(teacher, run_dir)  # its count survives a kill in the middle of a call
    state = {"epoch": 0, "samples": 0, "best_acc": 0.0, "final_acc": 0.0, "wall_s": 0.0,
             "phase_s": dict.fromkeys(PHASES, 0.0), "budget_hit": False}
    pending = None  # a batch a killed run labelled after its last.pt: used, never asked again
    if resumed:
        state, pending = resume(resumed, args, device, (learner, synthesizer, pool), teacher)
    else:  # resumable from the start: a kill in epoch 1 must not make the run pay again in a new folder
        save_run(run_dir, vars(args), state, (learner, synthesizer, pool), teacher, is_best=False)
    save_args(args, run_dir)
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
        generating = pending is not None or (epoch <= args.epochs and teacher.remaining > 0)
        if generating:
            if pending is not None:  # go on exactly as the killed run would have
                set_rng_state(pending["rng"])
                synthesizer.load_state_dict(pending.get("synthesizer"))
            if pending is None and args.rebalance_targets:
                synthesizer.target_weights = target_weights(pool, spec.classes, args)
            batch = pending or new_batch(args, synthesizer, student, teacher, clock, run_dir, epoch)
            pending = None
            pool.add(batch["images"], batch["answers"])
            state["samples"] += len(batch["images"])
            log_generation(writer, epoch, batch["images"], batch["answers"], batch["g_losses"], spec.classes)
        if args.relabel_every_epoch and teacher.remaining <= 0 and not generating:
            break  # relabel mode has no cached answers to train on without asking again
        with clock("distill"):
            d_loss, d_agree = distill_epoch(args, learner, pool, augment, teacher, autocast)
        check_diverged({"distillation loss": d_loss}, [learner.model], f"epoch {epoch}",
                       "start a new run with a lower --lr")
        if teacher.remaining <= 0 and not state["budget_hit"]:
            state["budget_hit"] = True
            tqdm.write(f"{budget_spent(args.query_budget, teacher.queries)} at epoch {epoch}: " + (
                "relabel mode has no cached answers, so the run ends after this epoch" if args.relabel_every_epoch
                else "no more generation; distilling on the pool already labelled"))
        with clock("test"):
            test_loss, test_acc = evaluate(learner.reported, test_images, test_labels)
        state.update(epoch=epoch, final_acc=test_acc, wall_s=time.time() - t0)
        is_best = test_acc > state["best_acc"]
        state["best_acc"] = max(state["best_acc"], test_acc)
        log_epoch(writer, epoch, teacher.queries, clock.totals,
                  {"loss": d_loss, "agreement": d_agree, "lr": learner.lr}, test_loss, test_acc, args.eval_split)
        bar.set_postfix(acc=f"{test_acc:.2f}", queries=f"{teacher.queries:,}")
        save_run(run_dir, vars(args), state, (learner, synthesizer, pool), teacher, is_best)
    writer.close()
    summary = make_summary(args, state, teacher, teacher_acc, device)
    save_json(summary, os.path.join(run_dir, "summary.json"))
    print(f"student {args.student_net} on {args.dataset}: final {args.eval_split} accuracy {summary['final_acc']:.2f}% "
          f"(best {summary['best_acc']:.2f}%), teacher {teacher_acc:.2f}%, "
          f"teacher queries {summary['queries']:,}, synthetic samples {summary['samples']:,}, "
          f"{summary['wall_s']:.0f}s; summary in {run_dir}/summary.json")
    return summary


def open_teacher(args, spec, device, autocast):
    """The black box of --teacher_url or --teacher_ckpt, and the teacher's
    test accuracy as its trainer (or provider) reported it."""
    if args.teacher_url:
        return connect_teacher(args.teacher_url, (spec.channels, spec.size, spec.size), spec.classes,
                               args.bb_mode, args.query_budget)
    return load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net, args.bb_mode, args.query_budget,
                                 device, args.trust_teacher_code, autocast)


def distill_epoch(args, learner, pool, augment, teacher, autocast):
    """Step 3 for one epoch: --distill_passes passes over the pool (each one
    asking the teacher again in relabel mode), then the schedule's step.
    Returns the last pass's (mean loss, % agreement)."""
    for _ in range(args.distill_passes):
        d_loss, d_agree = (
            distill_relabel(learner.model, learner.optimizer, pool, augment, args.batch_size, teacher,
                            learner.step_done, autocast, args.label_smoothing) if args.relabel_every_epoch
            else distill(learner.model, learner.optimizer, pool, augment, args.batch_size, learner.step_done,
                         autocast, args.mixup, args.label_smoothing))
    learner.epoch_done()
    return d_loss, d_agree


def target_weights(pool, classes, args):
    """--rebalance_targets: the generator's class weights from how often the
    teacher has named each class in the pool (uniform while it is empty)."""
    counts = torch.zeros(classes, dtype=torch.long)
    if pool.answers is not None:
        counts = torch.bincount(top1(pool.answers).cpu(), minlength=classes)
    return rebalanced_weights(counts, args.batch_size / classes, args.rebalance_targets)


def new_batch(args, synthesizer, student, teacher, clock, run_dir, epoch):
    """Generate (zero queries) and label this epoch's batch, and persist it the
    moment the teacher has answered, before anything else can fail."""
    with clock("generate"):
        x, g_losses = synthesizer.synthesize(student)
    with clock("label"):  # relabel mode asks later, in distill_relabel
        images, answers = (affordable(teacher, x), None) if args.relabel_every_epoch else label_once(teacher, x)
        save_labelled(run_dir, epoch, images, answers, g_losses, teacher.queries, synthesizer.state_dict())
    return {"images": images, "answers": answers, "g_losses": g_losses}


def log_generation(writer, epoch, images, answers, g_losses, classes):
    """Generator losses (methods that train one), an image grid and (when asked
    this epoch) the teacher's labels."""
    for name, value in (g_losses or {}).items():
        writer.add_scalar(f"generator/{name}", value, epoch)
    writer.add_image("synthetic", make_grid(to_float(images[:64]), nrow=8), epoch)
    if answers is not None:
        writer.add_histogram("teacher/labels", top1(answers), epoch, bins=classes)


def log_epoch(writer, epoch, queries, phase_s, distill_stats, test_loss, test_acc, split="test"):
    log_test(writer, epoch, queries, test_loss, test_acc, split)
    writer.add_scalar("distill/loss", distill_stats["loss"], epoch)
    writer.add_scalar("distill/agreement", distill_stats["agreement"], epoch)
    writer.add_scalar("distill/lr", distill_stats["lr"], epoch)  # the lr of the next epoch
    for phase, seconds in phase_s.items():
        writer.add_scalar(f"time/{phase}_s", seconds, epoch)


def save_run(run_dir, config, state, parts, teacher, is_best):
    """last.pt holds everything a resume needs, the pool and the run's settings
    included, so no sample already paid for is ever asked again. best.pt is the
    student with the highest test accuracy so far (selected on the test set, as
    the paper reports; final_acc is the unselected figure). best.pt is written
    first: a kill between the two leaves it ahead of last.pt, never behind, and
    a resume takes best_acc from it. Both hold the reported student (the
    weight average with --ema_decay) under "student"; last.pt also the live one.
    parts: (Learner, synthesizer, SyntheticPool)."""
    learner, synthesizer, pool = parts
    if is_best:
        save_checkpoint({"student": learner.reported.state_dict(), "epoch": state["epoch"],
                         "test_acc": state["final_acc"]}, os.path.join(run_dir, "best.pt"))
    ckpt = {**learner.state_dict(), "config": config, "synthesizer": synthesizer.state_dict(),
            "pool": pool.state_dict(), "queries": teacher.queries, "rng": rng_state(), **state}
    save_checkpoint(ckpt, os.path.join(run_dir, "last.pt"))


def open_resumed(args, device):
    """The run folder and last.pt of the run to resume, once the command line
    is found to be the same run. The count is the larger of last.pt's and the
    write-ahead one's."""
    run_dir = make_run_dir(args.save_dir, "ideal", args.exp_name, resume=True)
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
    saved = saved_settings(ckpt, run_dir)
    queries = max(ckpt.pop("queries"), paid_queries(run_dir))
    check_resume(args, saved, ckpt["epoch"], queries)
    return {"run_dir": run_dir, "ckpt": ckpt, "saved": saved, "queries": queries}


def resume(resumed, args, device, parts, teacher):
    """Restore the run opened by open_resumed and record the resume.
    Returns (state, the batch labelled after last.pt, or None)."""
    run_dir, ckpt, queries = resumed["run_dir"], resumed["ckpt"], resumed["queries"]
    learner, synthesizer, pool = parts  # what save_run stored, in the same order
    learner.load_state_dict({key: ckpt.pop(key, None) for key in ("student", "optimizer", "scheduler", "ema")},
                            epochs_done=ckpt["epoch"])
    synthesizer.load_state_dict(ckpt.pop("synthesizer", None))
    pool.load_state_dict(ckpt.pop("pool"))
    set_rng_state(ckpt.pop("rng"))
    ckpt.pop("config", None)
    pending = load_labelled(run_dir, ckpt["epoch"] + 1, device)
    teacher.queries = max(queries, pending["queries"] if pending else 0)  # the write-ahead count covers it
    if args.teacher_url:  # the provider's bill is the count: it never billed a batch it did not answer
        teacher.queries = billed_queries(run_dir, teacher.usage()["run_used"])
    ckpt["budget_hit"] = ckpt["budget_hit"] and teacher.remaining <= 0  # a larger budget reopens generation
    best = os.path.join(run_dir, "best.pt")
    if os.path.isfile(best):  # written before last.pt: never behind it
        ckpt["best_acc"] = load_checkpoint(best, device)["test_acc"]
    record_resume(run_dir, resumed["saved"], args, from_epoch=ckpt["epoch"], queries=teacher.queries)
    return ckpt, pending


def reference_code_queries(epochs, distill_epochs, batch_size, pool_batches):
    """What the reference code's re-querying spends on these settings: every
    epoch asks once per pool image, and the pool grows by a batch per generation
    epoch up to pool_batches (B*E*(E+1)/2 while E <= pool_batches)."""
    generation = sum(batch_size * min(e, pool_batches) for e in range(1, epochs + 1))
    return generation + distill_epochs * batch_size * min(epochs, pool_batches)


def make_summary(args, state, teacher, teacher_acc, device):
    return {
        **base_summary(args.method, args, state, teacher.queries, teacher_acc, device),
        "epochs": args.epochs, "distill_epochs": args.distill_epochs,
        "batch_size": args.batch_size, "g_steps": args.g_steps, "ngf": args.ngf,
        "relabel_every_epoch": args.relabel_every_epoch, "distill_aug": args.distill_aug,
        "lr_schedule": args.lr_schedule, "ema_decay": args.ema_decay, "warm_generator": args.warm_generator,
        "candidates": args.candidates, "mixup": args.mixup, "distill_passes": args.distill_passes,
        "rebalance_targets": args.rebalance_targets, "label_smoothing": args.label_smoothing,
        "eval_split": args.eval_split,  # best_acc and final_acc are on this split
        "reference_code_queries": reference_code_queries(args.epochs, args.distill_epochs,
                                                         args.batch_size, args.pool_batches),
        "phase_s": {k: round(v, 1) for k, v in state["phase_s"].items()},
    }


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
