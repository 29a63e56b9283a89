"""StdM: the standard model, plain empirical risk minimisation (paper-reference §2.3.1).

Loss = mean over the batch of the cross-entropy CE(z_i, y_i). Uses no bias labels.
"""
from __future__ import annotations

import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .registry import register_method


@register_method
class StdM(Method):
    name = "stdm"
    display_name = "StdM"
    uses_bias_labels = False
    supports_soft_targets = True
    default_hparams: dict = {}

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x)
        loss = F.cross_entropy(logits.float(), batch.y if batch.y_soft is None else batch.y_soft)
        return loss, {}, {"loss": loss.detach()}
