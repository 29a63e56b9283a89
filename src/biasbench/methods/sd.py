"""SD: Spectral Decoupling (Pezeshki et al., NeurIPS 2021), as the reference adapted it.

``penalty="true_class"`` (default, the reference): loss = CE + (lambda / 2) * mean_i (z_{i,y_i} - gamma)^2,
only the ground-truth logit is penalised. ``penalty="all_logits"`` (the published method):
loss = CE + (lambda / 2) * mean_i sum_k (z_{i,k} - gamma)^2. lambda = gamma = 1e-3 for all classes.
Uses no bias labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .registry import register_method


def sd_penalty(logits: torch.Tensor, y: torch.Tensor, lam: float, gamma: float, which: str) -> torch.Tensor:
    if which == "true_class":
        z = logits.gather(1, y[:, None]).squeeze(1)
        return 0.5 * lam * ((z - gamma) ** 2).mean()
    return 0.5 * lam * ((logits - gamma) ** 2).sum(dim=1).mean()


@register_method
class SpectralDecoupling(Method):
    name = "sd"
    display_name = "SD"
    uses_bias_labels = False
    default_hparams = {"lambda": 1e-3, "gamma": 1e-3, "penalty": "true_class"}
    hparam_choices = {"penalty": ("true_class", "all_logits")}

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        pen = sd_penalty(logits, batch.y, self.hparams["lambda"], self.hparams["gamma"], self.hparams["penalty"])
        loss = ce + pen
        return loss, {}, {"loss": loss.detach(), "ce": ce.detach(), "penalty": pen.detach()}
