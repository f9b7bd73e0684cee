"""DFME baseline (Truong et al., CVPR 2021): data-free model extraction from a
soft-label black box, with the teacher's gradients estimated by forward differences.

    python dfme.py --dataset=mnist --net=lenet --query_budget=2000000

Whole iterations the budget pays for, LR schedule over them; last.pt each one."""
import argparse

from tqdm import tqdm

from datasets import DatasetError, get_spec, load_split
from methods import Clock
from methods.dfme import DFME, LR_DECAY, LR_STEPS, iterations_for_budget, queries_per_iteration
from models import Generator, ModelError, build_model
from utils.checks import check_diverged, check_flags, check_ranges
from utils.cli import add_models, add_run, add_teacher_file, name_the_run
from utils.evaluation import evaluate
from utils.experiment import Run
from utils.report import base_summary, log_test
from utils.run import UserError, run_cli, to_device
from utils.teacher import file_sha256, load_blackbox_teacher

PHASES = ("generate", "distill", "test")
SETTINGS = ("batch_size", "nz", "lr_s", "lr_g", "g_iter", "d_iter", "grad_m", "grad_epsilon", "lr_steps", "lr_decay")
DEFINING = ("dataset", "net", "student_net", "query_budget", "ngf", "seed", *SETTINGS)  # a resume may change none


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="DFME: data-free model extraction from a soft-label black box.")
    dfme = p.add_argument_group("DFME's settings")
    add_models(dfme)
    dfme.add_argument("--query_budget", type=int, default=None, help="teacher queries (required; DFME: CIFAR10 20M)")
    dfme.add_argument("--batch_size", type=int, default=256, help="B: generator images per step (DFME: 256)")
    dfme.add_argument("--nz", type=int, default=256, help="generator latent size (DFME: 256)")
    dfme.add_argument("--ngf", type=int, default=64, help="generator width (DFME: 64)")
    dfme.add_argument("--lr_s", type=float, default=0.1, help="student SGD learning rate (DFME: 0.1)")
    dfme.add_argument("--lr_g", type=float, default=1e-4, help="generator Adam rate (DFME: CIFAR10 1e-4, SVHN 5e-5)")
    dfme.add_argument("--g_iter", type=int, default=1, help="generator steps per iteration (DFME: 1)")
    dfme.add_argument("--d_iter", type=int, default=5, help="student steps per iteration (DFME: 5)")
    dfme.add_argument("--grad_m", type=int, default=1, help="random directions per image, B queries each (DFME: 1)")
    dfme.add_argument("--grad_epsilon", type=float, default=1e-3, help="forward-difference step (DFME: 1e-3)")
    dfme.add_argument("--lr_steps", type=float, nargs="+", default=list(LR_STEPS),
                      help="fractions of the run where both rates drop (DFME: CIFAR10 0.1 0.3 0.5)")
    dfme.add_argument("--lr_decay", type=float, default=LR_DECAY, help="factor at each of --lr_steps (DFME: 0.3)")
    run = p.add_argument_group("the run")
    add_teacher_file(run)
    run.add_argument("--eval_every", type=int, default=50, help="iterations between tests (DFME: 50); the last is")
    add_run(run, "dfme")
    return resolve_args(p.parse_args(argv))


def resolve_args(args):  # the defaults that follow from other flags; impossible settings refused
    if args.query_budget is None:
        raise UserError("--query_budget is required: DFME's schedule is laid out over the iterations it pays for")
    check_ranges(args, at_least_one=("query_budget", "batch_size", "nz", "ngf", "g_iter", "d_iter", "grad_m",
                                     "eval_every"), positive=("lr_s", "lr_g", "grad_epsilon", "lr_decay"))
    if not all(0 <= f <= 1 for f in args.lr_steps):
        raise UserError("--lr_steps are fractions of the run, each between 0 and 1")
    per_iteration = queries_per_iteration(args.batch_size, args.g_iter, args.d_iter, args.grad_m)
    if args.query_budget < per_iteration:
        raise UserError(f"--query_budget {args.query_budget} does not pay for one DFME iteration "
                        f"({per_iteration} queries at this batch_size, g_iter, d_iter and grad_m)")
    args.bb_mode = "soft"  # DFME trains on the teacher's probabilities
    name_the_run(args)
    args.teacher_sha256 = file_sha256(args.teacher_ckpt)  # which teacher file answered (compare.py's rows)
    check_flags(args, args.batch_size * (args.grad_m + 1))  # finite floats, names, sizes, memory
    return args


def check_resume(args, saved, ckpt, queries):
    """The same teacher file as the run began with: one run, one teacher (as ideal.py)."""
    if saved.get("teacher_sha256") and saved["teacher_sha256"] != args.teacher_sha256:
        raise UserError(f"--resume: the teacher file {args.teacher_ckpt} is not the one this run began with "
                        "(its sha256 differs); a student distilled from two teachers is no run, start a new one")


def main(args):
    run = Run("dfme", args, DEFINING, check=check_resume)
    spec = get_spec(args.dataset)
    teacher, teacher_acc = load_blackbox_teacher(args.teacher_ckpt, args.dataset, args.net, args.bb_mode,
                                                 args.query_budget, run.device, args.trust_teacher_code)
    test_set = [t.to(run.device) for t in load_split(args.dataset, args.data_dir, train=False)]
    student = to_device(build_model(args.student_net, spec.channels, spec.size, spec.classes), run.device)
    generator = to_device(Generator(args.nz, args.ngf, spec.channels, spec.size), run.device)
    iterations = iterations_for_budget(args.query_budget, args.batch_size, args.g_iter, args.d_iter, args.grad_m)
    dfme = DFME(student, generator, run.journal(teacher), iterations, **{k: getattr(args, k) for k in SETTINGS})
    state = run.restore({"dfme": dfme}, {"iteration": 0, "epoch": 0, "samples": 0, "best_acc": 0.0, "final_acc": 0.0,
                                         "wall_s": 0.0, "tested_at": None, "phase_s": dict.fromkeys(PHASES, 0.0)})
    clock = Clock(run.device, state["phase_s"])
    print(f"DFME: {iterations} iterations of {dfme.queries_per_iteration} queries on {run.device}, folder {run.dir}")
    for iteration in run.progress(state, iterations, key="iteration"):
        if run.teacher.remaining < dfme.queries_per_iteration:  # a resume re-paid a killed iteration
            tqdm.write(f"query budget of {args.query_budget} spent after {iteration - 1} iterations")
            if state["tested_at"] != state["iteration"]:
                test_and_save(run, state, dfme, test_set, clock, state["iteration"], None)
            break
        losses = dfme.step(clock)
        check_diverged(losses, [dfme.student, dfme.generator], f"iteration {iteration}", "lower --lr_s or --lr_g")
        state.update(iteration=iteration)
        last = iteration == iterations or run.teacher.remaining < dfme.queries_per_iteration
        if iteration % args.eval_every and not last:
            run.save(state, {"dfme": dfme})
            continue
        test_and_save(run, state, dfme, test_set, clock, iteration, losses)
    summary = run.finish(make_summary(args, state, run.teacher, teacher_acc, run.device, dfme))
    print(f"final test accuracy {summary['final_acc']:.2f}%, {summary['queries']:,} queries: {run.dir}/summary.json")
    return summary


def test_and_save(run, state, dfme, test_set, clock, iteration, losses):
    """Test the student; log the shared test tags, DFME's last losses, rates
    and phase times (losses None: the run resumed straight into its end); save."""
    with clock("test"):
        test_loss, test_acc = evaluate(dfme.student, *test_set)
    # samples: generator images made (each generator-step image is probed grad_m + 1 times)
    state.update(iteration=iteration, epoch=state["epoch"] + 1, final_acc=test_acc, tested_at=iteration,
                 best_acc=max(state["best_acc"], test_acc), samples=iteration * run.args.batch_size * (
                     run.args.g_iter + run.args.d_iter))
    log_test(run.writer, state["epoch"], run.teacher.queries, test_loss, test_acc)
    for tag, value in [*((f"loss/{name}", v) for name, v in (losses or {}).items()),
                       *((f"lr/{n}", o.param_groups[0]["lr"]) for n, o in (("student", dfme.optimizer_s),
                                                                            ("generator", dfme.optimizer_g))),
                       *((f"time/{phase}_s", s) for phase, s in clock.totals.items())]:
        run.writer.add_scalar(tag, value, state["epoch"])
    run.bar.set_postfix(acc=f"{test_acc:.2f}", queries=f"{run.teacher.queries:,}")
    run.save(state, {"dfme": dfme})


def make_summary(args, state, teacher, teacher_acc, device, dfme):
    return {**base_summary("dfme", args, state, teacher.queries, teacher_acc, device),
            "iterations": state["iteration"], "queries_per_iteration": dfme.queries_per_iteration,
            **{k: getattr(args, k) for k in SETTINGS[:7]},
            "phase_s": {k: round(v, 1) for k, v in state["phase_s"].items()}}


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()), errors=(DatasetError, ModelError))
