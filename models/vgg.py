import torch.nn as nn

WIDTHS = (64, 128, 256, 512, 512)  # one conv per stage


class VGG8(nn.Module):
    """VGG-8 with BatchNorm: one conv3x3 per stage (64,128,256,512,512), a max-pool
    after each of the first four stages (so 16px inputs still work), adaptive
    average pool, linear."""

    def __init__(self, channels: int, size: int, classes: int):
        super().__init__()
        layers, cin = [], channels
        for i, cout in enumerate(WIDTHS):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < len(WIDTHS) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))
