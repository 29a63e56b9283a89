"""LISA: learning invariant predictors with selective augmentation (Yao et al., ICML 2022). Not in the paper;
an explicit-bias method.

Attributes a: the explicit bias value(s) without the class (LISA's "domain"); groups (a, y). Each epoch is a
sequence of pairs (anchor, partner), so every batch of B (even) indices holds B/2 pairs at positions (2k, 2k+1):

- anchors: N/2 draws; with ``anchors=balanced`` (default) group-balanced with replacement, every (a, y) group
  equally likely (the original trains from one loader per group), with ``shuffle`` the first N/2 of a shuffle;
- per pair a strategy, intra-label with probability ``p_sel`` (LISA's 0.5), else intra-attribute. The partner's
  group is drawn uniformly among the training groups (a', y) with a' != a (intra-label: same class, another
  attribute) or (a, y') with y' != y (intra-attribute: same attribute, another class), the partner uniformly
  within that group, so a rare group is as likely a partner as a common one (the original mixes whole group
  batches). An anchor with no such group is its own partner (unmixed).

The loss mixes each end of a pair with the other, lam ~ Beta(``mix_alpha``, ``mix_alpha``) per sample (LISA's 2):

    x~_i = lam_i x_i + (1 - lam_i) x_j,   y~_i = lam_i onehot(y_i) + (1 - lam_i) onehot(y_j),   j = i xor 1
    loss = mean_i CE(f(x~_i), y~_i)   (soft targets; only mixed samples are trained on, as in LISA)

so an epoch trains N mixed images, as many as one of ERM's. Intra-label mixes break the attribute's link to the
label (both ends have the label, different attributes); intra-attribute mixes make the attribute useless
within a mix (both ends share it). The mixing weights are counter-based draws (:mod:`.counter_rng`, keyed by the
run's seed and step), so LISA trains fused, under a captured CUDA graph and across a resume exactly as a plain
run; the pairs come from the epoch's seeded order. ``mix_alpha`` is an integer: Beta(a, a) is then drawn exactly
as an order statistic of uniforms.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets, one_hot
from .counter_rng import CounterDraws, symmetric_beta
from .groups import balanced_sample_weights
from .registry import register_method


def _other_in_row(row: torch.Tensor, col: torch.Tensor, present_row: torch.Tensor, present_col: torch.Tensor,
                  num_rows: int, num_col: int, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each (row, col) (a present group), a column drawn uniformly among the *other* present groups of its
    row, from uniforms ``u``: (column, whether the row has another). ``present_row``/``present_col`` list the
    present groups sorted by (row, col). O(n log G) time and O(n + G) memory (no (n, G) matrix)."""
    key = present_row * num_col + present_col
    counts = torch.bincount(present_row, minlength=num_rows)
    start = torch.cumsum(counts, 0) - counts
    own = torch.searchsorted(key, row * num_col + col)  # the group's own place in its row
    others = counts[row] - 1
    r = torch.minimum((u * others).long(), (others - 1).clamp_min(0))
    idx = start[row] + r
    idx = (idx + (idx >= own).long()).clamp_max(len(key) - 1)  # skip the own group
    return present_col[idx], others > 0


def draw_partners(anchors: torch.Tensor, attr: torch.Tensor, labels: torch.Tensor, intra_label: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """LISA partners of ``anchors`` (indices into the split whose attribute ids and labels are ``attr`` and
    ``labels``, all on the CPU): per anchor a group drawn uniformly among the present (a', y) with a' != a where
    ``intra_label`` (bool per anchor), else among the present (a, y') with y' != y; then a sample uniformly
    within it; the anchor itself where no group qualifies. No loop over samples, and no (anchors, groups) matrix
    (with every factor explicit there are thousands of attribute values)."""
    num_a, num_y = int(attr.max()) + 1, int(labels.max()) + 1
    gid = attr * num_y + labels
    counts = torch.bincount(gid, minlength=num_a * num_y)
    present = torch.nonzero(counts).squeeze(1)  # sorted by (a, y)
    pa, py = present // num_y, present % num_y
    by_label = torch.argsort(py * num_a + pa)  # the same groups sorted by (y, a)
    a, y = attr[anchors], labels[anchors]
    n = len(anchors)
    new_a, has_a = _other_in_row(y, a, py[by_label], pa[by_label], num_y, num_a, torch.rand(n, generator=generator))
    new_y, has_y = _other_in_row(a, y, pa, py, num_a, num_y, torch.rand(n, generator=generator))
    group = torch.where(intra_label, new_a * num_y + y, a * num_y + new_y)
    has = torch.where(intra_label, has_a, has_y)
    order = torch.argsort(gid, stable=True)  # the split's samples grouped by group id
    start = torch.cumsum(counts, 0) - counts
    within = torch.minimum((torch.rand(n, generator=generator) * counts[group]).long(), counts[group] - 1)
    partner = order[(start[group] + within.clamp_min(0)).clamp_max(len(order) - 1)]
    return torch.where(has, partner, anchors)


@register_method
class LISA(CounterDraws, Method):
    name = "lisa"
    display_name = "LISA"
    uses_bias_labels = True
    group_with_label = False  # self.groups: the attribute id a; the trainer's groups are (a, y)
    default_hparams = {"p_sel": 0.5, "mix_alpha": 2, "anchors": "balanced"}
    hparam_choices = {"anchors": ("balanced", "shuffle")}

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        if not 0 <= self.hparams["p_sel"] <= 1:
            raise BiasbenchError(f"{self.name}: p_sel must be in [0, 1], got {self.hparams['p_sel']}")
        if self.hparams["mix_alpha"] < 1:
            raise BiasbenchError(f"{self.name}: mix_alpha must be a positive integer, got {self.hparams['mix_alpha']}")
        if info.batch_size % 2:
            raise BiasbenchError(f"{self.name}: the batch size must be even (a batch is pairs), got {info.batch_size}")
        self.attr = self.groups.cpu()
        self.labels_cpu = info.labels.cpu().long()
        pairs = self.attr * int(self.labels_cpu.max() + 1) + self.labels_cpu
        self.anchor_weights = balanced_sample_weights(pairs, int(pairs.max()) + 1)
        self.init_counter()

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """N/2 (anchor, partner) pairs, interleaved: [a_0, p_0, a_1, p_1, ...] (module docstring)."""
        half = self.info.num_train // 2
        if self.hparams["anchors"] == "balanced":
            anchors = torch.multinomial(self.anchor_weights, half, replacement=True, generator=generator)
        else:
            anchors = torch.randperm(self.info.num_train, generator=generator)[:half]
        intra_label = torch.rand(half, generator=generator) < self.hparams["p_sel"]
        partners = draw_partners(anchors, self.attr, self.labels_cpu, intra_label, generator)
        return torch.stack([anchors, partners], dim=1).reshape(-1)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        seed, step = t["rng_seed"], t["rng_step"]
        pos = torch.arange(batch.y.shape[0], device=batch.y.device)
        other = pos ^ 1  # the other end of each pair
        lam = symmetric_beta(self.hparams["mix_alpha"], seed, step, pos)
        x = lam[:, None, None, None] * batch.x + (1 - lam[:, None, None, None]) * batch.x[other]
        onehot = one_hot(batch.y, self.info.num_classes)
        target = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[other]
        loss = F.cross_entropy(nets["model"](x).float(), target)
        pair_y, pair_a = batch.y.view(-1, 2), t["groups"][batch.index].view(-1, 2)
        return loss, {"rng_step": step + 1}, {
            "loss": loss.detach(),
            "mixed": (batch.index.view(-1, 2)[:, 0] != batch.index.view(-1, 2)[:, 1]).float().mean(),
            "same_class": (pair_y[:, 0] == pair_y[:, 1]).float().mean(),
            "same_attribute": (pair_a[:, 0] == pair_a[:, 1]).float().mean()}
