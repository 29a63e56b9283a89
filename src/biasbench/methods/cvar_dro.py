"""CVaR-DRO: minimise the conditional value at risk of the per-sample loss (Levy et al., NeurIPS 2020, the
mini-batch estimator; SubpopBench's ``CVaRDRO``). Not in the paper; uses no bias labels.

The CVaR at level alpha of a loss distribution is the mean of its worst alpha fraction. Per step, with B the
batch size and k = ceil(alpha B) (at least 1):

    loss = (1/k) sum of the k largest CE_i in the batch

so the gradient comes only from the samples the model gets most wrong, which under a spurious correlation
are mostly the bias-conflicting ones. alpha = 1 is ERM. Default alpha = 0.1 (13 of the paper's 128).
"""
from __future__ import annotations

import math

import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets
from .registry import register_method


@register_method
class CVaRDRO(Method):
    name = "cvar_dro"
    display_name = "CVaR-DRO"
    uses_bias_labels = False
    default_hparams = {"alpha": 0.1}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 < self.hparams["alpha"] <= 1:
            raise BiasbenchError(f"cvar_dro: alpha must be in (0, 1], got {self.hparams['alpha']}")

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        k = max(1, math.ceil(self.hparams["alpha"] * ce.shape[0]))
        loss = ce.topk(k).values.mean()
        return loss, {}, {"loss": loss.detach(), "ce": ce.mean().detach()}
