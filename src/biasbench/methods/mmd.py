"""MMD: feature alignment across environments by the maximum mean discrepancy (Li et al., CVPR 2018, as
DomainBed's ``MMD``). Not in the paper; CORAL's method with another penalty (:mod:`.coral`: environments,
loss, defaults ``penalty_weight=1``, ``env_with_label=false``).

With f the ``before_logits`` features and the Gaussian kernel of DomainBed, summed over its bandwidths,

    k(x, y) = sum_{gamma in 1e-3, 1e-2, ..., 1e3} exp(-gamma |x - y|^2),

the squared MMD of environments e and e' is mean k(f_e, f_e) + mean k(f_e', f_e') - 2 mean k(f_e, f_e') (the
means over all pairs of their samples, a sample with itself included, as DomainBed's), and the penalty is its
mean over the pairs of environments present in the batch (P of them, at least one sample each). With A the
(G, G) matrix of mean kernel values between environments, the pairs sum in closed form:
sum_{e<e'} (A_ee + A_e'e' - 2 A_ee') = P sum_e A_ee - sum_{e,e'} A_ee'. Computed in float64 from one (B, B)
kernel matrix of the batch.
"""
from __future__ import annotations

import torch

from .base import one_hot
from .coral import CORAL
from .registry import register_method

BANDWIDTHS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
"""DomainBed's gammas of the Gaussian kernel."""


def mmd_penalty(feats: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The mean over pairs of the environments present in the batch of their squared MMD (module docstring), in
    ``feats``' dtype, no host sync (absent or zero-padded ids never count; 0 with fewer than two present)."""
    f = feats.double()
    sq = (f ** 2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * f @ f.t()).clamp_min(1e-30)  # DomainBed's my_cdist
    kernel = sum(torch.exp(-g * dist) for g in BANDWIDTHS)
    member = one_hot(groups, num_groups).double()  # (B, G)
    n = member.sum(0)
    present = (n > 0).double()
    mean_k = (member.t() @ kernel @ member) / (n[:, None] * n[None, :]).clamp_min(1)  # (G, G)
    mean_k = mean_k * present[:, None] * present[None, :]
    p = present.sum()
    pairs = (p * (p - 1) / 2).clamp_min(1)
    return ((p * mean_k.diagonal().sum() - mean_k.sum()) / pairs).to(feats.dtype)


@register_method
class MMD(CORAL):
    name = "mmd"
    display_name = "MMD"

    @staticmethod
    def penalty(feats: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
        return mmd_penalty(feats, groups, num_groups)
