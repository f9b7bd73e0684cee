"""The one name -> constructor table for classifiers (timm-style)."""
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from models.alexnet import AlexNet
from models.cnn import CifarCNN
from models.lenet import LeNet, LeNet5
from models.mlp import MLP
from models.resnet import resnet18, resnet34, resnet50
from models.vgg import VGG8


class ModelError(ValueError):
    """A net that is unknown or does not fit the requested input shape."""


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]  # build(channels, size, classes)
    divisor: int   # input size must be a multiple of this (one per 2x pooling)
    min_size: int  # smallest input side the architecture handles


MODELS = {
    "mlp": ModelEntry(MLP, divisor=1, min_size=1),
    "lenet": ModelEntry(LeNet, divisor=4, min_size=4),
    "lenet5": ModelEntry(LeNet5, divisor=4, min_size=12),  # DIP-KD's teachers: no batch norm
    "alexnet": ModelEntry(AlexNet, divisor=4, min_size=8),
    "cnn": ModelEntry(CifarCNN, divisor=4, min_size=4),
    "vgg8": ModelEntry(VGG8, divisor=1, min_size=16),
    "resnet18": ModelEntry(resnet18, divisor=1, min_size=8),
    "resnet34": ModelEntry(resnet34, divisor=1, min_size=8),
    "resnet50": ModelEntry(resnet50, divisor=1, min_size=8),
}


def check_fits(name: str, size: int) -> None:
    """Raise ModelError unless net `name` exists and accepts size x size inputs."""
    if name not in MODELS:
        raise ModelError(f"unknown net '{name}'; known: {', '.join(sorted(MODELS))}")
    entry = MODELS[name]
    if size < entry.min_size or size % entry.divisor:
        raise ModelError(
            f"net '{name}' needs square inputs of at least {entry.min_size}px "
            f"and a multiple of {entry.divisor}px; got {size}px"
        )


def build_model(name: str, channels: int, size: int, classes: int) -> nn.Module:
    """Build classifier `name` for (channels, size, size) inputs and `classes` outputs."""
    check_fits(name, size)
    return MODELS[name].build(channels=channels, size=size, classes=classes)
