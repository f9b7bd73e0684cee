"""IDEAL's steps 2 and 3 (label, distill) and their helpers. The teacher is
only ever reached through the BlackBoxTeacher handed in, which counts."""
import time
from contextlib import contextmanager, nullcontext

import torch

from utils.losses import distill_loss
from utils.pool import to_float, to_uint8, top1

PHASES = ("generate", "label", "distill", "test")


@contextmanager
def frozen(model):
    """Run `model` in eval mode with no parameter gradients: the generator step
    trains G through S, and S must not change (nor pay for its own gradients)."""
    was_training = model.training
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training).requires_grad_(True)


def affordable(teacher, x: torch.Tensor) -> torch.Tensor:
    """The batch quantised to uint8 as it will be stored, cut to what the
    teacher's budget still allows. x (B, C, H, W) in [0, 1] -> uint8 (<=B, ...)."""
    return to_uint8(x)[:max(0, int(min(len(x), teacher.remaining)))]


def label_once(teacher, x: torch.Tensor):
    """IDEAL step 2: ask the teacher once per image about exactly the uint8
    image that will be stored. Returns (images uint8, answers)."""
    images = affordable(teacher, x)
    return images, teacher(to_float(images))


def student_optimizer(student, lr: float, momentum: float, weight_decay: float):
    """The reference's SGD at a constant rate (no schedule)."""
    return torch.optim.SGD(student.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def train_step(student, optimizer, x, answers, autocast=nullcontext):
    """One SGD step on (x, answers), the forward pass and loss under
    `autocast()` (see utils.run.amp_autocast); returns (summed loss, number of
    agreements with the answers' top class)."""
    with autocast():
        logits = student(x)
        loss = distill_loss(logits, answers)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item() * len(x), (logits.argmax(1) == top1(answers)).sum().item()


def distill(student, optimizer, pool, augment, batch_size, autocast=nullcontext):
    """IDEAL step 3: one shuffled pass over the pool on its cached answers,
    the student's forward passes under `autocast()`. Returns (mean loss,
    % agreement of the student with those answers)."""
    student.train()
    loss_sum, agree, seen = 0.0, 0, 0
    for images, answers in pool.batches(batch_size):
        loss, hits = train_step(student, optimizer, augment(to_float(images)), answers, autocast)
        loss_sum, agree, seen = loss_sum + loss, agree + hits, seen + len(images)
    return loss_sum / max(seen, 1), 100.0 * agree / max(seen, 1)


def distill_relabel(student, optimizer, pool, augment, batch_size, teacher, autocast=nullcontext):
    """The reference code's step 3: the same pass, but every augmented batch is
    asked of the teacher again (the pool holds no answers), until the budget
    runs out. Returns (mean loss, % agreement)."""
    student.train()
    loss_sum, agree, seen = 0.0, 0, 0
    for images, _ in pool.batches(batch_size):
        x = augment(to_float(images))[:max(0, int(min(len(images), teacher.remaining)))]
        if len(x) == 0:
            break
        loss, hits = train_step(student, optimizer, x, teacher(x), autocast)
        loss_sum, agree, seen = loss_sum + loss, agree + hits, seen + len(x)
    return loss_sum / max(seen, 1), 100.0 * agree / max(seen, 1)


def sync(device):
    """Make phase timings honest on CUDA, where kernels run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Seconds spent per phase, summed over the run."""

    def __init__(self, device, totals=None):
        self.device = device
        self.totals = dict.fromkeys(PHASES, 0.0) if totals is None else totals

    @contextmanager
    def __call__(self, phase):
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.totals[phase] += time.perf_counter() - start
