"""DFME, the soft-label baseline: J.-B. Truong, P. Maini, R. J. Walls, N. Papernot,
"Data-Free Model Extraction", CVPR 2021 (arXiv 2011.14779).

One DFME iteration:
1. g_iter generator steps. The generator is trained to *maximise* the L1
   disagreement between student and teacher on its images. The teacher gives no
   gradients, so the gradient of that loss with respect to the generator's output
   is estimated by forward differences along grad_m random unit directions
   per image (zeroth-order estimate). Each step asks the teacher about
   B * (grad_m + 1) images: every perturbed image and the unperturbed one.
2. d_iter student steps. Each draws fresh z, asks the teacher about the B
   generated images once, and trains the student with SGD on the L1 distance
   to the teacher's approximated logits (log-probabilities minus their mean).

So an iteration costs B * (grad_m + 1) * g_iter + B * d_iter queries, and a run
does floor(budget / that) whole iterations: queries never exceed the budget.

Hyperparameters. Taken from DFME's published CIFAR10 settings (the official
code's defaults and run_cifar_dfme.sh): batch_size 256, nz 256, lr_s 0.1,
lr_g 1e-4, g_iter 1, d_iter 5, grad_m 1, grad_epsilon 1e-3, the L1 loss with
the 'mean' logit correction, SGD for the student (momentum 0.9, weight decay
5e-4), Adam for the generator (default betas, no weight decay), and the
MultiStepLR schedule on both learning rates: x0.3 at 10%, 30% and 50% of the
run (SVHN used 50% and 80%, and lr_g 5e-5). DFME publishes no setting for
28x28 grey data (MNIST, FMNIST, LeNet); we keep the CIFAR10 values there, and
had to choose these:
- The generator is ours (models.Generator): same layout as DFME's, but it ends
  in a sigmoid, because our inputs live in [0, 1] with no normalisation. DFME's
  ends in a BatchNorm without affine parameters and a tanh, for normalised
  CIFAR data.
- As in DFME, the directions perturb the generator's output *before* its final
  activation (the activation is applied to every probe), so every image sent to
  the teacher is a valid image, and grad_epsilon is in pre-activation units.
- The estimate is scaled to the gradient of the batch-mean loss (divided by
  B). DFME divides by B * classes; Adam is invariant to that constant factor.
- Probabilities are clamped to the smallest normal float32 before the log, so
  only answers that underflowed to 0 change (DFME takes log_softmax of the
  logits and never sees a 0).
- The schedule's milestones count iterations, not DFME's 50-iteration
  "epochs"; the decay lands at the same point of the budget, up to one epoch.
"""
from contextlib import nullcontext

import torch
import torch.nn as nn

from methods.steps import frozen
from utils.run import UserError

LR_STEPS = (0.1, 0.3, 0.5)  # fractions of the run (DFME's --steps for CIFAR10)
LR_DECAY = 0.3  # learning-rate factor at each step (DFME's --scale)
MIN_PROB = torch.finfo(torch.float32).tiny  # log(0) guard: only underflowed answers are clamped


def queries_per_iteration(batch_size: int, g_iter: int, d_iter: int, grad_m: int) -> int:
    """Teacher images one DFME iteration asks about: each generator step probes
    B images at grad_m perturbations plus the unperturbed point; each student
    step labels B fresh images."""
    return batch_size * (grad_m + 1) * g_iter + batch_size * d_iter


def iterations_for_budget(budget: int, batch_size: int, g_iter: int, d_iter: int, grad_m: int) -> int:
    """Whole DFME iterations that fit in `budget` queries (DFME never runs a partial one)."""
    return budget // queries_per_iteration(batch_size, g_iter, d_iter, grad_m)


def approximate_logits(probs: torch.Tensor) -> torch.Tensor:
    """DFME's 'mean' logit correction: the teacher's logits up to a per-sample
    constant, recovered from its probabilities as log p minus its mean over the
    classes. probs (N, C) -> (N, C)."""
    log_p = probs.clamp_min(MIN_PROB).log()
    return log_p - log_p.mean(dim=1, keepdim=True)


def l1_disagreement(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample L1 distance between the student's logits and the teacher's
    approximated logits, averaged over classes (DFME's loss; its mean over the
    batch is F.l1_loss). (N, C), (N, C) -> (N,)."""
    return (student_logits - approximate_logits(teacher_probs)).abs().mean(dim=1)


def unit_directions(n: int, m: int, shape: tuple, device=None) -> torch.Tensor:
    """m random directions per sample, uniform on the unit sphere of an image:
    (n, m, *shape), each of L2 norm 1 over `shape`."""
    u = torch.randn(n, m, *shape, device=device)
    return u / u.flatten(2).norm(dim=2).view(n, m, *([1] * len(shape)))


def zeroth_order_gradient(losses: torch.Tensor, directions: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Forward-difference estimate of each sample's loss gradient:
    d / m * sum_j (loss(x + eps u_j) - loss(x)) / eps * u_j, with d the image's
    dimension (the factor that makes E[d u u^T] = I for unit u).
    losses (N, m + 1), the last column at the unperturbed x; directions
    (N, m, *shape) -> gradient (N, *shape)."""
    n, m = directions.shape[:2]
    dim = directions[0, 0].numel()
    slopes = (losses[:, :-1] - losses[:, -1:]) / epsilon
    return dim * (slopes.view(n, m, *([1] * (directions.dim() - 2))) * directions).mean(dim=1)


def final_activation(generator: nn.Module) -> nn.Module:
    """The generator's last module, which must be its output activation: the
    gradient is estimated before it, as DFME does."""
    last = list(generator.modules())[-1]
    if not isinstance(last, (nn.Sigmoid, nn.Tanh)):
        raise UserError(f"DFME needs a generator that ends in a Sigmoid or Tanh module, not {type(last).__name__}")
    return last


class DFME:
    """DFME's training loop as a library: the hyperparameters go in here, a
    script calls step() once per iteration. `teacher` is a BlackBoxTeacher in
    soft mode; every probe, perturbed ones included, goes through it.
    `iterations` is the run's length, over which the LR schedule is laid out."""

    def __init__(self, student: nn.Module, generator: nn.Module, teacher, iterations: int,
                 batch_size: int = 256, nz: int = 256, lr_s: float = 0.1, lr_g: float = 1e-4,
                 g_iter: int = 1, d_iter: int = 5, grad_m: int = 1, grad_epsilon: float = 1e-3,
                 lr_steps: tuple = LR_STEPS, lr_decay: float = LR_DECAY,
                 momentum: float = 0.9, weight_decay: float = 5e-4):
        if teacher.mode != "soft":
            raise UserError(f"DFME needs the teacher's probabilities (a soft black box), not '{teacher.mode}'")
        self.student, self.generator, self.teacher = student, generator, teacher
        self.activation = final_activation(generator)
        self.batch_size, self.nz = batch_size, nz
        self.g_iter, self.d_iter, self.grad_m, self.grad_epsilon = g_iter, d_iter, grad_m, grad_epsilon
        self.device = next(generator.parameters()).device
        self.optimizer_s = torch.optim.SGD(student.parameters(), lr=lr_s, momentum=momentum,
                                           weight_decay=weight_decay)
        self.optimizer_g = torch.optim.Adam(generator.parameters(), lr=lr_g,
                                            fused=self.device.type in ("cpu", "cuda"))
        # at least 1: a milestone at 0 would decay the learning rates before the first step
        milestones = sorted(max(1, int(f * iterations)) for f in lr_steps)
        self.scheduler_s = torch.optim.lr_scheduler.MultiStepLR(self.optimizer_s, milestones, lr_decay)
        self.scheduler_g = torch.optim.lr_scheduler.MultiStepLR(self.optimizer_g, milestones, lr_decay)

    @property
    def queries_per_iteration(self) -> int:
        return queries_per_iteration(self.batch_size, self.g_iter, self.d_iter, self.grad_m)

    def step(self, clock=None) -> dict:
        """One DFME iteration: g_iter generator steps, d_iter student steps, one
        step of both LR schedules. `clock` (a methods.Clock) times the two parts
        as 'generate' and 'distill'. Returns the last losses,
        {"generator": -L1 at the unperturbed images, "student": L1}."""
        timed = clock or (lambda phase: nullcontext())
        self.generator.train()
        with timed("generate"):
            g_loss = [self.generator_step() for _ in range(self.g_iter)][-1]
        with timed("distill"):
            s_loss = [self.student_step() for _ in range(self.d_iter)][-1]
        self.scheduler_s.step()
        self.scheduler_g.step()
        return {"generator": g_loss, "student": s_loss}

    def generator_step(self) -> float:
        """Move the generator towards images where student and teacher disagree,
        with the zeroth-order gradient of -L1 (B * (grad_m + 1) queries)."""
        pre = self.pre_activation(torch.randn(self.batch_size, self.nz, device=self.device))
        losses, directions = self.probe_losses(pre.detach())
        grad = zeroth_order_gradient(losses, directions, self.grad_epsilon) / len(pre)  # of the batch mean
        self.optimizer_g.zero_grad(set_to_none=True)
        pre.backward(grad)
        self.optimizer_g.step()
        return losses[:, -1].mean().item()

    def pre_activation(self, z: torch.Tensor) -> torch.Tensor:
        """The generator's output before its final activation, with its graph:
        z (B, nz) -> (B, C, H, W)."""
        captured = []
        hook = self.activation.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.generator(z)
        finally:
            hook.remove()
        return captured[0]

    @torch.no_grad()
    def probe_losses(self, pre: torch.Tensor):
        """Ask the teacher about every image activation(pre + eps u_j), j < m,
        and activation(pre) itself. pre (B, C, H, W) -> (-L1 per probe (B, m + 1),
        directions (B, m, C, H, W))."""
        n, shape = len(pre), pre.shape[1:]
        directions = unit_directions(n, self.grad_m, shape, pre.device)
        offsets = torch.cat([directions, directions.new_zeros(n, 1, *shape)], dim=1)
        probes = self.activation(pre.unsqueeze(1) + self.grad_epsilon * offsets).reshape(-1, *shape)
        teacher_probs = self.teacher(probes)
        with frozen(self.student):  # eval-mode BN, as DFME probes its clone
            student_logits = self.student(probes)
        return -l1_disagreement(student_logits, teacher_probs).view(n, self.grad_m + 1), directions

    def student_step(self) -> float:
        """One SGD step of the student towards the teacher's approximated logits
        on B fresh generator images (B queries)."""
        with torch.no_grad():
            x = self.generator(torch.randn(self.batch_size, self.nz, device=self.device))
        teacher_probs = self.teacher(x)
        self.student.train()
        loss = l1_disagreement(self.student(x), teacher_probs).mean()
        self.optimizer_s.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer_s.step()
        return loss.item()

    def state_dict(self) -> dict:
        """Networks, optimizers and schedules: all a resumed run needs from here."""
        return {"student": self.student.state_dict(), "generator": self.generator.state_dict(),
                "optimizer_s": self.optimizer_s.state_dict(), "optimizer_g": self.optimizer_g.state_dict(),
                "scheduler_s": self.scheduler_s.state_dict(), "scheduler_g": self.scheduler_g.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.generator.load_state_dict(state["generator"])
        self.optimizer_s.load_state_dict(state["optimizer_s"])
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.scheduler_s.load_state_dict(state["scheduler_s"])
        self.scheduler_g.load_state_dict(state["scheduler_g"])
