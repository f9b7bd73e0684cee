"""The student and how it learns from the pool.

The reference trains with plain SGD at a constant learning rate, so the last
epochs of a run swing by a point or two. Two zero-query levers live here, both
off by default (the paper's setting):
- a cosine learning-rate schedule over the whole run (generation epochs and
  distill-only epochs), ending near zero at the last epoch;
- an anneal: the reference's constant rate while the pool grows, then cosine
  to zero over the distill-only epochs, once every answer has been paid for.
  The generation epochs are then exactly the constant run's, so a finished
  constant run can be resumed into an anneal;
- an exponential moving average of the student's weights (and BatchNorm
  statistics), updated after every SGD step; it is then the model tested,
  reported and kept in best.pt. The generator still targets the live student.
"""
import math
import warnings

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

SCHEDULES = ("constant", "cosine", "anneal")


def anneal_factor(epoch: int, flat_epochs: int, total_epochs: int) -> float:
    """The anneal's multiple of the base rate in 0-based `epoch`: 1 for the
    first flat_epochs, then (1 + cos(pi * k / n)) / 2 over the n remaining
    epochs, k = 0..n-1, and 0 once they are over."""
    k, n = epoch - flat_epochs, total_epochs - flat_epochs
    return 1.0 if k < 0 else 0.0 if k >= n else 0.5 * (1.0 + math.cos(math.pi * k / n))


class Learner:
    def __init__(self, model, lr: float, momentum: float, weight_decay: float, total_epochs: int,
                 schedule: str = "constant", ema_decay: float = 0.0, flat_epochs: int = 0):
        """model: the student network; total_epochs: the run's length, over
        which a cosine schedule decays; flat_epochs: the epochs an anneal holds
        the rate (the generation epochs); ema_decay in [0, 1), 0 = no average."""
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}")
        if schedule == "anneal" and not 0 <= flat_epochs < total_epochs:
            raise ValueError("an anneal needs epochs after its flat_epochs to decay over")
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scheduler = None
        if schedule == "cosine":
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_epochs)
        elif schedule == "anneal":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda e: anneal_factor(e, flat_epochs, total_epochs))
        self.ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
                    if ema_decay else None)

    def step_done(self) -> None:
        """Call after every optimizer step."""
        if self.ema is not None:
            self.ema.update_parameters(self.model)

    def epoch_done(self) -> None:
        """Call once after each epoch's distillation."""
        if self.scheduler is not None:
            self.scheduler.step()

    @property
    def reported(self):
        """The network that is tested and reported: the average if there is one."""
        return self.model if self.ema is None else self.ema.module

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"student": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict()}

    def load_state_dict(self, state: dict, epochs_done: int = 0) -> None:
        """Restore from a checkpoint dict (keys of state_dict(); a checkpoint
        written before schedules and averages existed has neither). A schedule
        the saved run did not have (a constant run resumed into an anneal) is
        moved on by the `epochs_done` it would have seen."""
        self.model.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is None:
            with warnings.catch_warnings():  # torch warns of a step before any optimizer step: here it is meant
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(epochs_done):
                    self.scheduler.step()
        for part, key in ((self.scheduler, "scheduler"), (self.ema, "ema")):
            if part is not None and state.get(key) is not None:
                part.load_state_dict(state[key])
