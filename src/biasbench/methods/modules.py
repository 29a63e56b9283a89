"""Small building blocks shared by methods: a 2-layer MLP and a gradient multiplier."""
from __future__ import annotations

import torch
import torch.nn as nn


def mlp2(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (the reference's ``MLP2``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


def grad_multiply(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``factor`` backward (negative = gradient reversal).

    ``x.detach() + factor * (x - x.detach())``: the second term is exactly 0 forward and has gradient
    ``factor``; unlike a custom autograd Function it composes with ``vmap`` and ``torch.compile``."""
    d = x.detach()
    return d + factor * (x - d)
