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
from .base import Batch, LossResult, Method, Nets
from .groups import EnvironmentChunks
from .registry import register_method


def irm_penalty(logits: torch.Tensor, y: torch.Tensor, samples_per_env: int) -> torch.Tensor:
    """Sum over environment chunks of grad_w CE(first half) * grad_w CE(second half) at w = 1.

    The gradient of the mean CE of ``w * z`` at w = 1 has the closed form mean_i (sum_c p_ic z_ic - z_iy),
    p = softmax(z): the reference's ``autograd.grad(..., create_graph=True)`` without a second autograd
    pass (it also works under ``vmap``); the test checks the two agree.
    """
    k = logits.shape[0] // samples_per_env
    half = samples_per_env // 2
    lg = logits[: k * samples_per_env].reshape(k, samples_per_env, -1)
    yy = y[: k * samples_per_env].reshape(k, samples_per_env)
    dce_dw = (F.softmax(lg, -1) * lg).sum(-1) - lg.gather(-1, yy[..., None]).squeeze(-1)  # (k, spe)
    g_a = dce_dw[:, :half].mean(1)
    g_b = dce_dw[:, half:2 * half].mean(1)
    return (g_a * g_b).sum()


@register_method
class IRMv1(Method):
    name = "irm"
    display_name = "IRMv1"
    uses_bias_labels = True
    group_with_label = False
    group_label_hparam = "env_with_label"
    default_hparams = {"penalty_weight": 0.01, "samples_per_env": 8, "env_with_label": False}

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        spe = self.hparams["samples_per_env"]
        if spe < 2 or spe % 2:
            raise BiasbenchError(f"irm: samples_per_env must be an even number >= 2, got {spe}")
        if self.info.batch_size % spe:
            raise BiasbenchError(f"irm: batch size {self.info.batch_size} must be a multiple of "
                                 f"samples_per_env {spe}")
        self.sampler = EnvironmentChunks(self.groups, self.num_groups)

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return self.sampler.epoch_indices(self.info.num_train, self.info.batch_size, self.hparams["samples_per_env"],
                                          generator)

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits = nets["model"](batch.x).float()
        ce = F.cross_entropy(logits, batch.y)
        penalty = irm_penalty(logits, batch.y, self.hparams["samples_per_env"])
        loss = ce + self.hparams["penalty_weight"] * penalty
        return loss, {}, {"loss": loss.detach(), "ce": ce.detach(), "penalty": penalty.detach()}
