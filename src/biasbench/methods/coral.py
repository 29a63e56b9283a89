"""CORAL: Deep CORAL's feature alignment across environments (Sun and Saenko, ECCV-W 2016; DomainBed's
``CORAL``). Not in the paper; an explicit-bias method beside IRMv1 and VREx.

Environments: the explicit bias groups, by default *without* the class (``env_with_label=false``, IRMv1's
environments): aligning the features of (value, class) groups would align the classes too. Per step, with f the
model's ``before_logits`` features (the classifier's input) and, over the environments e present in the batch
with at least two samples (P of them), their mean mu_e and covariance S_e (denominator n_e - 1):

    penalty = (1 / (P (P - 1) / 2)) sum_{e < e'} [ mean_d (mu_e - mu_e')^2 + mean_{d,d'} (S_e - S_e')^2 ]
    loss = mean CE over the batch + ``penalty_weight`` * penalty

DomainBed's penalty, summed over pairs of its per-domain minibatches and divided by their number; here the
environments are the batch's groups (ordinary shuffled sampling), so their sizes vary, and the objective is
the batch's mean CE rather than the mean of per-domain means. Default ``penalty_weight=1`` (DomainBed's
``mmd_gamma``). The statistics are computed in float64 (the covariance of a group of a few samples, then
differences of nearly equal ones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets, one_hot
from .registry import register_method


def _pairwise_sq(stats: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """sum over pairs e < e' of present groups of mean((stats_e - stats_e')^2), from
    sum_{e<e'} |a_e - a_e'|^2 = P sum_e |a_e|^2 - |sum_e a_e|^2 over the P present rows (no loop over pairs)."""
    a = stats.reshape(stats.shape[0], -1) * present[:, None]
    return (present.sum() * (a ** 2).sum() - (a.sum(0) ** 2).sum()) / a.shape[1]


def coral_penalty(feats: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The mean over pairs of present groups (at least two samples each) of their feature means' and
    covariances' mean squared differences (module docstring), in ``feats``' dtype, no host sync (zero-padded or
    absent group ids never count; 0 with fewer than two such groups)."""
    f = feats.double()
    member = one_hot(groups, num_groups).double()  # (B, G)
    n = member.sum(0)
    present = (n >= 2).double()
    mean = (member.t() @ f) / n.clamp_min(1)[:, None]  # (G, D)
    centred = f - member @ mean  # each sample minus its own group's mean
    cov = (member.t()[:, :, None] * centred).transpose(1, 2) @ centred  # (G, D, B) @ (B, D): one batched matmul
    cov = cov / (n - 1).clamp_min(1)[:, None, None]
    p = present.sum()
    pairs = (p * (p - 1) / 2).clamp_min(1)
    return ((_pairwise_sq(mean, present) + _pairwise_sq(cov, present)) / pairs).to(feats.dtype)


@register_method
class CORAL(Method):
    name = "coral"
    display_name = "CORAL"
    uses_bias_labels = True
    group_with_label = False
    group_label_hparam = "env_with_label"
    default_hparams = {"penalty_weight": 1.0, "env_with_label": False}
    tensor_names = ("envs",)

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        if self.hparams["penalty_weight"] < 0:
            raise BiasbenchError(f"{self.name}: penalty_weight must be at least 0, "
                                 f"got {self.hparams['penalty_weight']}")
        # (G,) ones: its length is the static size of the per-step statistics (as VREx's)
        self.envs = torch.ones(self.num_groups, device=self.device)

    @staticmethod
    def penalty(feats: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
        """The alignment penalty of the batch's environments (a subclass aligns something else: MMD)."""
        return coral_penalty(feats, groups, num_groups)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits, feats = nets["model"].forward_features(batch.x, ("before_logits",))
        ce = F.cross_entropy(logits.float(), batch.y)
        penalty = self.penalty(feats["before_logits"].float(), t["groups"][batch.index], t["envs"].shape[0])
        loss = ce + self.hparams["penalty_weight"] * penalty
        return loss, {}, {"loss": loss.detach(), "ce": ce.detach(), self.name: penalty.detach()}
