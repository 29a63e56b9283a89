"""RUBi (Cadene et al., NeurIPS 2019), as the reference adapted it to explicit bias labels.

A bias-only branch b = MLP2(one-hot(bias group)) (hidden 32, the reference loader's value; the groups are
the explicit bias value(s) without the class: 10 groups for distractor_shape). With main logits z:
loss = CE(z * sigmoid(b), y) + CE(b, y); both branches share one Adam optimizer. The mask lets the main
branch leave to the bias branch what the bias explains. Evaluation uses z alone.

Reference quirk: the Biased-MNIST config at HEAD never set RUBi's bias model (the script fails); these
are the values of the March-2021 ``configure_biased_mnist`` (paper-reference §2.4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Batch, LossResult, Method, Nets, one_hot
from .modules import mlp2
from .registry import register_method


@register_method
class RUBi(Method):
    name = "rubi"
    display_name = "RUBi"
    uses_bias_labels = True
    group_with_label = False
    default_hparams = {"hidden": 32}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_branch = mlp2(self.num_groups, self.hparams["hidden"], self.info.num_classes).to(self.device)
        self.optimizer = self.make_optimizer(list(self.model.parameters()) + list(self.bias_branch.parameters()))

    def modules(self):
        return {"model": self.model, "bias_branch": self.bias_branch}

    def bias_logits(self, index: torch.Tensor, nets: Nets | None = None, groups: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32):
        """The bias branch's logits for training samples ``index`` (default: this method's own branch);
        ``dtype``: the branch's input dtype (the images' dtype)."""
        nets = self.modules() if nets is None else nets
        groups = self.groups if groups is None else groups
        return nets["bias_branch"](one_hot(groups[index], self.num_groups).to(dtype)).float()

    def loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        z = nets["model"](batch.x).float()
        b = self.bias_logits(batch.index, nets, t["groups"], batch.x.dtype)
        loss_main = F.cross_entropy(z * torch.sigmoid(b), batch.y)
        loss_bias = F.cross_entropy(b, batch.y)
        loss = loss_main + loss_bias
        return loss, {}, {"loss": loss.detach(), "loss_main": loss_main.detach(), "loss_bias": loss_bias.detach()}
