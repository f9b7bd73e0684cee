"""DIP-KD's image priors (Vo et al., "Diverse Image Priors for Black-box
Data-free Knowledge Distillation", the Synthesis phase), batched on the device.

An image prior is made in three stages, each named after the paper's terms:
1. hierarchical noise: uniform noise at scales 2^0 .. 2^d_max, upscaled to
   2^d_max and mixed with softmax weights of normal coefficients;
2. nonlinear transform: random rotation, random elastic warp and a random
   crop to the dataset's size, done by one grid_sample per batch;
3. semantic cutmixing: two images (or an image and a plain colour) mixed
   through a mask of uniform noise, blurred and pushed to 0/1 by the paper's
   diverging filter until it stops changing.
Every stage draws from torch's global generator, so a seeded run (and its
resume, which restores that generator) makes the same images.
"""
import math

import torch
import torch.nn.functional as F


def hierarchical_noise(n: int, channels: int, size: int, upscale: str = "bilinear",
                       device=None) -> torch.Tensor:
    """Eq. (hierarchical noise): sum_d softmax(alpha)_d * up(x_d), x_d ~ U[0,1]
    of side 2^d for d = 0..d_max, d_max = ceil(log2(size)), alpha ~ N(0, I)
    per image. Returns (n, channels, 2^d_max, 2^d_max) in [0, 1]."""
    d_max = math.ceil(math.log2(size))
    side = 2 ** d_max
    weights = torch.randn(n, d_max + 1, device=device).softmax(1)
    mixed = torch.zeros(n, channels, side, side, device=device)
    for d in range(d_max + 1):  # one step per scale, not per image
        scale = torch.rand(n, channels, 2 ** d, 2 ** d, device=device)
        up = scale.expand(-1, -1, side, side) if d == 0 else F.interpolate(
            scale, size=(side, side), mode=upscale, **({} if upscale == "nearest" else {"align_corners": False}))
        mixed += weights[:, d, None, None, None] * up
    return mixed


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel, reflect-padded, kernel radius
    ceil(2 sigma). x (N, C, H, W) -> same shape."""
    radius = max(1, math.ceil(2 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1),
                 groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1),
                    groups=c)


def nonlinear_transform(x: torch.Tensor, size: int, max_degrees: float = 45.0, elastic_alpha: float = 34.0,
                        elastic_sigma: float = 4.0) -> torch.Tensor:
    """f_crop o f_elas o f_rot, per image: rotation by U[-max_degrees,
    max_degrees], an elastic displacement field (uniform noise blurred with
    elastic_sigma, times elastic_alpha pixels; Simard et al.'s 34 and 4), and
    a random size x size crop. x (N, C, S, S) with S >= size -> (N, C, size,
    size); one sampling grid, so the image is resampled once."""
    n, _, side, _ = x.shape
    to_norm = 2.0 / side  # pixels -> grid_sample's [-1, 1] units (align_corners=False)
    offset = torch.randint(0, side - size + 1, (n, 2), device=x.device).to(x.dtype)  # crop corner (x, y)
    pixels = torch.arange(size, dtype=x.dtype, device=x.device) + 0.5
    gx = (pixels[None, None, :] + offset[:, 0, None, None]) * to_norm - 1  # (N, 1, size)
    gy = (pixels[None, :, None] + offset[:, 1, None, None]) * to_norm - 1  # (N, size, 1)
    grid = torch.stack(torch.broadcast_tensors(gx, gy), -1)  # (N, size, size, 2) as (x, y)
    field = torch.rand(n, 2, size, size, device=x.device, dtype=x.dtype) * 2 - 1
    grid = grid + gaussian_blur(field, elastic_sigma).permute(0, 2, 3, 1) * elastic_alpha * to_norm
    angle = (torch.rand(n, device=x.device, dtype=x.dtype) * 2 - 1) * math.radians(max_degrees)
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    rotated = torch.stack((cos * grid[..., 0] - sin * grid[..., 1], sin * grid[..., 0] + cos * grid[..., 1]), -1)
    return F.grid_sample(x, rotated, mode="bilinear", padding_mode="reflection", align_corners=False)


def diverging_filter(m: torch.Tensor) -> torch.Tensor:
    """f_divg with its inflection at 0.5: 2 m^2 below it, 1 - 2 (m - 1)^2 above.
    It fixes 0, 0.5 and 1 and pushes every other value away from 0.5. (The
    manuscript's equation swaps the two cases, which would leave [0, 1]; its
    appendix's conditions -- through (0,0), (0.5,0.5), (1,1), increasing,
    flat at both ends -- give this form.)"""
    return torch.where(m < 0.5, 2 * m ** 2, 1 - 2 * (m - 1) ** 2)


def semantic_mask(n: int, size: int, blur_sigma: float = 1.0, tol: float = 1e-2, max_iter: int = 50,
                  device=None) -> torch.Tensor:
    """m_0 ~ U[0,1]^(1 x size x size); m_{i+1} = f_divg(blur(m_i)) until the
    mean absolute update of that image falls under tol (the paper's 1e-2, about
    10 steps). Returns (n, 1, size, size) in [0, 1], mostly near 0 or 1."""
    m = torch.rand(n, 1, size, size, device=device)
    done = torch.zeros(n, 1, 1, 1, dtype=torch.bool, device=device)
    for _ in range(max_iter):
        new = diverging_filter(gaussian_blur(m, blur_sigma))
        change = (new - m).abs().mean((1, 2, 3), keepdim=True)
        m = torch.where(done, m, new)
        done = done | (change < tol)
        if bool(done.all()):
            break
    return m


def semantic_cutmix(x: torch.Tensor, mask: torch.Tensor, mono_prob: float = 0.5) -> torch.Tensor:
    """x * mask + partner * (1 - mask): each image's partner is another image
    of the batch (a cyclic shift of a random order, so never itself) or, with
    probability mono_prob, a plain image of one uniform random colour. An
    image alone in its batch has no other image, so its partner is a colour.
    x (N, C, H, W), mask (N, 1, H, W) -> (N, C, H, W)."""
    n, c = x.shape[:2]
    order = torch.randperm(n, device=x.device)
    partner = torch.empty_like(x)
    partner[order] = x[order.roll(1)]  # image order[i] is paired with order[i-1]
    colour = torch.rand(n, c, 1, 1, device=x.device, dtype=x.dtype).expand_as(x)
    mono = (torch.rand(n, 1, 1, 1, device=x.device) < mono_prob) | (n == 1)
    partner = torch.where(mono, colour, partner)
    return x * mask + partner * (1 - mask)


class PriorSynthesizer:
    """DIP-KD's Synthesis phase: a batch of image priors in [0, 1], no model
    involved (the student is not used). Hyperparameters are the paper's where
    it gives them (rotation +-45 degrees, the mask's 1e-2 steady state); the
    rest are named here: the upscaling mode, the elastic warp's alpha and
    sigma, the mask's blur and the share of plain-colour partners."""

    def __init__(self, batch_size: int, shape: tuple, device, upscale: str = "bilinear",
                 max_degrees: float = 45.0, elastic_alpha: float = 34.0, elastic_sigma: float = 4.0,
                 mask_blur_sigma: float = 1.0, mono_prob: float = 0.5):
        self.batch_size, self.shape, self.device = batch_size, tuple(shape), device
        self.upscale, self.max_degrees, self.mono_prob = upscale, max_degrees, mono_prob
        self.elastic_alpha, self.elastic_sigma, self.mask_blur_sigma = elastic_alpha, elastic_sigma, mask_blur_sigma

    def sample(self, n: int) -> torch.Tensor:
        """n image priors (n, C, H, W) in [0, 1]."""
        channels, size, _ = self.shape
        x = hierarchical_noise(n, channels, size, self.upscale, self.device)
        x = nonlinear_transform(x, size, self.max_degrees, self.elastic_alpha, self.elastic_sigma)
        mask = semantic_mask(n, size, self.mask_blur_sigma, device=self.device)
        return semantic_cutmix(x, mask, self.mono_prob).clamp_(0, 1)

    def synthesize(self, student=None):
        return self.sample(self.batch_size), None

    def state_dict(self):
        return None

    def load_state_dict(self, state) -> None:
        pass
