"""Synthesizers: each makes one batch of images in [0, 1] with zero teacher
queries. They take their hyperparameters in the constructor, so a script only
composes them, and `synthesize(student)` returns (images (B, C, H, W) float,
generator losses as {"loss", "ce", "info"} or None).

- IdealSynthesizer: IDEAL step 1, a fresh generator trained against the student.
- RandomGeneratorSynthesizer: the same fresh generator, not trained. The
  ablation of what IDEAL's zero-query generator training buys.
- NoiseSynthesizer: uniform noise, the naive baseline of the literature.
- PriorSynthesizer (methods/priors.py): DIP-KD's procedural image priors.
- RareSeedSynthesizer: pool images redrawn, every class the teacher has named
  alike; a source of candidates beside the generator (--seed_share).
- MixedSynthesizer: one batch made of the batches of several synthesizers.
"""
import inspect
import math
from contextlib import nullcontext

import torch

from methods.priors import PriorSynthesizer, nonlinear_transform
from methods.steps import frozen
from models import Generator, init_generator_
from utils.augment import build_augment
from utils.losses import balanced_targets, generator_loss
from utils.pool import to_float, top1
from utils.run import UserError, to_device

SYNTHESIZERS = {}  # name -> class, filled by @register; ideal.py --method and harness/registry.py read it


def register(name: str):
    """Class decorator: make the synthesizer `--method=NAME` of ideal.py and a method of compare.py."""
    def add(cls):
        SYNTHESIZERS[name] = cls
        return cls
    return add


@register("ideal")
class IdealSynthesizer:
    """A freshly initialised generator, trained for g_steps Adam steps so that
    the frozen student assigns its images to balanced targets with high
    entropy; the batch of the lowest-loss step is returned. The forward passes
    of G and S run under `autocast()` (see utils.run.amp_autocast).

    warm=True (a lever, not the paper): the generator and its Adam state are
    initialised once and carried from batch to batch, each batch drawing a
    fresh z. A fresh generator needs many steps to reach the targets of a
    student that grows sharper every epoch; a warm one starts near them.

    candidates=k > 1 (a lever, not the paper): the generator is trained on
    k*B images and only the B that the student is least sure of are returned
    (see least_sure), so the teacher is paid for the most informative ones.
    k multiplies the generator's cost, never the queries."""

    def __init__(self, generator, nz: int, batch_size: int, classes: int, g_steps: int = 30,
                 lr_g: float = 1e-3, lambda_info: float = 5.0, augment: str = "crop+flip",
                 autocast=nullcontext, warm: bool = False, candidates: int = 1):
        self.generator, self.nz, self.batch_size, self.classes = generator, nz, batch_size, classes
        self.g_steps, self.lr_g, self.lambda_info, self.autocast = g_steps, lr_g, lambda_info, autocast
        self.warm, self.optimizer, self.candidates = warm, None, candidates
        # no labels are involved here, so the spec's crop+flip is safe on every dataset
        self.augment = build_augment(augment)

    def new_optimizer(self):
        """A new Adam for the generator (draws no random numbers)."""
        device = next(self.generator.parameters()).device
        # fused: one kernel for all parameters instead of a loop over them (docs/PERFORMANCE.md)
        return torch.optim.Adam(self.generator.parameters(), lr=self.lr_g, betas=(0.5, 0.999),
                                fused=device.type in ("cpu", "cuda"))

    def synthesize(self, student):
        device = next(self.generator.parameters()).device
        if self.optimizer is None or not self.warm:
            init_generator_(self.generator)
            self.optimizer = self.new_optimizer()
        optimizer = self.optimizer
        self.generator.train()
        z = torch.randn(self.batch_size * self.candidates, self.nz, device=device)
        targets = balanced_targets(len(z), self.classes, device)
        best_loss, best = math.inf, None
        with frozen(student):
            for _ in range(self.g_steps):
                with self.autocast():
                    x = self.generator(z)
                    loss, ce, info = generator_loss(student(self.augment(x)), targets, self.lambda_info)
                if loss.item() < best_loss:  # compared before the step, as the spec says
                    # .float(): under bf16 autocast x is bf16; the pool quantises float32 (a no-op without)
                    best_loss, best = loss.item(), (x.detach().float(), ce.item(), info.item())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        if best is None:  # NaN or inf at every step: nothing worth paying the teacher for
            raise UserError(f"the generator loss was not finite at any of {self.g_steps} steps (a diverged "
                            "student, or a bad --lambda_info/--lr_g); no query was made")
        x, ce, info = best
        if self.candidates > 1:
            with self.autocast():
                x = x[least_sure(student, x, targets, self.batch_size, self.classes)]
        return x, {"loss": best_loss, "ce": ce, "info": info}

    def state_dict(self):
        """What a resume needs: nothing for a fresh generator (re-initialised
        every batch), the generator and its Adam state for a warm one."""
        if not self.warm or self.optimizer is None:
            return None
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state) -> None:
        if state is None:
            return
        self.generator.load_state_dict(state["generator"])
        self.optimizer = self.new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])


@torch.no_grad()
def least_sure(student, x: torch.Tensor, targets: torch.Tensor, keep: int, classes: int) -> torch.Tensor:
    """Indices (ascending) of `keep` images of x: per generator target class,
    as many as balanced_targets(keep, classes) gives it, the ones whose frozen-student
    prediction has the highest entropy. Balanced, so that uncertainty cannot
    empty a class out of the pool."""
    with frozen(student):
        probs = student(x).float().softmax(1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    quota = torch.bincount(balanced_targets(keep, classes), minlength=classes).tolist()
    chosen = []
    for c in range(classes):  # one step per class, not per sample
        members = torch.nonzero(targets == c).squeeze(1)
        chosen.append(members[entropy[members].argsort(descending=True)[:quota[c]]])
    return torch.cat(chosen).sort().values


class Stateless:
    """A synthesizer that carries nothing from one batch to the next."""

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass


@register("random_generator")
class RandomGeneratorSynthesizer(Stateless):
    """The IDEAL generator, freshly initialised every batch and never trained:
    one forward pass (BatchNorm in train mode, as in IDEAL's first step),
    under `autocast()`."""

    def __init__(self, generator, nz: int, batch_size: int, autocast=nullcontext):
        self.generator, self.nz, self.batch_size, self.autocast = generator, nz, batch_size, autocast

    @torch.no_grad()
    def synthesize(self, student=None):
        device = next(self.generator.parameters()).device
        init_generator_(self.generator).train()
        with self.autocast():
            x = self.generator(torch.randn(self.batch_size, self.nz, device=device))
        return x.float(), None


@register("noise")
class NoiseSynthesizer(Stateless):
    """Images of i.i.d. uniform pixels in [0, 1]."""

    def __init__(self, batch_size: int, shape: tuple, device):
        self.batch_size, self.shape, self.device = batch_size, tuple(shape), device

    def synthesize(self, student=None):
        return torch.rand(self.batch_size, *self.shape, device=self.device), None


class RareSeedSynthesizer(Stateless):
    """Images the teacher has already answered, redrawn: each picks a pool image
    with probability proportional to (times the teacher named its class in the
    pool) ** -power, so the classes the teacher seldom names are drawn as often
    as the rest, and moves it by a mild rotation and elastic warp (DIP-KD's
    nonlinear transform, gentler: the image should keep its class). The
    teacher's rare answers sit in small regions that the generator seldom
    finds again; these candidates start from inside them. Every image is new,
    so it is paid for like any other (and only if selected). Before the pool
    holds anything, image priors stand in. The pool must keep the teacher's
    answers (ideal.py refuses --seed_share with --relabel_every_epoch)."""

    def __init__(self, pool, batch_size: int, shape: tuple, device, classes: int, power: float = 1.0,
                 max_degrees: float = 15.0, elastic_alpha: float = 8.0, elastic_sigma: float = 4.0):
        self.pool, self.batch_size, self.shape, self.device = pool, batch_size, tuple(shape), device
        self.classes, self.power = classes, power
        self.max_degrees, self.elastic_alpha, self.elastic_sigma = max_degrees, elastic_alpha, elastic_sigma

    def synthesize(self, student=None):
        if len(self.pool) == 0:  # the first epoch
            return PriorSynthesizer(self.batch_size, self.shape, self.device).sample(self.batch_size), None
        answers = top1(self.pool.answers)
        counts = torch.bincount(answers, minlength=self.classes).float()
        picked = torch.multinomial(counts[answers] ** -self.power, self.batch_size, replacement=True)
        x = to_float(self.pool.images[picked].to(self.device))
        x = nonlinear_transform(x, self.shape[1], self.max_degrees, self.elastic_alpha, self.elastic_sigma)
        return x.clamp_(0, 1), None


class MixedSynthesizer:
    """The batches of several synthesizers, one after the other, as one batch;
    the generator losses are the first part's. Its state is its parts'.

    keep=B (with classes): the parts are candidates, and only the B the student
    is least sure of are returned (see least_sure), balanced over classes: the
    first part's images by the generator's balanced targets, the others' by the
    student's own prediction. No query is made for the ones left out."""

    def __init__(self, *parts, keep: int = 0, classes: int = 0):
        self.parts, self.keep, self.classes = parts, keep, classes

    def synthesize(self, student):
        made = [part.synthesize(student) for part in self.parts]
        x = torch.cat([x for x, _ in made])
        if self.keep:
            with frozen(student), torch.no_grad():
                guessed = [student(x).argmax(1) for x, _ in made[1:]]
            targets = torch.cat([balanced_targets(len(made[0][0]), self.classes, x.device), *guessed])
            x = x[least_sure(student, x, targets, self.keep, self.classes)]
        return x, made[0][1]

    def state_dict(self):
        return [part.state_dict() for part in self.parts]

    def load_state_dict(self, state) -> None:
        for part, saved in zip(self.parts, state or [None] * len(self.parts)):
            part.load_state_dict(saved)


register("prior")(PriorSynthesizer)  # defined in methods/priors.py, which knows no registry


def build_synthesizer(name: str, shape: tuple, classes: int, device, prior_share: float = 0.0,
                      seed_share: float = 0.0, pool=None, **settings):
    """The synthesizer registered as `name`, given the constructor arguments it
    names: shape (C, H, W), classes, device, a fresh Generator(nz, ngf) if it
    takes one, and any of `settings` (batch_size, nz, g_steps, lr_g, ...).
    prior_share: that share of every batch is image priors instead; seed_share:
    that share is pool images redrawn class-balanced (RareSeedSynthesizer,
    reading `pool`). With candidates=K > 1, the shares are of the K*B
    candidates, of which the B the student is least sure of are kept
    (MixedSynthesizer's keep)."""
    if name not in SYNTHESIZERS:
        raise UserError(f"unknown method '{name}'; known: {', '.join(sorted(SYNTHESIZERS))}")
    batch, k = settings["batch_size"], settings.get("candidates", 1)
    pick = k > 1 and any(round(batch * k * share) > 0 for share in (prior_share, seed_share))
    if pick:  # the generator makes its share of the candidates and selects nothing itself
        settings = {**settings, "batch_size": batch * k, "candidates": 1}
    n_prior, n_seed = (round(settings["batch_size"] * share) for share in (prior_share, seed_share))
    given = {**settings, "batch_size": settings["batch_size"] - n_prior - n_seed, "shape": shape,
             "classes": classes, "device": device}
    wanted = inspect.signature(SYNTHESIZERS[name]).parameters
    if "generator" in wanted:  # built only where used: its initialisation draws random numbers
        given["generator"] = to_device(Generator(settings["nz"], settings["ngf"], shape[0], shape[1]), device)
    if n_seed and pool is None:
        raise ValueError("seed_share needs the pool to draw from")
    parts = [SYNTHESIZERS[name](**{key: value for key, value in given.items() if key in wanted})]
    if n_prior:
        parts.append(PriorSynthesizer(n_prior, shape, device))
    if n_seed:
        parts.append(RareSeedSynthesizer(pool, n_seed, shape, device, classes))
    if len(parts) == 1:
        return parts[0]
    return MixedSynthesizer(*parts, keep=batch if pick else 0, classes=classes)
