"""Mixup (Zhang et al., ICLR 2018) as a method, SubpopBench's ``Mixup`` baseline. Not in the paper; uses no
bias labels.

Each step mixes the batch with a random permutation of itself:

    x~ = lam x + (1 - lam) x[perm],   loss = lam CE(f(x~), y) + (1 - lam) CE(f(x~), y[perm])
         (= CE against the soft target lam onehot(y) + (1 - lam) onehot(y[perm]))

with ``lam ~ Beta(mix_alpha, mix_alpha)``, SubpopBench's 0.2 (DomainBed's too). ``lam="batch"`` (default, as
Zhang et al. and SubpopBench) draws one lam per batch; ``lam="sample"`` one per sample. The permutation may map a
sample to itself, as ``torch.randperm`` does. Every draw is counter-based (:mod:`.counter_rng`, keyed by the run's
seed and step), so mixup trains fused, under a captured CUDA graph and across a resume exactly as a plain run.

It differs from LISA (:mod:`.lisa`) in choosing partners blindly: a mix of two majority samples of one class
keeps the shortcut, which is why LISA selects its pairs by attribute. And from progressive learning's mixup
(``train.augment``, a stage's regularisation for StdM): the same mixing, but a method, so it sweeps as one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets, one_hot
from .counter_rng import CounterDraws, beta, permutation
from .registry import register_method

PERMUTATION_STREAM, LAMBDA_STREAM = 0, 1
"""Keys that keep the permutation's and the weights' draws apart (one step draws both)."""


@register_method
class Mixup(CounterDraws, Method):
    name = "mixup"
    display_name = "Mixup"
    uses_bias_labels = False
    default_hparams = {"mix_alpha": 0.2, "lam": "batch"}
    hparam_choices = {"lam": ("batch", "sample")}

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        if not self.hparams["mix_alpha"] > 0:
            raise BiasbenchError(f"{self.name}: mix_alpha must be positive, got {self.hparams['mix_alpha']}")
        self.init_counter()

    def mixing(self, seed: torch.Tensor, step: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's (permutation (B,), weights lam (B,)): one lam repeated, or one per sample."""
        perm = permutation(size, seed, step, PERMUTATION_STREAM)
        alpha = self.hparams["mix_alpha"]
        if self.hparams["lam"] == "batch":
            lam = beta(alpha, alpha, seed, step, LAMBDA_STREAM).expand(size)
        else:
            lam = beta(alpha, alpha, seed, step, LAMBDA_STREAM, torch.arange(size, device=perm.device))
        return perm, lam

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        step = t["rng_step"]
        perm, lam = self.mixing(t["rng_seed"], step, batch.y.shape[0])
        w = lam[:, None, None, None]
        x = w * batch.x + (1 - w) * batch.x[perm]
        onehot = one_hot(batch.y, self.info.num_classes)
        target = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[perm]
        loss = F.cross_entropy(nets["model"](x).float(), target)
        return loss, {"rng_step": step + 1}, {"loss": loss.detach(), "lam": lam.mean().detach()}
