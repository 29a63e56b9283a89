"""GDRO: group distributionally robust optimisation (Sagawa et al., ICLR 2020; reference ``GroupDROTrainer``).

Groups g = (explicit bias value(s), class). Per step: l_g = mean CE of the batch's samples in g (0 if
none); ``q <- q * exp(eta * l_g)``, ``q <- q / sum(q)`` (q_0 uniform over training groups);
loss = sum_g q_g l_g with q detached. eta = ``step_size`` = 1e-3 (the paper's script).

Sampling (``sampler``):

- ``balanced`` (default, corrected): group-balanced, with replacement, N draws per epoch, each sample
  drawn with probability proportional to 1 / n_{g(i)} (every group equally likely);
- ``reference_bug``: the reference before commit 4110922 (July 2022, after the paper) computed those
  weights while iterating a *shuffled* loader, so they landed on the wrong samples: sample i gets the
  weight of sample pi(i) for a fixed random permutation pi, and sampling is effectively not group-balanced.
  The paper's GDRO numbers came from this code; use it for numerical reproduction;
- ``shuffle``: plain shuffling (no resampling).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .groups import balanced_sample_weights, group_mean_losses
from .registry import register_method


@register_method
class GroupDRO(Method):
    name = "group_dro"
    display_name = "GDRO"
    uses_bias_labels = True
    group_with_label = True
    default_hparams = {"step_size": 1e-3, "sampler": "balanced"}
    hparam_choices = {"sampler": ("balanced", "reference_bug", "shuffle")}
    tensor_names = ("q",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, device=self.device)
        self.sample_weights = balanced_sample_weights(self.groups, self.num_groups)  # (N,)

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        sampler = self.hparams["sampler"]
        if sampler == "shuffle":
            return None
        w = self.sample_weights
        if sampler == "reference_bug":
            # weights attached through a shuffled pass over the data: a fixed permutation of the right ones
            perm = torch.randperm(len(w), generator=torch.Generator().manual_seed(12345))
            w = w[perm]
        return torch.multinomial(w, len(w), replacement=True, generator=generator)

    @staticmethod
    def group_losses(ce: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
        """(G,) mean CE per group in the batch, 0 for absent groups (no host sync)."""
        return group_mean_losses(ce, groups, num_groups)[0]

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        q = t["q"]  # zero-padded groups (fused runs) keep q = 0: they never count
        lg = self.group_losses(ce, t["groups"][batch.index], q.shape[0])
        q = q * torch.exp(self.hparams["step_size"] * lg.detach())
        q = q / q.sum()
        loss = (q * lg).sum()
        return loss, {"q": q}, {"loss": loss.detach(), "ce": ce.mean().detach(), "q_max": q.max()}

    def extra_state(self):
        return {"q": self.q}

    def load_extra_state(self, state):
        if "q" in state:
            self.q = state["q"].to(self.device)
