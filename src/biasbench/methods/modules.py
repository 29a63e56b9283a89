"""Small building blocks shared by methods: a 2-layer MLP and a gradient multiplier."""
from __future__ import annotations

import torch
import torch.nn as nn


def mlp2(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (the reference's ``MLP2``)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))


class _GradMult(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def grad_multiply(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``factor`` backward (negative = gradient reversal)."""
    return _GradMult.apply(x, factor)
