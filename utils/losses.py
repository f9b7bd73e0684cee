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


def distill_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Student loss on the teacher's answers: cross-entropy on hard labels
    (targets (N,) int64) or on probabilities (targets (N, C) float), which is
    KL(teacher || student) up to a constant that does not depend on the student."""
    if targets.dim() == 1:
        return F.cross_entropy(logits, targets)
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def balanced_targets(n: int, classes: int, device=None) -> torch.Tensor:
    """Class-balanced generator targets y_i = i mod classes, shape (n,). Any n
    works (the reference crashed when n was not a multiple of the class count)."""
    return torch.arange(n, device=device) % classes
