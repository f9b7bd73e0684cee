"""The student and how it learns from the pool.

The reference trains with plain SGD at a constant learning rate, so the last
epochs of a run swing by a point or two. Two zero-query levers live here, both
off by default (the paper's setting):
- a cosine learning-rate schedule over the whole run (generation epochs and
  distill-only epochs), ending near zero at the last epoch;
- an exponential moving average of the student's weights (and BatchNorm
  statistics), updated after every SGD step; it is then the model tested,
  reported and kept in best.pt. The generator still targets the live student.
"""
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

SCHEDULES = ("constant", "cosine")


class Learner:
    def __init__(self, model, lr: float, momentum: float, weight_decay: float, total_epochs: int,
                 schedule: str = "constant", ema_decay: float = 0.0):
        """model: the student network; total_epochs: the run's length, over
        which a cosine schedule decays; ema_decay in [0, 1), 0 = no average."""
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule '{schedule}'; known: {', '.join(SCHEDULES)}")
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total_epochs)
                          if schedule == "cosine" else None)
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

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint dict (keys of state_dict(); a checkpoint
        written before schedules and averages existed has neither)."""
        self.model.load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        for part, key in ((self.scheduler, "scheduler"), (self.ema, "ema")):
            if part is not None:
                part.load_state_dict(state[key])
