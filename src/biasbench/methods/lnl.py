"""LNL: Learning Not to Learn (Kim et al., CVPR 2019), the reference's ``LNLTrainer``.

A bias predictor h = MLP2 on an intermediate feature (default ``pooled2``, the 32-d pooled output of the
paper CNN's second conv; hidden 32) predicts the bias group (explicit bias value(s), no class). Two
passes per batch:

(a) loss = CE(z, y) + lambda_ent * mean_i sum_k p_ik log p_ik, p = softmax(h(feat)) + 1e-8: the main
    model is pushed to make h maximally uncertain; only the main model steps;
(b) a fresh forward; feat goes through a gradient multiplier (identity forward, x rho backward);
    loss = CE(h(feat), bias label); main model and predictor both step, so the main model receives the
    predictor's gradient with its sign reversed (rho = -0.1) and makes two optimizer steps per batch.

lambda_ent = 0.01, rho = -0.1; h has its own Adam with the run's lr and weight decay. Reference quirk: the
Biased-MNIST config at HEAD never set the predictor (the script fails); these are the March-2021 values.

``zero_grad`` (how the gradients are cleared between the passes; :attr:`Method.grads_to_none`):

- ``zeros`` (default, the reference as run for the paper): the reference trainer calls ``optim.zero_grad()``
  under PyTorch 1.4, which zeroes the gradients in place. Pass (b)'s loss does not reach the layers above
  the feature (for ``pooled2``: conv3, conv4 and the classifier), yet the main optimizer's second step moves
  them too, with a zero gradient plus weight decay: Adam's momentum steps them again. So *every* main-model
  parameter takes two Adam steps per batch. For the layers above the feature the gradients run g, 0, g, 0, ...:
  Adam's second moment settles near half of g^2, and for a steady g the two steps together move a parameter
  sqrt(2) = 1.41 times as far as one ordinary step (checked with torch's Adam), a larger step size for those
  layers.
- ``none``: ``zero_grad(set_to_none=True)`` (PyTorch >= 2.0's default; what the reference's code does when run
  today): Adam skips the parameters without a gradient, so the layers above the feature take one step per
  batch. Runs recorded before this option existed used it (their run ids differ from any run's now: the run id
  hashes every hyperparameter, defaults included).
"""
from __future__ import annotations

import torch.nn.functional as F

from ..errors import BiasbenchError
from .base import Batch, LossResult, Method, Nets
from .modules import grad_multiply, mlp2
from .registry import register_method


@register_method
class LNL(Method):
    name = "lnl"
    display_name = "LNL"
    step_cost = 2.0  # the main step, then the bias predictor's: two backward passes
    uses_bias_labels = True
    group_with_label = False
    default_hparams = {"entropy_weight": 0.01, "grad_mult": -0.1, "feature": "pooled2", "hidden": 32,
                       "zero_grad": "zeros"}
    hparam_choices = {"zero_grad": ("zeros", "none")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grads_to_none = self.hparams["zero_grad"] == "none"
        dims = getattr(self.model, "feature_dims", {})
        feat = self.hparams["feature"]
        if feat not in dims:
            raise BiasbenchError(f"lnl: model has no feature {feat!r}; it has: {', '.join(sorted(dims)) or 'none'}")
        self.predictor = mlp2(dims[feat], self.hparams["hidden"], self.num_groups).to(self.device)
        self.predictor_optimizer = self.make_optimizer(self.predictor.parameters())

    def modules(self):
        return {"model": self.model, "predictor": self.predictor}

    def optimizers(self):
        return {"optimizer": self.optimizer, "predictor_optimizer": self.predictor_optimizer}

    # (a) then (b); clearing the predictor's gradient before (a) too changes nothing: it does not step in (a)
    phases = (("loss_main", ("optimizer",)), ("loss_bias", None))

    def _feature(self, x, nets: Nets | None = None):
        nets = self.modules() if nets is None else nets
        logits, feats = nets["model"].forward_features(x, (self.hparams["feature"],))
        return logits.float(), feats[self.hparams["feature"]]

    def loss_main(self, nets: Nets, t, batch: Batch) -> LossResult:
        """(a) classification + entropy of the bias predictor; the main model steps."""
        logits, feat = self._feature(batch.x, nets)
        p = F.softmax(nets["predictor"](feat).float(), dim=1) + 1e-8
        neg_entropy = (p * p.log()).sum(dim=1).mean()
        ce = F.cross_entropy(logits, batch.y)
        loss = ce + self.hparams["entropy_weight"] * neg_entropy
        return loss, {}, {"loss": ce.detach(), "neg_entropy": neg_entropy.detach()}

    def loss_bias(self, nets: Nets, t, batch: Batch) -> LossResult:
        """(b) a fresh forward; the predictor learns the bias, the main model gets the reversed gradient."""
        _, feat = self._feature(batch.x, nets)
        bias_logits = nets["predictor"](grad_multiply(feat, self.hparams["grad_mult"])).float()
        loss = F.cross_entropy(bias_logits, t["groups"][batch.index])
        return loss, {}, {"bias_loss": loss.detach()}
