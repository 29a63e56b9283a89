"""Batched, per-sample data augmentation on float image batches (0-255, N x 3 x H x W): RandAugment and
mixup. No per-image Python: every image draws its own operations and signs, and each augmentation slot
is a handful of whole-batch tensor operations (one ``affine_grid``/``grid_sample`` for all geometric ops,
elementwise passes for the colour ops, each at its identity value for the images that did not draw it).

RandAugment (Cubuk et al., 2020) as EfficientNetV2 uses it: ``num_ops`` = 2 operations per image drawn
uniformly from :data:`OPS`, magnitude ``m`` on a 0-30 scale (strength = m / 30 of each op's maximum:
rotate 30 degrees, shear 0.3, translate 45 % of the size, brightness/colour/contrast factor 1 +- 0.9,
solarize threshold down to 0, posterize down to 4 bits), random sign per image for signed ops. Note that
colour operations change the colour factors of Biased MNIST, which are themselves the spurious cues.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "solarize", "posterize",
       "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
MAX_MAGNITUDE = 30.0


def rand_augment(x: torch.Tensor, magnitude: float, generator: torch.Generator, num_ops: int = 2) -> torch.Tensor:
    """Apply ``num_ops`` random operations per image at ``magnitude``; returns a new float tensor."""
    if magnitude <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    level = min(float(magnitude), MAX_MAGNITUDE) / MAX_MAGNITUDE
    idx = {name: i for i, name in enumerate(OPS)}
    for _ in range(num_ops):
        op = torch.randint(0, len(OPS), (n,), generator=generator, device=dev)
        sign = torch.where(torch.rand(n, generator=generator, device=dev) < 0.5, -1.0, 1.0)

        def amount(name, scale):
            return torch.where(op == idx[name], sign * level * scale, torch.zeros_like(sign))

        # geometric: one affine transform per image (identity unless it drew a geometric op)
        geo = (op >= idx["rotate"])
        if x.device.type != "cpu" or bool(geo.any()):  # no host sync on a GPU (identity warp: < 1e-3 change)
            a = amount("rotate", math.pi / 6)
            shx, shy = amount("shear_x", 0.3), amount("shear_y", 0.3)
            tx, ty = amount("translate_x", 0.9), amount("translate_y", 0.9)  # 0.45 of the size, in [-1, 1] units
            theta = torch.stack([torch.stack([torch.cos(a), -torch.sin(a) + shx, tx], 1),
                                 torch.stack([torch.sin(a) + shy, torch.cos(a), ty], 1)], 1)
            grid = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        # colour: each op at its identity value for the images that did not draw it
        col = lambda t: t.view(n, 1, 1, 1)  # noqa: E731
        x = x * col(1 + amount("brightness", 0.9))
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * col(1 + amount("color", 0.9))
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * col(1 + amount("contrast", 0.9))
        x = x.clamp(0, 255)
        thr = torch.where(op == idx["solarize"], 256.0 - level * 256.0, 1e9)
        x = torch.where(x >= col(thr), 255.0 - x, x)
        bits = torch.where(op == idx["posterize"], 8.0 - float(round(level * 4.0)), 8.0)
        step = col(2.0 ** (8.0 - bits))
        x = torch.floor(x / step) * step
        auto = col(op == idx["autocontrast"])
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        stretched = (x - lo) * (255.0 / (hi - lo).clamp_min(1.0))
        x = torch.where(auto, stretched, x)
    return x.clamp(0, 255)


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, rng: np.random.Generator, generator: torch.Generator,
          num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch mixup (Zhang et al., 2018): lam ~ Beta(alpha, alpha); x = lam x + (1 - lam) x[perm];
    soft targets likewise. Returns (x, y_soft)."""
    onehot = F.one_hot(y, num_classes).float()
    if alpha <= 0:
        return x, onehot
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(len(y), generator=generator, device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * onehot + (1 - lam) * onehot[perm]
