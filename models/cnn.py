import torch.nn as nn


class CifarCNN(nn.Module):
    """The reference's CIFAR CNN: conv3x3 256, pool, conv3x3 256, pool, conv3x3 128, linear."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(channels, 256, 3, padding=1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(256, 256, 3, padding=1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(256, 128, 3, padding=1), relu(),
        )
        self.fc = nn.Linear(128 * (size // 4) ** 2, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
