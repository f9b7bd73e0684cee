"""DFME baseline (Truong et al., CVPR 2021): data-free model extraction from a
soft-label black box, with the teacher's gradients estimated by forward differences.

    python dfme.py --dataset=mnist --net=lenet --query_budget=2000000

The run does floor(budget / queries per iteration) whole iterations (see
methods/dfme.py) and lays its learning-rate schedule over them, so the budget
is required. Every eval_every iterations (DFME's 50-iteration "epoch") the
student is tested on the real test set and last.pt is written; the "epoch" of
the TensorBoard curves and summary.json's epochs_run count these evaluations.
"""
import argparse
import os
import time

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from datasets import DATASETS, DatasetError, get_spec, load_split
from methods import Clock
from methods.dfme import DFME, LR_DECAY, LR_STEPS, iterations_for_budget, queries_per_iteration
from models import MODELS, Generator, ModelError, build_model
from models.registry import check_fits
from utils.checks import check_common, check_diverged, check_memory, check_positive, generator_sizes
from utils.evaluation import evaluate
from utils.report import base_summary, log_test
from utils.resume import JournaledTeacher, paid_queries
from utils.run import (UserError, load_checkpoint, make_run_dir, pick_device, rng_state, run_cli,
                       save_args, save_checkpoint, save_json, seed_everything, set_rng_state, single_process,
                       to_device)
from utils.teacher import default_teacher_path, load_blackbox_teacher

PHASES = ("generate", "distill", "test")
# The flags that define a run: --resume refuses a command line that changes them.
RUN_KEYS = ("dataset", "net", "student_net", "query_budget", "batch_size", "nz", "ngf", "lr_s", "lr_g",
            "g_iter", "d_iter", "grad_m", "grad_epsilon", "lr_steps", "lr_decay", "seed")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="DFME: data-free model extraction from a soft-label black box.")
    p.add_argument("--dataset", default="mnist", choices=sorted(DATASETS))
    p.add_argument("--net", default="lenet", choices=sorted(MODELS), help="the teacher's architecture")
    p.add_argument("--student_net", default=None, choices=sorted(MODELS), help="default: same as --net")
    p.add_argument("--query_budget", type=int, default=None,
                   help="teacher queries (required): the run does as many whole iterations as fit, "
                        "and the LR schedule is laid out over them (DFME: 20M for CIFAR10, 2M for SVHN)")
    p.add_argument("--batch_size", type=int, default=256, help="B: generator images per step (DFME: 256)")
    p.add_argument("--nz", type=int, default=256, help="generator latent size (DFME: 256)")
    p.add_argument("--ngf", type=int, default=64, help="generator width (DFME: 64)")
    p.add_argument("--lr_s", type=float, default=0.1, help="student SGD learning rate (DFME: 0.1)")
    p.add_argument("--lr_g", type=float, default=1e-4, help="generator Adam learning rate (DFME: CIFAR10 1e-4, SVHN 5e-5)")
    p.add_argument("--g_iter", type=int, default=1, help="generator steps per iteration (DFME: 1)")
    p.add_argument("--d_iter", type=int, default=5, help="student steps per iteration (DFME: 5)")
    p.add_argument("--grad_m", type=int, default=1,
                   help="random directions per image in the gradient estimate; each costs B queries (DFME: 1)")
    p.add_argument("--grad_epsilon", type=float, default=1e-3, help="forward-difference step (DFME: 1e-3)")
    p.add_argument("--lr_steps", type=float, nargs="+", default=list(LR_STEPS),
                   help="fractions of the run at which both learning rates drop (DFME: CIFAR10 0.1 0.3 0.5, SVHN 0.5 0.8)")
    p.add_argument("--lr_decay", type=float, default=LR_DECAY, help="factor at each of --lr_steps (DFME: 0.3)")
    p.add_argument("--eval_every", type=int, default=50,
                   help="iterations between test evaluations and checkpoints (DFME tests every 50); "
                        "the last iteration is always evaluated")
    p.add_argument("--teacher_ckpt", default=None, help="default: SAVE_DIR/teachers/DATASET_NET.pt from pretrain.py")
    p.add_argument("--seed", type=int, default=2021)
    p.add_argument("--data_dir", default="data", help="where the real test set is found (or fetched to)")
    p.add_argument("--save_dir", default="runs", help="run folders go to SAVE_DIR/dfme/EXP_NAME")
    p.add_argument("--exp_name", default=None, help="run folder name (default: DATASET_NET_STUDENT)")
    p.add_argument("--device", default="auto", help="auto (CUDA if visible, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in SAVE_DIR/dfme/EXP_NAME")
    return resolve_args(p.parse_args(argv))


def resolve_args(args):
    """Fill the defaults that depend on other flags; reject impossible settings."""
    if args.query_budget is None:
        raise UserError("--query_budget is required: DFME's schedule is laid out over the iterations it pays for")
    for name in ("query_budget", "batch_size", "nz", "ngf", "g_iter", "d_iter", "grad_m", "eval_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if not all(0 <= f <= 1 for f in args.lr_steps):
        raise UserError("--lr_steps are fractions of the run, each between 0 and 1")
    per_iteration = queries_per_iteration(args.batch_size, args.g_iter, args.d_iter, args.grad_m)
    if args.query_budget < per_iteration:
        raise UserError(f"--query_budget {args.query_budget} does not pay for one DFME iteration "
                        f"({per_iteration} queries at this batch_size, g_iter, d_iter and grad_m)")
    check_positive(args, "lr_s", "lr_g", "grad_epsilon", "lr_decay")
    check_common(args)  # every float finite, the seed, the run name, the save folder
    check_memory(generator_sizes(args.nz, args.ngf, get_spec(args.dataset).size, args.batch_size * (args.grad_m + 1)))
    args.bb_mode = "soft"  # DFME trains on the teacher's probabilities
    args.student_net = args.student_net or args.net
    args.exp_name = args.exp_name or f"{args.dataset}_{args.net}_{args.student_net}"
    args.teacher_ckpt = args.teacher_ckpt or default_teacher_path(args.save_dir, args.dataset, args.net)
    return args


def main(args):
    single_process("dfme.py")
    device = pick_device(args.device)
    seed_everything(args.seed)
    spec = get_spec(args.dataset)
    for net in (args.net, args.student_net):
        check_fits(net, spec.size)
    teacher, teacher_acc = load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net,
                                                 args.bb_mode, args.query_budget, device)
    test_images, test_labels = (t.to(device) for t in load_split(args.dataset, args.data_dir, train=False))
    student = to_device(build_model(args.student_net, spec.channels, spec.size, spec.classes), device)
    generator = to_device(Generator(args.nz, args.ngf, spec.channels, spec.size), device)
    iterations = iterations_for_budget(args.query_budget, args.batch_size, args.g_iter, args.d_iter, args.grad_m)
    run_dir = make_run_dir(args.save_dir, "dfme", args.exp_name, args.resume)
    teacher = JournaledTeacher(teacher, run_dir)  # its count survives a kill in the middle of a call
    dfme = DFME(student, generator, teacher, iterations, batch_size=args.batch_size, nz=args.nz,
                lr_s=args.lr_s, lr_g=args.lr_g, g_iter=args.g_iter, d_iter=args.d_iter, grad_m=args.grad_m,
                grad_epsilon=args.grad_epsilon, lr_steps=args.lr_steps, lr_decay=args.lr_decay)
    state = {"iteration": 0, "epoch": 0, "samples": 0, "best_acc": 0.0, "final_acc": 0.0, "wall_s": 0.0,
             "phase_s": dict.fromkeys(PHASES, 0.0)}
    if args.resume:
        state = resume(run_dir, args, device, dfme, teacher)
    save_args(args, run_dir)
    writer = SummaryWriter(run_dir)
    clock = Clock(device, state["phase_s"])
    print(f"DFME: {args.net} teacher ({teacher_acc:.2f}% test acc, soft-label black box) -> "
          f"{args.student_net} student on {args.dataset}, {device}; {iterations} iterations of "
          f"{dfme.queries_per_iteration} queries; run folder {run_dir}")
    t0 = time.time() - state["wall_s"]
    bar = tqdm(range(state["iteration"] + 1, iterations + 1), desc="dfme", initial=state["iteration"],
               total=iterations)
    def test_and_save(iteration, losses):
        with clock("test"):
            test_loss, test_acc = evaluate(student, test_images, test_labels)
        # samples: generator images made (each generator-step image is probed grad_m + 1 times)
        state.update(iteration=iteration, epoch=state["epoch"] + 1, final_acc=test_acc, tested_at=iteration,
                     best_acc=max(state["best_acc"], test_acc), wall_s=time.time() - t0,
                     samples=iteration * args.batch_size * (args.g_iter + args.d_iter))
        log_evaluation(writer, state["epoch"], teacher.queries, clock.totals, losses, dfme, test_loss, test_acc)
        bar.set_postfix(acc=f"{test_acc:.2f}", queries=f"{teacher.queries:,}")
        save_run(run_dir, args, state, dfme, teacher)

    for iteration in bar:
        if teacher.remaining < dfme.queries_per_iteration:  # a resume re-paid a killed iteration
            tqdm.write(f"query budget of {args.query_budget} spent after {iteration - 1} iterations")
            if state.get("tested_at") != state["iteration"]:
                test_and_save(state["iteration"], None)
            break
        losses = dfme.step(clock)
        check_diverged(losses, [dfme.student, dfme.generator], f"iteration {iteration}",
                       "start a new run with a lower --lr_s or --lr_g, or a larger --grad_epsilon")
        if iteration % args.eval_every and iteration < iterations \
                and teacher.remaining >= dfme.queries_per_iteration:
            # last.pt every iteration: a kill re-pays at most the one iteration it interrupted
            state.update(iteration=iteration, wall_s=time.time() - t0)
            save_run(run_dir, args, state, dfme, teacher)
            continue
        test_and_save(iteration, losses)
    writer.close()
    summary = make_summary(args, state, teacher, teacher_acc, device, dfme)
    save_json(summary, os.path.join(run_dir, "summary.json"))
    print(f"student {args.student_net} on {args.dataset}: final test accuracy {summary['final_acc']:.2f}% "
          f"(best {summary['best_acc']:.2f}%), teacher {teacher_acc:.2f}%, "
          f"teacher queries {summary['queries']:,} in {summary['iterations']:,} iterations, "
          f"{summary['wall_s']:.0f}s; summary in {run_dir}/summary.json")
    return summary


def log_evaluation(writer, index, queries, phase_s, losses, dfme, test_loss, test_acc):
    """The shared test tags, plus DFME's last losses, learning rates and phase times."""
    log_test(writer, index, queries, test_loss, test_acc)
    for name, value in (losses or {}).items():  # None when the run resumed straight into its end
        writer.add_scalar(f"loss/{name}", value, index)
    writer.add_scalar("lr/student", dfme.optimizer_s.param_groups[0]["lr"], index)
    writer.add_scalar("lr/generator", dfme.optimizer_g.param_groups[0]["lr"], index)
    for phase, seconds in phase_s.items():
        writer.add_scalar(f"time/{phase}_s", seconds, index)


def run_config(args) -> dict:
    return {key: getattr(args, key) for key in RUN_KEYS}


def save_run(run_dir, args, state, dfme, teacher):
    """last.pt: everything a resume needs, and the settings that define the run."""
    save_checkpoint({"dfme": dfme.state_dict(), "config": run_config(args), "queries": teacher.queries,
                     "rng": rng_state(), **state}, os.path.join(run_dir, "last.pt"))


def resume(run_dir, args, device, dfme, teacher):
    """Restore last.pt into `dfme` and the RNGs; returns the run state. The
    schedule depends on the budget and the iteration's cost, so a command line
    that changes them (or any other setting of the run) is refused."""
    ckpt = load_checkpoint(os.path.join(run_dir, "last.pt"), device)
    changed = [f"--{key} {ckpt['config'][key]} -> {value}" for key, value in run_config(args).items()
               if ckpt["config"][key] != value]
    if changed:
        raise UserError(f"--resume: {run_dir} was started with other settings ({'; '.join(changed)})")
    dfme.load_state_dict(ckpt.pop("dfme"))
    set_rng_state(ckpt.pop("rng"))
    # paid for by the interrupted run: the write-ahead count also covers a call cut short by the kill
    teacher.queries = max(ckpt.pop("queries"), paid_queries(run_dir))
    ckpt.pop("config")
    return ckpt


def make_summary(args, state, teacher, teacher_acc, device, dfme):
    return {
        **base_summary("dfme", args, state, teacher.queries, teacher_acc, device),
        "iterations": state["iteration"], "queries_per_iteration": dfme.queries_per_iteration,
        "batch_size": args.batch_size, "g_iter": args.g_iter, "d_iter": args.d_iter, "grad_m": args.grad_m,
        "lr_s": args.lr_s, "lr_g": args.lr_g,
        "phase_s": {k: round(v, 1) for k, v in state["phase_s"].items()},
    }


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
