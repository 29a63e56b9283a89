"""StdM: the standard model, plain empirical risk minimisation (paper-reference §2.3.1).

Loss = mean over the batch of the cross-entropy CE(z_i, y_i). Uses no bias labels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, Method
from .registry import register_method


@register_method
class StdM(Method):
    name = "stdm"
    uses_bias_labels = False
    supports_soft_targets = True
    default_hparams: dict = {}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.model(batch.x)
        loss = F.cross_entropy(logits.float(), batch.y if batch.y_soft is None else batch.y_soft)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach()}
