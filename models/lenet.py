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
