import torch.nn as nn


class AlexNet(nn.Module):
    """Small AlexNet for 28x28 grey images (also fits other sizes that are multiples
    of 4): five 3x3 convs, two max-pools, then two linear layers."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), relu(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), relu(),
            nn.Conv2d(384, 256, 3, padding=1), relu(),
            nn.Conv2d(256, 256, 3, padding=1), relu(),
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * (size // 4) ** 2, 1024), relu(),
            nn.Linear(1024, classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
