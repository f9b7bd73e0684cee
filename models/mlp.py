import torch.nn as nn


class MLP(nn.Module):
    """784-512-128-C for MNIST (C*H*W inputs in general). Returns logits: the
    reference returned softmax and then applied cross-entropy to it."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, 512), nn.ReLU(inplace=True),
            nn.Linear(512, 128), nn.ReLU(inplace=True),
            nn.Linear(128, classes),
        )

    def forward(self, x):
        return self.net(x)
