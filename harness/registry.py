"""The comparison harness's registries: the methods a sweep can run and the
teachers it can ask, each by name; an unknown name is refused where the
command line is read (benchmarks/compare.py)."""
from dataclasses import dataclass

from methods.synthesizers import SYNTHESIZERS


@dataclass(frozen=True)
class Method:
    script: str  # ideal.py or dfme.py
    flags: tuple  # what makes this method, on top of the shared flags
    per_budget: bool = False  # True when the schedule depends on the budget
    about: str = ""
    relabel: bool = False  # the reference code's re-querying: its epochs are those that spend the budget


DIPKD_EPOCHS = 100  # DIP-KD's student training on MNIST/FMNIST (its appendix: 100 epochs, lr 1e-2)
# DIP-KD's protocol: every image labelled first, then 100 epochs with shifts and colour jitter (ideal.py's
# --label_first also trains in the last labelling epoch: 101 passes in all)
DIPKD_TRAINING = ("--label_first", "--distill_aug=crop+jitter", f"--distill_epochs={DIPKD_EPOCHS}")
METHODS = {
    "ideal_cpu": Method("ideal.py", ("--method=ideal", "--preset=cpu"),
                        about="IDEAL, CPU preset (g_steps 10, ngf 16, lr_g 1e-2)"),
    "ideal_cpu_warm": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--warm_generator"),
                             about="IDEAL, CPU preset, generator kept warm across epochs (a lever, not the paper)"),
    "ideal_cpu_warm_k2": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--warm_generator", "--candidates=2"),
                                about="IDEAL, CPU preset, warm generator, 2x candidates with the teacher paid for the "
                                      "half the student is least sure of (levers, not the paper)"),
    "ideal_cpu_k2": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--candidates=2"),
                           about="IDEAL, CPU preset, 2x candidates, least sure half labelled (a lever, not the paper)"),
    "ideal_paper": Method("ideal.py", ("--method=ideal",),
                          about="IDEAL, the paper's settings (g_steps 30, ngf 64, lr_g 1e-3)"),
    "ideal_paper_warm": Method("ideal.py", ("--method=ideal", "--warm_generator"),
                               about="IDEAL, the paper's settings, generator kept warm across epochs (a lever)"),
    "ideal_cpu_soft": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--bb_mode=soft"),
                             about="IDEAL, CPU preset, with the teacher's probabilities instead of its top-1 label "
                                   "(a stronger black box: compare it with DFME, not with the hard-label rows)"),
    "ideal_cpu_relabel": Method("ideal.py", ("--method=ideal", "--preset=cpu", "--relabel_every_epoch"),
                                per_budget=True, relabel=True,
                                about="IDEAL, CPU preset, re-asking the teacher about every augmented pool image "
                                      "every epoch, as the reference code does (counted)"),
    "dfme": Method("dfme.py", (), per_budget=True,
                   about="DFME (soft labels, zeroth-order gradients through the teacher)"),
    "ideal_best": Method("ideal.py", ("--method=ideal", "--preset=best"),
                         about="IDEAL, --preset=best (configs/best.json: the CPU preset, warm generator on MNIST)"),
    "ideal_best_prior": Method("ideal.py", ("--method=ideal", "--preset=best", "--prior_share=0.5"),
                               about="IDEAL, --preset=best, half of every batch DIP-KD image priors (a lever)"),
    "ideal_best_prior_k2": Method("ideal.py", ("--method=ideal", "--preset=best", "--prior_share=0.5",
                                              "--candidates=2"),
                                  about="IDEAL, --preset=best, B generator images and B image priors as candidates, "
                                        "the B the student is least sure of labelled (levers)"),
    "ideal_best_prior_k3": Method("ideal.py", ("--method=ideal", "--preset=best", "--candidates=3",
                                              "--prior_share=0.6667"),
                                  about="IDEAL, --preset=best, B generator images and 2B image priors as candidates, "
                                        "the B the student is least sure of labelled (the control of "
                                        "ideal_best_prior_seed_k3: as many candidates, no pool seeds)"),
    "ideal_best_prior_seed_k3": Method("ideal.py", ("--method=ideal", "--preset=best", "--candidates=3",
                                                    "--prior_share=0.3333", "--seed_share=0.3333"),
                                       about="IDEAL, --preset=best, B generator images, B image priors and B "
                                             "pool images redrawn class-balanced (rare classes as often as the "
                                             "rest) as candidates, the B the student is least sure of labelled "
                                             "(levers)"),
    # The literature's baselines as DIP-KD trains its students: every image labelled, then 100
    # epochs at a constant lr 0.01 with random shifts and colour jitter (their appendix; here in
    # batches of B=250, not 100, and on 28x28 images, not 32x32)
    "naive": Method("ideal.py", ("--method=noise", *DIPKD_TRAINING),
                    per_budget=True, about="NaiveKD: uniform noise labelled once, then DIP-KD's 100 epochs"),
    "prior_kd": Method("ideal.py", ("--method=prior", *DIPKD_TRAINING),
                       per_budget=True, about="DIP-KD's Synthesis phase alone: image priors labelled once, "
                                              "then DIP-KD's 100 epochs"),
}
# Every registered synthesizer is a method under its own name, in IDEAL's loop with the
# paper's settings, unless a method above has that name or is exactly that (ideal_paper is "ideal").
for _name, _cls in SYNTHESIZERS.items():
    if _name not in METHODS and not any(m.flags == (f"--method={_name}",) for m in METHODS.values()):
        METHODS[_name] = Method("ideal.py", (f"--method={_name}",),
                                about=" ".join((_cls.__doc__ or _name).split("\n\n")[0].split()))
DEFAULT_METHODS = ("ideal_cpu", "ideal_cpu_warm", "noise", "random_generator", "ideal_paper", "dfme")
BUDGETS = {"mnist": (5000, 10000, 25000), "fmnist": (5000, 10000, 25000, 50000)}


@dataclass(frozen=True)
class Teacher:
    """A teacher of the sweep: its file under SAVE_DIR/teachers ({dataset} is
    filled in), the command that trains it (a script and its flags; {epochs}
    is filled in per dataset), and the flags ideal.py and dfme.py need to ask it."""
    file: str
    train: tuple
    epochs: dict
    flags: tuple = ()
    about: str = ""
    recipe: str = ""  # teachers of one recipe: their rows are also pooled (recipe_rows)


def recipe_seed(seed):
    """The README's recipe with another pretraining seed: the spread a new user
    meets, whose teacher is trained afresh (and differs in its last bits anyway)."""
    return Teacher(f"{{dataset}}_{{net}}_s{seed}.pt", ("pretrain.py", "--net={net}", f"--seed={seed}"),
                   {"mnist": 3, "fmnist": 10}, recipe="main",
                   about=f"--net, the README's recipe with pretraining seed {seed}")


TEACHERS = {
    # the README's recipe (SGD, one-cycle), the quickstart's teacher
    "main": Teacher("{dataset}_{net}.pt", ("pretrain.py", "--net={net}"), {"mnist": 3, "fmnist": 10}, recipe="main",
                    about="--net, the README's recipe (SGD with a one-cycle schedule, seed 2021)"),
    "main_s2022": recipe_seed(2022),
    "main_s2023": recipe_seed(2023),
    # the reference's recipe: constant lr 0.1, no weight decay, and another seed
    "sgd": Teacher("{dataset}_{net}_sgd.pt", ("pretrain.py", "--net={net}", "--schedule=none", "--lr=0.1",
                                               "--weight_decay=0", "--seed=7"), {"mnist": 5, "fmnist": 12},
                   about="--net, plain SGD at a constant lr 0.1 (the reference's), no weight decay, seed 7"),
    # an architecture the registry does not have, reached as a torch.export program
    # DIP-KD's recipe for its teachers (and students): shifts and colour jitter, SGD at a
    # constant lr 0.01, batch 100; 20 epochs here, not their 100, for the CPU, and 28x28, not 32x32
    "dipkd": Teacher("{dataset}_{net}_dipkd.pt", ("pretrain.py", "--net={net}", "--augment=crop+jitter",
                                                   "--schedule=none", "--lr=0.01", "--batch_size=100"),
                     {"mnist": 20, "fmnist": 20},
                     about="--net, DIP-KD's recipe (shifts, colour jitter, constant lr 0.01, batch 100), 20 epochs"),
    # DIP-KD's own teacher network too: LeNet-5 without batch norm (models/lenet.py), the same
    # recipe; the student stays --net
    "dipkd_lenet5": Teacher("{dataset}_lenet5_dipkd.pt", ("pretrain.py", "--net=lenet5", "--augment=crop+jitter",
                                                          "--schedule=none", "--lr=0.01", "--batch_size=100"),
                            {"mnist": 20, "fmnist": 20}, flags=("--net=lenet5", "--student_net={net}"),
                            about="LeNet-5 without batch norm, DIP-KD's recipe, 20 epochs; the student is --net"),
    "resmax": Teacher("{dataset}_resmax.pt2", ("scripts/export_teacher.py",), {"mnist": 2, "fmnist": 2},
                      flags=("--trust_teacher_code",),
                      about="ResMax (scripts/export_teacher.py), a torch.export .pt2 of another architecture"),
}
# flags whose effect depends on the run's length: with them a run stopped early
# is not the run at a smaller budget
BUDGET_DEPENDENT = {"--distill_epochs", "--epochs", "--relabel_every_epoch"}
RUN_KIND = {"ideal.py": "ideal", "dfme.py": "dfme"}  # the run folder kind each script uses
