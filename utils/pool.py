"""The synthetic pool: every generated image and the teacher's answer for it,
held in memory as tensors on the training device.

Images are stored as uint8, as the reference stored 8-bit PNGs; the teacher is
asked about exactly the quantised image that is stored, so the cached label
belongs to what the student will see.
"""
import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounding halves up as an 8-bit PNG writer
    (torchvision's save_image) does; the cast truncates the non-negative values."""
    return x.detach().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255)


def top1(answers: torch.Tensor) -> torch.Tensor:
    """The teacher's top-1 labels (N,) from cached answers: hard labels as
    they are, probabilities (N, classes) by their largest entry."""
    return answers if answers.dim() == 1 else answers.argmax(1)


class SyntheticPool:
    """A first-in-first-out store of (image, answer) pairs, capped at `capacity`
    samples (the reference keeps the newest 400 batches). A pool built with
    labelled=False holds images only: the reference code's relabel mode asks
    the teacher again every time, so it has no answers to keep."""

    def __init__(self, capacity: int, labelled: bool = True):
        self.capacity, self.labelled = capacity, labelled
        self.images = None  # (N, C, H, W) uint8
        self.answers = None  # (N,) int64 hard labels or (N, classes) float probabilities; None if unlabelled

    def __len__(self) -> int:
        return 0 if self.images is None else self.images.shape[0]

    def add(self, images: torch.Tensor, answers: torch.Tensor = None) -> None:
        """Append a batch (uint8 images, answers) and drop the oldest beyond capacity."""
        if (answers is not None) != self.labelled:
            raise ValueError("a labelled pool needs answers; an unlabelled one takes none")
        self.images = images if self.images is None else torch.cat([self.images, images])
        if self.labelled:
            self.answers = answers if self.answers is None else torch.cat([self.answers, answers])
        if len(self) > self.capacity:
            self.images = self.images[-self.capacity:]
            self.answers = None if self.answers is None else self.answers[-self.capacity:]

    def batches(self, batch_size: int):
        """Yield shuffled (images uint8, answers or None) batches covering the pool once."""
        if len(self) == 0:
            return
        order = torch.randperm(len(self), device=self.images.device)
        for idx in order.split(batch_size):
            yield self.images[idx], None if self.answers is None else self.answers[idx]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "labelled": self.labelled,
                "images": self.images, "answers": self.answers}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.labelled = state["capacity"], state.get("labelled", True)
        self.images, self.answers = state["images"], state["answers"]
