"""IRMv1: invariant risk minimisation (Arjovsky et al., 2019), the reference's ``IRMv1Trainer``.

Environments: the explicit bias group. The reference uses the bias value(s) **without the class** (10
environments for distractor_shape, contrary to its docstring); ``env_with_label=True`` adds the class.

Sampling: each batch picks ``batch_size / samples_per_env`` environments (16 at batch 128) uniformly
*with replacement* and ``samples_per_env`` (8) samples from each, *with replacement*; an epoch has
floor(N / batch) + 1 batches. The batch is laid out as consecutive per-environment chunks.

Penalty: for each chunk, split 4/4; with a dummy scale w = 1 on the logits, the product of the two halves'
gradients d mean-CE / d w, **summed** over the chunks (the reference; not averaged):
loss = mean CE + lambda * sum_k g_k^a g_k^b, lambda = ``penalty_weight`` = 0.01.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, Method
from .registry import register_method


def irm_penalty(logits: torch.Tensor, y: torch.Tensor, samples_per_env: int) -> torch.Tensor:
    """Sum over environment chunks of grad_w CE(first half) * grad_w CE(second half) at w = 1."""
    k = logits.shape[0] // samples_per_env
    half = samples_per_env // 2
    lg = logits[: k * samples_per_env].view(k, samples_per_env, -1)
    yy = y[: k * samples_per_env].view(k, samples_per_env)
    scale = torch.ones(k, 1, 1, device=logits.device, requires_grad=True)
    s = lg * scale

    def chunk_ce(part_logits, part_y):
        c = part_logits.shape[-1]
        return F.cross_entropy(part_logits.reshape(-1, c), part_y.reshape(-1), reduction="none").view(k, -1).mean(1)

    ce_a = chunk_ce(s[:, :half], yy[:, :half])
    ce_b = chunk_ce(s[:, half:2 * half], yy[:, half:2 * half])
    g_a = torch.autograd.grad(ce_a.sum(), scale, create_graph=True)[0]
    g_b = torch.autograd.grad(ce_b.sum(), scale, create_graph=True)[0]
    return (g_a * g_b).sum()


@register_method
class IRMv1(Method):
    name = "irm"
    uses_bias_labels = True
    group_with_label = False
    default_hparams = {"penalty_weight": 0.01, "samples_per_env": 8, "env_with_label": False}

    def __init__(self, model, make_optimizer, info, hparams=None):
        self.group_with_label = bool((hparams or {}).get("env_with_label", False))
        super().__init__(model, make_optimizer, info, hparams)
        spe = self.hparams["samples_per_env"]
        if spe < 2 or spe % 2:
            raise BiasbenchError(f"irm: samples_per_env must be an even number >= 2, got {spe}")
        if self.info.batch_size % spe:
            raise BiasbenchError(f"irm: batch size {self.info.batch_size} must be a multiple of "
                                 f"samples_per_env {spe}")
        groups = self.groups.cpu()
        self._order = torch.argsort(groups, stable=True)
        counts = torch.bincount(groups, minlength=self.num_groups)
        self._start = torch.cumsum(counts, 0) - counts
        self._count = counts

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        bs = self.info.batch_size
        spe = self.hparams["samples_per_env"]
        n_batches = self.info.num_train // bs + 1
        envs = torch.randint(0, self.num_groups, (n_batches, bs // spe, 1), generator=generator)
        offs = (torch.rand((n_batches, bs // spe, spe), generator=generator) * self._count[envs]).long()
        return self._order[(self._start[envs] + offs).reshape(-1)]

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.model(batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        penalty = irm_penalty(logits, batch.y, self.hparams["samples_per_env"])
        loss = ce + self.hparams["penalty_weight"] * penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "ce": ce.detach(), "penalty": penalty.detach()}
