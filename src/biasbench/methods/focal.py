"""Focal loss (Lin et al., ICCV 2017), SubpopBench's ``Focal`` baseline. Not in the paper; uses no bias labels.

    loss = mean_i (1 - p_i)^gamma CE_i,   p_i = softmax(z_i)_{y_i} = exp(-CE_i)

SubpopBench's ``gamma`` = 1 (its search: 0.5 x 10^U(0, 1)); gamma = 0 is StdM. The factor shrinks the loss of
samples the model already gets right with confidence: a shortcut's majority samples, once learned, weigh less
than the minority samples it gets wrong. The factor is differentiated through, as in the original and SubpopBench
(``p`` is not detached).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets
from .registry import register_method


def focal_loss(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample focal losses (B,) of float logits (B, C) and labels (B,)."""
    ce = F.cross_entropy(logits, y, reduction="none")
    return (1 - torch.exp(-ce)) ** gamma * ce


@register_method
class Focal(Method):
    name = "focal"
    display_name = "Focal"
    uses_bias_labels = False
    default_hparams = {"gamma": 1.0}

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        if self.hparams["gamma"] < 0:
            raise BiasbenchError(f"{self.name}: gamma must be >= 0, got {self.hparams['gamma']}")

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        per_sample = focal_loss(logits, batch.y, self.hparams["gamma"])
        loss = per_sample.mean()
        with torch.no_grad():
            ce = F.cross_entropy(logits, batch.y)
        return loss, {}, {"loss": loss.detach(), "ce": ce}
