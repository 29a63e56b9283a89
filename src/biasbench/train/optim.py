"""Optimizer factory. ``adam``: torch.optim.Adam with coupled L2 weight decay, as the reference;
``sgd``: SGD with momentum. On CUDA the fused kernels are used (same update, one launch)."""
from __future__ import annotations

from typing import Iterable

import torch

from ..config import TrainConfig
from ..errors import BiasbenchError


def optimizer_factory(cfg: TrainConfig, device: torch.device):
    fused = device.type == "cuda"

    def make(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        params = list(params)
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   fused=fused or None)
        raise BiasbenchError(f"unknown optimizer {cfg.optimizer!r}")

    return make
