"""LfF: Learning from Failure (Nam et al., NeurIPS 2020), the reference's ``LffTrainer``. No bias labels.

Two networks of the same architecture, independently initialised: the main model f and a biased model
g, each with its own Adam. Per training sample, exponential moving averages of both models' CE:
``e <- alpha * e + (1 - alpha * [seen]) * CE`` (the first visit stores CE), alpha = ``ema`` = 0.7. Each
EMA is normalised by its class-wise maximum over the training samples of that class (unseen samples
hold 0). Relative difficulty ``w = e_g / (e_g + e_f + 1e-8)``: large where the biased model fails.

loss = mean_i w_i CE_f(i) + mean_i GCE_g(i), GCE(x, y) = q * p_y^q * CE (p_y detached; its gradient is
that of (1 - p_y^q) / q), q = 0.5 for Biased MNIST (LfF's default is 0.7). g amplifies the easy
(biased) cues; f focuses on the samples g gets wrong. Evaluation uses f.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets
from .registry import register_method


def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float) -> torch.Tensor:
    """Per-sample generalized cross-entropy in LfF's form: q * p_y^q * CE, with p_y detached."""
    ce = F.cross_entropy(logits, y, reduction="none")
    p_y = F.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1).detach()
    return q * p_y.pow(q) * ce


@register_method
class LfF(Method):
    name = "lff"
    display_name = "LfF"
    uses_bias_labels = False
    step_cost = 2.0  # two networks trained side by side
    default_hparams = {"q": 0.5, "ema": 0.7}
    tensor_names = ("ema_main", "ema_biased", "seen")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.biased = copy.deepcopy(self.model)
        for m in self.biased.modules():  # an independent initialisation, as two separately built networks
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self.biased_optimizer = self.make_optimizer(self.biased.parameters())
        n = self.info.num_train
        self.ema_main = torch.zeros(n, device=self.device)
        self.ema_biased = torch.zeros(n, device=self.device)
        self.seen = torch.zeros(n, device=self.device)
        self.labels = self.info.labels.to(self.device)

    def modules(self):
        return {"model": self.model, "biased": self.biased}

    def optimizers(self):
        return {"optimizer": self.optimizer, "biased_optimizer": self.biased_optimizer}

    def _class_max(self, ema: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.info.num_classes, device=ema.device).scatter_reduce(0, self.labels, ema, "amax")

    def ema_weights(self, t, index: torch.Tensor, y: torch.Tensor, ce_main: torch.Tensor,
                    ce_biased: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The EMAs updated at ``index`` (new tensors, ``t`` untouched) and w = e_g / (e_g + e_f + 1e-8)
        from the normalised EMAs: (w, {"ema_main", "ema_biased", "seen"})."""
        a = self.hparams["ema"]
        seen = t["seen"][index]
        ema_main = t["ema_main"].index_put((index,), a * t["ema_main"][index] + (1 - a * seen) * ce_main)
        ema_biased = t["ema_biased"].index_put((index,), a * t["ema_biased"][index] + (1 - a * seen) * ce_biased)
        new_seen = t["seen"].index_put((index,), torch.ones_like(seen))
        ef = ema_main[index] / self._class_max(ema_main)[y].clamp_min(1e-12)
        eg = ema_biased[index] / self._class_max(ema_biased)[y].clamp_min(1e-12)
        return eg / (eg + ef + 1e-8), {"ema_main": ema_main, "ema_biased": ema_biased, "seen": new_seen}

    @torch.no_grad()
    def sample_weights(self, index: torch.Tensor, y: torch.Tensor, ce_main: torch.Tensor,
                       ce_biased: torch.Tensor) -> torch.Tensor:
        """Update this method's EMAs at ``index`` and return the weights (see :meth:`ema_weights`)."""
        w, updates = self.ema_weights(self.tensors(), index, y, ce_main, ce_biased)
        for k, v in updates.items():
            setattr(self, k, v)
        return w

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits_f = nets["model"](batch.x).float()
        logits_g = nets["biased"](batch.x).float()
        ce_f = F.cross_entropy(logits_f, batch.y, reduction="none")
        ce_g = F.cross_entropy(logits_g, batch.y, reduction="none")
        w, updates = self.ema_weights(t, batch.index, batch.y, ce_f.detach(), ce_g.detach())
        loss_f = (w * ce_f).mean()
        loss_g = gce_loss(logits_g, batch.y, self.hparams["q"]).mean()
        return loss_f + loss_g, updates, {"loss": ce_f.mean().detach(), "weighted_loss": loss_f.detach(),
                                          "biased_gce": loss_g.detach(), "mean_weight": w.mean()}

    def extra_state(self):
        return {"ema_main": self.ema_main, "ema_biased": self.ema_biased, "seen": self.seen}

    def load_extra_state(self, state):
        for k in ("ema_main", "ema_biased", "seen"):
            if k in state:
                setattr(self, k, state[k].to(self.device))
