"""UpWt: group upweighting (reference ``GroupUpweightingTrainer``; paper-reference §2.3.2).

Groups g = (explicit bias value(s), class). Loss = mean_i w_{g(i)} CE_i with

- ``normalize=False`` (default, the reference, which produced Table 1): ``w_g = N / n_g``. The mean weight
  over samples is then the number of groups (about 100), which makes the L2 weight decay ~100x weaker
  relative to the loss and the effective learning rate larger;
- ``normalize=True`` (corrected): ``w_g = N / (G n_g)``, so the mean weight over samples is 1.

N = training samples, n_g = training samples in g, G = number of groups. Ordinary shuffled sampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .registry import register_method


@register_method
class UpWeight(Method):
    name = "upweight"
    display_name = "UpWt"
    uses_bias_labels = True
    group_with_label = True
    default_hparams = {"normalize": False}
    tensor_names = ("group_weights",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        counts = torch.bincount(self.groups, minlength=self.num_groups).float()
        w = self.info.num_train / counts
        if self.hparams["normalize"]:
            w = w / self.num_groups
        self.group_weights = w  # (G,)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        loss = (t["group_weights"][t["groups"][batch.index]] * ce).mean()
        return loss, {}, {"loss": loss.detach(), "ce": ce.mean().detach()}
