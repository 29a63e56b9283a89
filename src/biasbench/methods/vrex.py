"""VREx: risk extrapolation by penalising the variance of the environments' risks (Krueger et al., ICML 2021;
DomainBed's ``VREx``). Not in the paper; an explicit-bias method beside IRMv1.

Environments: the explicit bias groups *with* the class, (bias value(s), class), as UpWt's and GDRO's
groups (``env_with_label=true``, the default). Without the class (``env_with_label=false``, IRMv1's
environments) every environment of Biased MNIST is equally biased: a bias value's samples are mostly of its
aligned class, so a model that predicts from the bias value has the same risk in each of them and the penalty
does not see the shortcut (measured on a two-factor set at p_bias 0.9, ``anneal_steps=0``: minority accuracy
1.5 % against StdM's 0.0 %, and 29.4 % with the class; ``docs/methods.md``). Per step, over the
environments e present in the batch (E of them):

    R_e = mean CE of the batch's samples in e,   R = (1/E) sum_e R_e,   V = (1/E) sum_e (R_e - R)^2
    loss = R + lambda_t V,   lambda_t = 1 for the first ``anneal_steps`` steps, then ``penalty_weight``

Defaults are DomainBed's (``penalty_weight=10``, ``anneal_steps=500``: a little over one epoch of the
paper's 50,000 images at batch 128). DomainBed also rebuilds its Adam when lambda jumps; here the optimizer
keeps its state (the step is one pure function for every run, fused or captured), so ``anneal_steps=0``
is the way to avoid the jump altogether. Ordinary shuffled sampling.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .groups import group_mean_losses
from .registry import register_method


def risk_variance(ce: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, V): the mean and the variance over the groups present in the batch of their mean CE, in ``ce``'s
    dtype (no host sync; ids of absent or zero-padded groups never count). Computed in float64: V is a
    variance of nearly equal risks, which float32 leaves with about three correct digits (so a fused run's
    V, reduced over more padded groups, would not be a separate run's); the (B, G) product costs nothing."""
    risks, counts = group_mean_losses(ce.double(), groups, num_groups)
    present = (counts > 0).double()
    n = present.sum()
    mean = (risks * present).sum() / n
    return mean.to(ce.dtype), ((((risks - mean) ** 2) * present).sum() / n).to(ce.dtype)


@register_method
class VREx(Method):
    name = "vrex"
    display_name = "VREx"
    uses_bias_labels = True
    group_with_label = True
    group_label_hparam = "env_with_label"
    default_hparams = {"penalty_weight": 10.0, "anneal_steps": 500, "env_with_label": True}
    tensor_names = ("envs", "steps")

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        # (G,) ones: its length is the number of environments, the static size of the per-step reduction
        # (fused runs with fewer environments are zero-padded to the longest, and padded ids never occur)
        self.envs = torch.ones(self.num_groups, device=self.device)
        self.steps = torch.zeros((), device=self.device)  # training steps taken (a float: compared under vmap)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        risk, var = risk_variance(ce, t["groups"][batch.index], t["envs"].shape[0])
        weight = torch.where(t["steps"] >= self.hparams["anneal_steps"], self.hparams["penalty_weight"], 1.0)
        loss = risk + weight * var
        return loss, {"steps": t["steps"] + 1}, {"loss": loss.detach(), "ce": ce.mean().detach(),
                                                 "risk_variance": var.detach()}

    def extra_state(self):
        return {"steps": self.steps}

    def load_extra_state(self, state):
        if "steps" in state:
            self.steps = state["steps"].to(self.device)
