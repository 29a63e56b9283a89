"""Optimizer factory.

``adam``: torch.optim.Adam with coupled L2 weight decay, as the reference; ``adamw``: decoupled decay;
``sgd``: SGD with momentum; ``madgrad`` / ``madgradw``: MADGRAD (Defazio & Jelassi 2021) from timm, with
coupled / decoupled weight decay and ``momentum`` (default 0.9). On CUDA, Adam/AdamW/SGD use their fused
kernels (same update, one launch)."""
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
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                   fused=fused or None)
        if cfg.optimizer in ("madgrad", "madgradw"):
            from timm.optim import MADGRAD

            return MADGRAD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           decoupled_decay=cfg.optimizer == "madgradw")
        raise BiasbenchError(f"unknown optimizer {cfg.optimizer!r}")

    return make
