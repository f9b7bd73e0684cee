"""IDEAL: query-efficient data-free distillation from a black-box teacher.

    python ideal.py --dataset=mnist --net=lenet --epochs=100 --batch_size=250

Each epoch: (1) generate: a freshly initialised generator is trained for
g_steps against the *student* only (zero teacher queries) and its lowest-loss
batch is kept; (2) label: the teacher labels that batch once; (3) distill:
the student takes one pass over the whole pool of labelled samples; (4) test:
the student is scored on real images (real labels, no query). The run folder,
the query count, checkpoints and resume are utils/experiment.py's Run.
"""
import argparse
import os

from torchvision.utils import make_grid
from tqdm import tqdm

from datasets import DATASETS, EVAL_SPLITS, DatasetError, get_spec, load_eval_split
from methods import PHASES, SYNTHESIZERS, Clock, distill, distill_relabel, label_once
from methods.steps import affordable, student_optimizer
from methods.synthesizers import build_synthesizer
from models import ModelError, build_model
from utils.augment import KINDS, build_augment, reference_augment
from utils.blackbox import MODES
from utils.checks import check_diverged, check_flags, check_name, check_preset_types, check_ranges, read_json_object
from utils.cli import add_models, add_run, add_teacher_file, name_the_run
from utils.evaluation import evaluate
from utils.experiment import Run
from utils.pool import SyntheticPool, to_float, top1
from utils.remote import connect_teacher
from utils.report import base_summary, budget_spent, log_test
from utils.resume import load_labelled, save_labelled
from utils.run import UserError, run_cli, set_rng_state, to_device
from utils.teacher import file_sha256, load_blackbox_teacher

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # presets, one JSON each


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="IDEAL data-free distillation from a black-box teacher.")
    paper = p.add_argument_group("the paper's method and settings")
    add_models(paper)
    paper.add_argument("--epochs", type=int, default=100, help="generation epochs E; each adds batch_size samples")
    paper.add_argument("--batch_size", type=int, default=250, help="B: samples per epoch, and distillation batch")
    paper.add_argument("--g_steps", type=int, default=30, help="generator Adam steps per epoch (MNIST 30, CIFAR10 5)")
    paper.add_argument("--lr", type=float, default=0.01, help="student SGD learning rate")
    paper.add_argument("--lr_g", type=float, default=1e-3, help="generator Adam learning rate")
    paper.add_argument("--nz", type=int, default=256, help="generator latent size")
    paper.add_argument("--ngf", type=int, default=64, help="generator width")
    paper.add_argument("--lambda_info", type=float, default=5.0, help="weight of the information (entropy) term")
    paper.add_argument("--momentum", type=float, default=0.9, help="student SGD momentum")
    paper.add_argument("--weight_decay", type=float, default=5e-4, help="student SGD weight decay")
    paper.add_argument("--pool_batches", type=int, default=400, help="the pool keeps the newest N*batch_size samples")
    paper.add_argument("--bb_mode", default="hard", choices=MODES, help="top-1 labels or probabilities")
    paper.add_argument("--relabel_every_epoch", action="store_true",
                       help="the reference code's way: re-ask the teacher about every pool image every epoch")
    beyond = p.add_argument_group("beyond the paper (each off by default)")
    beyond.add_argument("--method", default="ideal", choices=sorted(SYNTHESIZERS),
                        help="where each epoch's images come from: ideal (the paper); random_generator (IDEAL's "
                             "generator, never trained); noise (uniform pixels); prior (DIP-KD's procedural image "
                             "priors)")
    beyond.add_argument("--prior_share", type=float, default=0.0,
                        help="with --method=ideal: this share of every batch (of the candidates, with --candidates) "
                             "is image priors, not generator images")
    beyond.add_argument("--seed_share", type=float, default=0.0,
                        help="with --method=ideal: this share of every batch (of the candidates, with --candidates) "
                             "is pool images the teacher has answered, mildly warped, drawn so that every class it "
                             "has named is drawn alike")
    beyond.add_argument("--warm_generator", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the generator and its Adam state from epoch to epoch, not re-initialised "
                             "(--no-warm_generator turns off a preset's)")
    beyond.add_argument("--candidates", type=int, default=1,
                        help="train the generator on K*batch_size images and pay the teacher for the batch_size "
                             "the student is least sure of (balanced over the targets); no extra query")
    beyond.add_argument("--distill_epochs", type=int, default=0,
                        help="distillation-only epochs on the pool after the last generation epoch (no query)")
    beyond.add_argument("--label_first", action="store_true",
                        help="label every generation epoch's images before distilling at all, then train "
                             "--distill_epochs on them: DIP-KD's protocol, for methods that never look at the student")
    beyond.add_argument("--distill_aug", default="auto", choices=["auto", *KINDS],
                        help="distillation augmentation; auto = the dataset's label-safe one under cached labels "
                             "(none on 28x28 grey data), the reference's with --relabel_every_epoch")
    beyond.add_argument("--preset", default=None,
                        help="defaults from configs/PRESET.json (cpu, best); flags on the command line still win")
    access = p.add_argument_group("teacher access")
    add_teacher_file(access)
    access.add_argument("--teacher_url", default=None,
                        help="ask a teacher served by serve_teacher.py instead, the API key in $IDEAL_TEACHER_KEY")
    access.add_argument("--query_budget", type=int, default=0, help="cap on teacher queries (0 = no cap)")
    run = p.add_argument_group("the run")
    run.add_argument("--eval_split", default="test", choices=EVAL_SPLITS,
                     help="score on the test set, or on val: 10,000 held-out training images, to choose settings")
    run.add_argument("--amp", action="store_true", help="bf16 autocast for every forward pass (CUDA only)")
    add_run(run, "ideal")
    apply_preset(p, argv)
    return resolve_args(p.parse_args(argv))


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
    name_the_run(args)
    # which teacher this run asks, beyond its path: pretrain.py may replace the file with a better one
    args.teacher_sha256 = None if args.teacher_url else file_sha256(args.teacher_ckpt)
    if args.distill_aug == "auto":
        spec = get_spec(args.dataset)
        args.distill_aug = (reference_augment(spec.size, spec.channels) if args.relabel_every_epoch
                            else spec.label_safe_augment)
    check_ranges(args, at_least_one=("epochs", "batch_size", "pool_batches", "g_steps", "nz", "ngf", "candidates"),
                 positive=("lr", "lr_g"), non_negative=("momentum", "weight_decay", "query_budget", "distill_epochs"))
    check_shares(args)
    check_flags(args, args.batch_size * args.candidates)  # finite floats, names, sizes, memory
    check_label_first(args)
    if args.method != "ideal" and (args.candidates > 1 or args.warm_generator or args.prior_share or args.seed_share):
        raise UserError(f"--candidates, --warm_generator, --prior_share and --seed_share shape IDEAL's batch; "
                        f"--method={args.method} has none to shape (use --method=ideal)")
    return args


def check_label_first(args):
    """--label_first leaves the student untrained until everything is labelled:
    IDEAL's generator would learn from an untrained student, and relabel mode
    keeps no answers to train on."""
    if not args.label_first:
        return
    if args.method == "ideal" or args.relabel_every_epoch:
        raise UserError("--label_first is for methods that never look at the student (noise, prior, "
                        "random_generator), with answers kept: leave out --label_first, or pick such a --method")
    if args.distill_epochs < 1:
        raise UserError("--label_first trains only in the --distill_epochs after labelling: give --distill_epochs=N")
    labelled = args.epochs * args.batch_size
    labelled = min(labelled, args.query_budget) if args.query_budget else labelled
    if labelled > args.pool_batches * args.batch_size:
        raise UserError(f"--label_first labels {labelled:,} images before the student trains, but the pool keeps "
                        f"--pool_batches x --batch_size = {args.pool_batches * args.batch_size:,}: the oldest would "
                        "be paid for and dropped unseen; raise --pool_batches")


def check_shares(args):
    """--prior_share and --seed_share: a share that gives no image, shares that
    leave the generator none, or (with --candidates=K) fewer than the batch to
    fill every class's quota; seeds from a pool with no answers or too large to draw from."""
    made, given, named = args.batch_size * args.candidates, 0, []
    for name in ("prior_share", "seed_share"):
        share = getattr(args, name)
        if not 0 <= share < 1:
            raise UserError(f"--{name} must be in [0, 1) (0 = off)")
        images = round(made * share)
        if share and not 0 < images < made:
            raise UserError(f"--{name}={share} gives {images} of {made} images per epoch; "
                            "choose a share that leaves both the generator and it some")
        given, named = given + images, named + ([f"--{name}"] if share else [])
    shares = " and ".join(named)
    if given >= made:
        raise UserError(f"{shares} together give {given} of the {made} images per epoch; leave the generator some")
    if given and args.candidates > 1 and made - given < args.batch_size:
        raise UserError(f"{shares} give {given / made:.2f} of the candidates, above 1 - 1/K = "
                        f"{1 - 1 / args.candidates:.2f} with --candidates={args.candidates}, so the generator "
                        "has fewer than --batch_size images to choose from: lower them or raise --candidates")
    if args.seed_share and args.relabel_every_epoch:
        raise UserError("--seed_share draws from the teacher's cached answers, which --relabel_every_epoch "
                        "does not keep: leave one of them out")
    if args.seed_share and args.pool_batches * args.batch_size > 2 ** 24:
        raise UserError(f"--seed_share draws among at most 2^24 pool images (torch.multinomial), and "
                        f"--pool_batches x --batch_size = {args.pool_batches * args.batch_size:,}: lower either")


# The settings that make a run what it is. A resume that changed one would mix
# two runs in one pool, one student or one query count, so it is refused; the
# length (--epochs, --distill_epochs) and the budget may grow.
DEFINING = ("dataset", "net", "student_net", "method", "bb_mode", "batch_size", "pool_batches", "seed",
            "nz", "ngf", "g_steps", "lr", "lr_g", "momentum", "weight_decay", "lambda_info",
            "relabel_every_epoch", "distill_aug",  # relabel first: it changes distill_aug's auto choice
            "warm_generator", "amp", "teacher_ckpt", "teacher_url", "eval_split", "candidates", "prior_share",
            "seed_share", "label_first")
# Flags that came after the first runs with a default that is not "off": what those runs did.
BEFORE = {"method": "ideal", "eval_split": "test"}


def check_resume(args, saved, ckpt, queries):
    """ideal.py's own resume rules, beyond DEFINING: the same teacher file, a
    budget not yet spent, and a run made longer, never shorter."""
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
    began = ckpt["epoch"] >= saved["epochs"] if saved.get("label_first") else ckpt["epoch"] > saved["epochs"]
    if began and args.epochs != saved["epochs"]:
        raise UserError(f"--resume: --epochs cannot change once the distill-only epochs have begun "
                        f"(this run has --epochs={saved['epochs']} and has run {ckpt['epoch']} epochs)")


def main(args):
    run = Run("ideal", args, DEFINING, check=check_resume, before=BEFORE)
    spec = get_spec(args.dataset)
    teacher, teacher_acc, eval_set = open_teacher(args, spec, run)
    student = to_device(build_model(args.student_net, spec.channels, spec.size, spec.classes), run.device)
    pool = SyntheticPool(args.pool_batches * args.batch_size, labelled=not args.relabel_every_epoch)
    synthesizer = build_synthesizer(
        args.method, (spec.channels, spec.size, spec.size), spec.classes, run.device, args.prior_share,
        args.seed_share, pool, batch_size=args.batch_size, nz=args.nz, ngf=args.ngf, g_steps=args.g_steps,
        lr_g=args.lr_g, lambda_info=args.lambda_info, warm=args.warm_generator, candidates=args.candidates,
        autocast=run.autocast)
    optimizer = student_optimizer(student, args.lr, args.momentum, args.weight_decay)
    pending = load_labelled(run.dir, run.ckpt["epoch"] + 1, run.device) if run.resumed else None
    teacher = run.journal(teacher, at_least=pending["queries"] if pending else 0)
    parts = {"student": student, "optimizer": optimizer, "synthesizer": synthesizer, "pool": pool}
    state = run.restore(parts, new_state())
    state["budget_hit"] = state["budget_hit"] and teacher.remaining <= 0  # a larger budget reopens generation
    augment, clock = build_augment(args.distill_aug), Clock(run.device, state["phase_s"])
    print(f"IDEAL: {args.net} teacher ({teacher_acc:.2f}% test acc, {args.bb_mode}-label black box) -> "
          f"{args.student_net} student on {args.dataset}, {run.device}; run folder {run.dir}")
    for epoch in run.progress(state, args.epochs + args.distill_epochs):
        if pending is not None or (epoch <= args.epochs and teacher.remaining > 0):
            if pending is None:
                images = generate(synthesizer, student, clock)
                pending = label(run, teacher, images, synthesizer, clock, epoch)
            add_batch(pool, take(pending, synthesizer), state, run.writer, epoch, spec.classes)
            pending = None
        elif args.relabel_every_epoch and teacher.remaining <= 0:
            break  # relabel mode has no cached answers to train on without asking again
        if args.label_first and epoch < args.epochs:
            state["epoch"] = epoch
            run.save(state, parts)
            # the student trains from epoch --epochs on: 1 + --distill_epochs passes, budget spent early or not
            continue
        with clock("distill"):
            distilled = distill_epoch(args, student, optimizer, pool, augment, teacher, run.autocast)
        with clock("test"):
            tested = evaluate(student, *eval_set)
        end_epoch(run, state, parts, epoch, distilled, tested)
    summary = run.finish(make_summary(args, state, teacher, teacher_acc, run.device))
    print(f"student {args.student_net} on {args.dataset}: final {args.eval_split} accuracy {summary['final_acc']:.2f}% "
          f"(best {summary['best_acc']:.2f}%), teacher {teacher_acc:.2f}%, teacher queries {summary['queries']:,}, "
          f"synthetic samples {summary['samples']:,}, {summary['wall_s']:.0f}s; summary in {run.dir}/summary.json")
    return summary


def new_state() -> dict:
    return {"epoch": 0, "samples": 0, "best_acc": 0.0, "final_acc": 0.0, "wall_s": 0.0,
            "phase_s": dict.fromkeys(PHASES, 0.0), "budget_hit": False}


def open_teacher(args, spec, run):
    """The black box of --teacher_url or --teacher_ckpt, the teacher's test
    accuracy as its trainer (or provider) reported it, and the real images
    the student is scored on, (images, labels) on the run's device."""
    if args.teacher_url:
        teacher, acc = connect_teacher(args.teacher_url, (spec.channels, spec.size, spec.size), spec.classes,
                                       args.bb_mode, args.query_budget)
    else:
        teacher, acc = load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net, args.bb_mode,
                                             args.query_budget, run.device, args.trust_teacher_code, run.autocast)
    eval_set = [t.to(run.device) for t in load_eval_split(args.dataset, args.data_dir, args.eval_split)]
    return teacher, acc, eval_set


def generate(synthesizer, student, clock):
    """Step 1, zero queries: (images (B, C, H, W) in [0, 1], generator losses or None)."""
    with clock("generate"):
        return synthesizer.synthesize(student)


def label(run, teacher, made, synthesizer, clock, epoch):
    """Step 2: ask the teacher once per image (relabel mode asks later, in
    distill_relabel), and persist the batch the moment it is answered, before
    anything else can fail. Returns the batch as a resume would find it."""
    x, g_losses = made
    with clock("label"):
        images, answers = (affordable(teacher, x), None) if run.args.relabel_every_epoch else label_once(teacher, x)
        save_labelled(run.dir, epoch, images, answers, g_losses, teacher.queries, synthesizer.state_dict())
    return {"images": images, "answers": answers, "g_losses": g_losses}


def take(batch, synthesizer):
    """A batch a killed run labelled after its last.pt: the RNGs and the
    synthesizer go on from where labelling left them, so the run goes on
    exactly as the killed one would have. A fresh batch has nothing to restore."""
    if "rng" in batch:
        set_rng_state(batch["rng"])
        synthesizer.load_state_dict(batch.get("synthesizer"))
    return batch


def add_batch(pool, batch, state, writer, epoch, classes):
    """Into the pool; log the generator losses, an image grid and the teacher's labels."""
    pool.add(batch["images"], batch["answers"])
    state["samples"] += len(batch["images"])
    for name, value in (batch["g_losses"] or {}).items():
        writer.add_scalar(f"generator/{name}", value, epoch)
    writer.add_image("synthetic", make_grid(to_float(batch["images"][:64]), nrow=8), epoch)
    if batch["answers"] is not None:
        writer.add_histogram("teacher/labels", top1(batch["answers"]), epoch, bins=classes)


def distill_epoch(args, student, optimizer, pool, augment, teacher, autocast):
    """Step 3: one pass over the pool, on its cached answers (or, in relabel
    mode, asking the teacher again). Returns (mean loss, % agreement)."""
    if args.relabel_every_epoch:
        return distill_relabel(student, optimizer, pool, augment, args.batch_size, teacher, autocast)
    return distill(student, optimizer, pool, augment, args.batch_size, autocast)


def end_epoch(run, state, parts, epoch, distilled, tested):
    """Stop on a diverged student (last.pt keeps the last good epoch); log,
    checkpoint, and say once when the budget is spent."""
    (d_loss, d_agree), (test_loss, test_acc) = distilled, tested
    args, teacher = run.args, run.teacher
    check_diverged({"distillation loss": d_loss}, [parts["student"]], f"epoch {epoch}",
                   "start a new run with a lower --lr")
    if teacher.remaining <= 0 and not state["budget_hit"]:
        state["budget_hit"] = True
        tqdm.write(f"{budget_spent(args.query_budget, teacher.queries)} at epoch {epoch}: " + (
            "relabel mode has no cached answers, so the run ends after this epoch" if args.relabel_every_epoch
            else "no more generation; distilling on the pool already labelled"))
    best = parts["student"] if test_acc > state["best_acc"] else None
    state.update(epoch=epoch, final_acc=test_acc, best_acc=max(state["best_acc"], test_acc))
    log_test(run.writer, epoch, teacher.queries, test_loss, test_acc, args.eval_split)
    for name, value in (("loss", d_loss), ("agreement", d_agree), ("lr", args.lr)):
        run.writer.add_scalar(f"distill/{name}", value, epoch)
    for phase, seconds in state["phase_s"].items():
        run.writer.add_scalar(f"time/{phase}_s", seconds, epoch)
    run.bar.set_postfix(acc=f"{test_acc:.2f}", queries=f"{teacher.queries:,}")
    run.save(state, parts, best)


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
        "warm_generator": args.warm_generator, "candidates": args.candidates, "prior_share": args.prior_share,
        "seed_share": args.seed_share, "eval_split": args.eval_split,  # best_acc and final_acc are on this split
        "reference_code_queries": reference_code_queries(args.epochs, args.distill_epochs,
                                                         args.batch_size, args.pool_batches),
        "phase_s": {k: round(v, 1) for k, v in state["phase_s"].items()},
    }


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
