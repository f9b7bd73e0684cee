"""Losses as small pure functions of logits and targets."""
import torch
import torch.nn.functional as F


def info_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over all N x C entries of p * log p, p = softmax(logits).

    This is the reference code's information term: minimising it raises the
    entropy of each prediction, pushing samples towards the student's decision
    boundaries. logits (N, C) -> scalar."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * log_p).mean()


def generator_loss(logits: torch.Tensor, targets: torch.Tensor, lambda_info: float):
    """IDEAL's generator objective CE(S(x), y) + lambda_info * info_loss.
    logits (N, C), targets (N,) int64 -> (total, ce, info), each a scalar."""
    ce = F.cross_entropy(logits, targets)
    info = info_loss(logits)
    return ce + lambda_info * info, ce, info


def distill_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """Student loss on the teacher's answers: cross-entropy on hard labels
    (targets (N,) int64) or on probabilities (targets (N, C) float), which is
    KL(teacher || student) up to a constant that does not depend on the student.
    smoothing = eps: the target becomes (1 - eps) * answer + eps / C, for either kind."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    if smoothing:
        targets = (1 - smoothing) * targets + smoothing / targets.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def mixup_loss(logits: torch.Tensor, targets: torch.Tensor, lam: float, order: torch.Tensor,
               smoothing: float = 0.0) -> torch.Tensor:
    """distill_loss for images mixed as lam * x + (1 - lam) * x[order]: the
    same mix of the two answers' losses, which for cross-entropy is the loss
    on the mixed target distribution. Hard or soft targets; no new query."""
    return (lam * distill_loss(logits, targets, smoothing)
            + (1 - lam) * distill_loss(logits, targets[order], smoothing))


def balanced_targets(n: int, classes: int, device=None) -> torch.Tensor:
    """Class-balanced generator targets y_i = i mod classes, shape (n,). Any n
    works (the reference crashed when n was not a multiple of the class count)."""
    return torch.arange(n, device=device) % classes


def class_targets(n: int, classes: int, weights=None, device=None) -> torch.Tensor:
    """Generator targets, shape (n,): balanced_targets without weights; with
    weights (classes,) summing to 1, class c gets floor(n * w_c) targets and
    the n left over go to the largest remainders (ties to the lower class).
    Round-robin like balanced_targets (0, 1, 2, 0, 1, 2, 0, 0, ...), so a
    batch cut short by the budget keeps every class it can."""
    if weights is None:
        return balanced_targets(n, classes, device)
    share = n * weights.double().cpu()
    counts = share.floor().long()
    left = n - int(counts.sum())
    counts[torch.argsort(share - counts, descending=True, stable=True)[:left]] += 1
    y = torch.repeat_interleave(torch.arange(classes), counts)
    rank = torch.arange(n) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)  # place within its class
    return y[torch.argsort(rank * classes + y)].to(device)


def rebalanced_weights(counts: torch.Tensor, smoothing: float, power: float) -> torch.Tensor:
    """Target weights that favour the classes the teacher has named least:
    w_c proportional to (counts_c + smoothing) ** -power, summing to 1.
    power 0 gives uniform weights; 1 gives inverse frequency."""
    # in log space: a large power would underflow (count + smoothing) ** -power to 0
    return torch.softmax(-power * (counts.double() + smoothing).log(), 0)
