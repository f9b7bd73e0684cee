"""The IDEAL generator: z (N, nz) -> images (N, C, S, S) in [0, 1]."""
import torch.nn as nn


class Generator(nn.Module):
    """Linear -> BN -> up x2 -> conv(2ngf->2ngf) BN LReLU -> up x2 -> conv(2ngf->ngf)
    BN LReLU -> conv(ngf->C) -> sigmoid. `size` must be a multiple of 4."""

    def __init__(self, nz: int, ngf: int, channels: int, size: int):
        super().__init__()
        if size % 4:
            raise ValueError(f"generator needs an image size that is a multiple of 4, got {size}")
        self.init_size = size // 4
        self.fc = nn.Linear(nz, 2 * ngf * self.init_size ** 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, z):
        x = self.fc(z).view(z.shape[0], -1, self.init_size, self.init_size)
        return self.body(x)


def init_generator_(generator: nn.Module) -> nn.Module:
    """Re-initialise in place as the spec asks at the start of every epoch:
    conv/linear weights N(0, 0.02), biases 0, BatchNorm weight N(1, 0.02), bias 0.
    BatchNorm running statistics are reset too, so nothing survives the epoch."""
    for m in generator.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
    return generator
