"""Bias groups from explicit bias labels (paper-reference §1.6).

For explicit factors V, every training sample gets a group id:

- ``unique`` (the reference's default ``unique_bias_value``): the exact values of V;
- ``majority_minority``: the majority/minority pattern of V (under the dataset's mode).

``with_label=True`` adds the class to the key, as the reference does for trainers whose class name
contains "group" (UpWt, GDRO): with V = [distractor_shape] that gives 100 (value, class) groups.
RUBi, LNL and IRMv1 use V alone (10 groups). Ids are contiguous 0..G-1 over the groups present in the
training split, numbered in sorted key order (the reference numbered by first appearance; only the
partition matters).
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.factors import FACTOR_TABLE, FACTORS, majority_mask
from ..errors import BiasbenchError
from .base import one_hot

GROUPINGS = ("unique", "majority_minority")


def group_keys(labels: np.ndarray, factors: np.ndarray, explicit: tuple[str, ...], grouping: str, mode: str,
               with_label: bool) -> np.ndarray:
    """Integer key per sample (mixed radix over the explicit factors, then the class)."""
    if grouping not in GROUPINGS:
        raise BiasbenchError(f"unknown grouping {grouping!r}; expected one of: {', '.join(GROUPINGS)}")
    if not explicit:
        raise BiasbenchError("no explicit bias factors given; methods with bias labels need at least one")
    labels = np.asarray(labels, dtype=np.int64)
    factors = np.asarray(factors, dtype=np.int64)
    maj = majority_mask(labels, factors, mode) if grouping == "majority_minority" else None
    key = np.zeros(len(labels), dtype=np.int64)
    for name in explicit:
        f = FACTORS.index(name)
        if grouping == "unique":
            radix, v = FACTOR_TABLE[name].num_values, factors[:, f]
        else:
            radix, v = 2, maj[:, f].astype(np.int64)
        key = key * radix + v
    if with_label:
        key = key * 10 + labels
    return key


def group_ids(labels, factors, explicit, grouping, mode, with_label) -> tuple[torch.Tensor, int]:
    """(ids (N,) int64 in 0..G-1, G) for the training split."""
    keys = group_keys(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels),
                      np.asarray(factors.cpu() if isinstance(factors, torch.Tensor) else factors),
                      tuple(explicit), grouping, mode, with_label)
    _, ids = np.unique(keys, return_inverse=True)
    return torch.from_numpy(ids.astype(np.int64)), int(ids.max()) + 1 if len(ids) else 0


def balanced_sample_weights(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(N,) float weights on the CPU, 1 / n_{g(i)}: drawn with ``torch.multinomial``, every training group is
    equally likely (GDRO's and ReSample's group-balanced sampling)."""
    counts = torch.bincount(groups, minlength=num_groups).float()
    return (1.0 / counts)[groups].cpu()


def group_mean_losses(ce: torch.Tensor, groups: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((G,) mean loss per group in the batch, 0 for absent groups; (G,) the batch's samples per group), in
    ``ce``'s dtype, with no host sync (safe under vmap): GDRO's l_g and VREx's risks."""
    member = one_hot(groups, num_groups).to(ce.dtype)  # (B, G)
    counts = member.sum(0)
    return (ce @ member) / counts.clamp_min(1), counts


class EnvironmentChunks:
    """The reference IRMv1 trainer's sampler (IRMv1 and Fish use it): each batch of ``batch_size`` picks
    ``batch_size / per_env`` environments uniformly *with replacement* and ``per_env`` samples of each, *with
    replacement*, laid out as consecutive per-environment chunks; an epoch has floor(N / batch) + 1 batches."""

    def __init__(self, groups: torch.Tensor, num_groups: int):
        groups = groups.cpu()
        self.num_groups = num_groups
        self.order = torch.argsort(groups, stable=True)
        self.count = torch.bincount(groups, minlength=num_groups)
        self.start = torch.cumsum(self.count, 0) - self.count

    def epoch_indices(self, num_train: int, batch_size: int, per_env: int, generator: torch.Generator) -> torch.Tensor:
        n_batches = num_train // batch_size + 1
        envs = torch.randint(0, self.num_groups, (n_batches, batch_size // per_env, 1), generator=generator)
        offs = (torch.rand((n_batches, batch_size // per_env, per_env), generator=generator) * self.count[envs]).long()
        return self.order[(self.start[envs] + offs).reshape(-1)]
