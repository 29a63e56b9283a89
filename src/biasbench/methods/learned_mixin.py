"""LearnedMixin and LearnedMixin +H (Clark, Yatskar and Zettlemoyer, EMNLP 2019, "Don't Take the Easy Way Out:
Ensemble Based Methods for Avoiding Known Dataset Biases"), with explicit bias labels. Not in the paper; ReBias
(Bahng et al., ICML 2020) compares with it on its single-bias Biased MNIST (the ``single-bias`` preset's regime).

A product of experts of the main model and a fixed bias-only model, trained together, evaluated without the
bias-only one. The bias-only model is the training split's class distribution in each explicit bias group g
(the bias value(s), without the class), with add-``smoothing`` counts:

    p_b(y | g) = (n(g, y) + s) / (n(g) + C s)

the best any model that sees only g can do (Clark et al.'s bias-only models are trained on the bias features; on
discrete labels the counts are that model). With the main model's logits z and its ``before_logits`` features
h(x), a linear gate learns how much of the bias to mix in, per sample, g(x) = softplus(w . h(x) + b) >= 0:

    log p_e(. | x) = log_softmax(log_softmax(z) + g(x) log p_b(. | g))
    loss = CE(p_e, y) + ``entropy_weight`` * H(softmax(g(x) log p_b(. | g)))

Where the bias explains a sample, the ensemble gets it right with little from the main model, so the main
model's gradient there is small and it learns from the rest. Without the entropy term (``entropy_weight=0``,
the default: LearnedMixin) the gate may learn g -> 0 and drop the bias; LearnedMixin +H (``entropy_weight`` > 0)
penalises the entropy of the scaled bias distribution, which keeps g large. The gate shares the run's
optimizer with the model. Evaluation uses z alone.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets
from .registry import register_method


def bias_log_prior(groups: torch.Tensor, labels: torch.Tensor, num_groups: int, num_classes: int,
                   smoothing: float) -> torch.Tensor:
    """(G, C) log p_b(y | g) from the training split's groups and labels (module docstring)."""
    counts = torch.bincount(groups * num_classes + labels, minlength=num_groups * num_classes)
    counts = counts.view(num_groups, num_classes).float()  # n(g, y)
    p = (counts + smoothing) / (counts.sum(1, keepdim=True) + num_classes * smoothing)
    return p.log()


@register_method
class LearnedMixin(Method):
    name = "learned_mixin"
    display_name = "LearnedMixin"
    uses_bias_labels = True
    group_with_label = False
    default_hparams = {"entropy_weight": 0.0, "smoothing": 1.0}
    tensor_names = ("log_prior",)

    def __init__(self, model, make_optimizer, info, hparams=None):
        super().__init__(model, make_optimizer, info, hparams)
        if self.hparams["entropy_weight"] < 0:
            raise BiasbenchError(f"{self.name}: entropy_weight must be at least 0, "
                                 f"got {self.hparams['entropy_weight']}")
        if self.hparams["smoothing"] <= 0:
            raise BiasbenchError(f"{self.name}: smoothing must be positive (a class never seen in a group would "
                                 f"have log p_b = -inf), got {self.hparams['smoothing']}")
        self.log_prior = bias_log_prior(self.groups, info.labels, self.num_groups, info.num_classes,
                                        self.hparams["smoothing"])
        dim = getattr(model, "feature_dims", {}).get("before_logits")
        if dim is None:
            raise BiasbenchError(f"{self.name} needs a model with 'before_logits' features")
        self.gate = nn.Linear(dim, 1).to(self.device)
        self.optimizer = self.make_optimizer(list(self.model.parameters()) + list(self.gate.parameters()))

    def modules(self):
        return {"model": self.model, "gate": self.gate}

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits, feats = nets["model"].forward_features(batch.x, ("before_logits",))
        scale = F.softplus(nets["gate"](feats["before_logits"]).float())  # (B, 1) g(x)
        bias = scale * t["log_prior"][t["groups"][batch.index]]  # (B, C) g(x) log p_b(. | g)
        ensemble = F.log_softmax(logits.float(), dim=1) + bias
        ce = F.cross_entropy(ensemble, batch.y)  # cross_entropy renormalises: log_softmax of the sum
        log_pb = F.log_softmax(bias, dim=1)
        entropy = -(log_pb.exp() * log_pb).sum(1).mean()
        loss = ce + self.hparams["entropy_weight"] * entropy
        return loss, {}, {"loss": loss.detach(), "ce": ce.detach(), "bias_scale": scale.mean().detach(),
                          "bias_entropy": entropy.detach()}
