"""The black-box teacher: the only door through which any code reaches the teacher.

It answers a batch of images with top-1 labels (hard, the paper's main
setting) or probability vectors (soft), counts every image it is sent, and
refuses to go past its query budget. Nothing else in the project holds the
teacher network.
"""
import math
from contextlib import nullcontext

import torch
import torch.nn as nn

MODES = ("hard", "soft")


class QueryBudgetExceeded(RuntimeError):
    """Raised instead of answering a batch that would go past the budget."""


class BlackBoxTeacher:
    def __init__(self, model: nn.Module, mode: str = "hard", budget: int = 0, chunk: int = 1024,
                 autocast=nullcontext):
        """model: the teacher network (kept private); budget: max images ever
        answered (0 = no cap); chunk: images per forward pass (memory only);
        autocast: what its forward passes run under (utils.run.amp_autocast)."""
        if mode not in MODES:
            raise ValueError(f"unknown black-box mode '{mode}'; known: {', '.join(MODES)}")
        self._model = model
        self.mode = mode
        self.budget = budget
        self.chunk = chunk
        self.autocast = autocast
        self.queries = 0

    @property
    def remaining(self) -> float:
        """Images the teacher will still answer (math.inf without a budget)."""
        return math.inf if self.budget == 0 else self.budget - self.queries

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, C, H, W) float in [0, 1] -> labels (N,) int64 in hard mode,
        probabilities (N, classes) float32 in soft mode. Counts N queries."""
        n = images.shape[0]
        if n > self.remaining:
            raise QueryBudgetExceeded(
                f"{n} queries asked, {self.remaining} left of a budget of {self.budget}")
        self.queries += n
        self._model.eval()  # a black box never runs in train mode (BN statistics stay put)
        with self.autocast():
            logits = torch.cat([self._model(part) for part in images.split(self.chunk)])
        return logits.argmax(1) if self.mode == "hard" else logits.float().softmax(1)
