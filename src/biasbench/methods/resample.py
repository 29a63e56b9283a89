"""ReSample: plain ERM on group-balanced batches (the "ReSample"/"SUBG with replacement" baseline of
SubpopBench and Idrissi et al., CLeaR 2022). Not in the paper; an explicit-bias method.

Groups g = (explicit bias value(s), class), as UpWt's and GDRO's. Each epoch draws N samples with replacement,
sample i with probability proportional to 1 / n_{g(i)}, so every training group is equally likely (the
sampler of GDRO's corrected default); loss = mean CE. Where UpWt reweights the loss by 1 / n_g, ReSample
moves the same weights into the sampling: an unbiased estimate of the same objective with bounded per-sample
weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .groups import balanced_sample_weights
from .registry import register_method


@register_method
class ReSample(Method):
    name = "resample"
    display_name = "ReSample"
    uses_bias_labels = True
    group_with_label = True
    default_hparams: dict = {}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample_weights = balanced_sample_weights(self.groups, self.num_groups)

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.sample_weights, len(self.sample_weights), replacement=True, generator=generator)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        loss = F.cross_entropy(nets["model"](batch.x).float(), batch.y)
        return loss, {}, {"loss": loss.detach()}
