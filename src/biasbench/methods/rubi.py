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

from .base import Batch, Method
from .modules import mlp2
from .registry import register_method


@register_method
class RUBi(Method):
    name = "rubi"
    uses_bias_labels = True
    group_with_label = False
    default_hparams = {"hidden": 32}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bias_branch = mlp2(self.num_groups, self.hparams["hidden"], self.info.num_classes).to(self.device)
        self.optimizer = self.make_optimizer(list(self.model.parameters()) + list(self.bias_branch.parameters()))

    def modules(self):
        return {"model": self.model, "bias_branch": self.bias_branch}

    def bias_logits(self, index: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(self.groups[index], self.num_groups).float()
        return self.bias_branch(onehot).float()

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        z = self.model(batch.x).float()
        b = self.bias_logits(batch.index)
        loss_main = F.cross_entropy(z * torch.sigmoid(b), batch.y)
        loss_bias = F.cross_entropy(b, batch.y)
        loss = loss_main + loss_bias
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "loss_main": loss_main.detach(), "loss_bias": loss_bias.detach()}
