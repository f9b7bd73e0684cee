"""Batched, per-sample augmentation on the device (no per-sample Python).

Which augmentation keeps a cached label true is a fact about each dataset, so
it lives in the dataset spec (datasets/registry.py: flip_safe, shift_safe).
"""
from typing import Callable

import torch
import torch.nn.functional as F

KINDS = ("none", "crop", "flip", "crop+flip", "crop+jitter", "crop+flip+jitter")
CROP_PADDING = 4  # pixels of zero padding before the random crop (reference code)
# brightness and contrast factors uniform in [1 - JITTER, 1 + JITTER] (torchvision's ColorJitter(0.4, 0.4))
JITTER = 0.4


def random_crop(x: torch.Tensor, padding: int = CROP_PADDING) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch back to the input size.
    x (N, C, H, W) -> (N, C, H, W). Differentiable in x.

    One gather over flattened pixels: its backward is a scatter-add, much
    cheaper on the CPU than the backward of 4-D advanced indexing."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    width = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), device=x.device)
    rows = dy + torch.arange(h, device=x.device)[None, :, None]  # (N, H, 1)
    cols = dx + torch.arange(w, device=x.device)[None, None, :]  # (N, 1, W)
    index = (rows * width + cols).reshape(n, 1, h * w).expand(n, c, h * w)
    return padded.reshape(n, c, -1).gather(2, index).reshape(n, c, h, w)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip each sample left-right with probability 1/2. x (N, C, H, W)."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(3), x)


def random_jitter(x: torch.Tensor, strength: float = JITTER) -> torch.Tensor:
    """Per-sample random brightness, then contrast (a blend with the image's
    mean), clamped to [0, 1]: the colour jitter of DIP-KD's teacher and students.
    It can change what the teacher would answer, so no dataset takes it by default."""
    n = x.shape[0]
    brightness = 1 + strength * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1)
    contrast = 1 + strength * (2 * torch.rand(n, 1, 1, 1, device=x.device) - 1)
    x = (x * brightness).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (contrast * x + (1 - contrast) * mean).clamp(0, 1)


def build_augment(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a batch -> batch function for one of KINDS."""
    if kind not in KINDS:
        raise ValueError(f"unknown augmentation '{kind}'; known: {', '.join(KINDS)}")
    crop = random_crop if "crop" in kind else (lambda x: x)
    flip = random_flip if "flip" in kind else (lambda x: x)
    jitter = random_jitter if "jitter" in kind else (lambda x: x)
    return lambda x: jitter(flip(crop(x)))


def reference_augment(size: int, channels: int) -> str:
    """The reference code's distillation augmentation, used when every view is
    re-asked (--relabel_every_epoch): flip everything, and crop 32x32 colour data."""
    return "crop+flip" if (channels, size) == (3, 32) else "flip"
