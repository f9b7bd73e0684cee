import torch.nn as nn


def conv_bn_relu_pool(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 5, padding=2), nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True), nn.MaxPool2d(2),
    )


class LeNet(nn.Module):
    """The reference's "LeNet": two conv5x5+BN+ReLU+pool stages (16, 32), one linear."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu_pool(channels, 16), conv_bn_relu_pool(16, 32))
        self.fc = nn.Linear(32 * (size // 4) ** 2, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class LeNet5(nn.Module):
    """LeCun's LeNet-5 as DIP-KD's MNIST teachers and students use it: conv5x5 (6)
    and conv5x5 (16), each with ReLU and 2x2 max-pooling, then 120-84-classes, and
    no batch normalisation. The first conv pads by 2, so a 28x28 input meets the
    second conv as LeNet-5's original 32x32 did (5x5 features after it)."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = size // 4 - 2
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
