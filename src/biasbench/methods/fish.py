"""Fish: gradient matching for domain generalisation (Shi et al., ICLR 2022), as DomainBed's ``Fish``. Not in the
paper; an explicit-bias method.

Environments: the explicit bias value(s) (``env_with_label=true``: with the class), as IRMv1's. Batches come from
IRMv1's sampler (:class:`~.groups.EnvironmentChunks`): ``batch_size / samples_per_env`` chunks, each of
``samples_per_env`` samples of one environment. One step:

    theta~ <- theta                                  (the inner network starts from the model)
    for each chunk k in order:  theta~ <- opt(theta~, grad CE_k(theta~))     (one inner step per environment)
    theta  <- theta + meta_lr (theta~ - theta)       (the meta step; DomainBed's meta_lr 0.5)

The inner optimizer is the run's (``--optimizer``, Adam by default, as DomainBed's); its state carries over from
step to step (DomainBed reloads it into each new clone). Fish's first-order analysis: the meta step follows the
average gradient plus a term that raises the inner products of the environments' gradients, so the model moves
along directions the environments agree on. The model's batch-norm statistics are interpolated like its
weights (DomainBed interpolates the whole state dict); integer buffers take the inner network's.

Not a loss function: the inner steps are sequential, so the update is Fish's own (:meth:`Fish.update`) and a Fish
run is never fused. Steps of static shape, in place, so a captured CUDA graph can replay them.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, Method
from .groups import EnvironmentChunks
from .registry import register_method


@register_method
class Fish(Method):
    name = "fish"
    display_name = "Fish"
    uses_bias_labels = True
    group_with_label = False
    group_label_hparam = "env_with_label"
    default_hparams = {"meta_lr": 0.5, "samples_per_env": 32, "env_with_label": False}
    phases = ()  # no loss functions: :meth:`update` is Fish's own
    step_cost = 2.0  # a GPU estimate (batch_size / samples_per_env small, latency-bound inner steps), not measured

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        spe, lr = self.hparams["samples_per_env"], self.hparams["meta_lr"]
        if spe < 1 or info.batch_size % spe:
            raise BiasbenchError(f"fish: batch size {info.batch_size} must be a multiple of samples_per_env {spe}")
        if not 0 < lr <= 1:
            raise BiasbenchError(f"fish: meta_lr must be in (0, 1], got {lr}")
        self.inner = copy.deepcopy(model)
        self.optimizer = make_optimizer(self.inner.parameters())  # the inner optimizer; the model takes meta steps
        self.sampler = EnvironmentChunks(self.groups, self.num_groups)

    def modules(self):
        return {"model": self.model, "inner": self.inner}

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        return self.sampler.epoch_indices(self.info.num_train, self.info.batch_size, self.hparams["samples_per_env"],
                                          generator)

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        spe = self.hparams["samples_per_env"]
        meta, inner = self.model.state_dict(), self.inner.state_dict()
        with torch.no_grad():
            for k, v in meta.items():
                inner[k].copy_(v)
        losses = []
        for start in range(0, batch.y.shape[0] - spe + 1, spe):
            x, y = batch.x[start:start + spe], batch.y[start:start + spe]
            self.optimizer.zero_grad(set_to_none=self.grads_to_none)
            loss = F.cross_entropy(self.inner(x).float(), y)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.detach())
        with torch.no_grad():
            for k, v in meta.items():
                if v.is_floating_point():
                    v.add_(inner[k] - v, alpha=self.hparams["meta_lr"])
                else:
                    v.copy_(inner[k])
        return {"loss": torch.stack(losses).mean()}
