"""torchvision's ResNet-18 with raw-input normalisation and an optional small-image stem.

Input: raw 0-255 floats, divided by 255 and standardised per channel (mean 0.5, std 0.25) inside the
model. ``small_stem=True`` replaces the 7x7/2 convolution and the max-pool with a 3x3/1 convolution
(the CIFAR-style stem), for images of 32 px or less. Features: ``pooled2`` (global average pool of
``layer2``, 128-d) and ``pooled4``/``before_logits`` (512-d).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet18 as tv_resnet18

from .registry import pick_features, register_model


class ResNet18(nn.Module):
    feature_dims = {"pooled2": 128, "pooled4": 512, "before_logits": 512}

    def __init__(self, num_classes: int = 10, small_stem: bool = False):
        super().__init__()
        net = tv_resnet18(weights=None, num_classes=num_classes)
        if small_stem:
            net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        net.fc = nn.Sequential(nn.Dropout(0.0), net.fc)  # dropout 0 unless progressive learning sets it
        self.net = net
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5 * 255))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25 * 255))

    def forward_features(self, x: torch.Tensor, names=("pooled2", "pooled4")):
        n = self.net
        x = (x - self.mean) / self.std
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer2(n.layer1(x))
        pooled2 = x.mean(dim=(2, 3))
        x = n.layer4(n.layer3(x))
        pooled4 = x.mean(dim=(2, 3))
        feats = pick_features({"pooled2": pooled2, "pooled4": pooled4, "before_logits": pooled4}, names, "resnet18")
        return n.fc(pooled4), feats

    def get_classifier(self) -> nn.Linear:
        """The last layer: logits = classifier(before_logits features), after the (eval-time identity) dropout."""
        return self.net.fc[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def set_dropout(self, p: float) -> None:
        """Dropout before the classifier (progressive learning); 0 = torchvision's ResNet-18."""
        self.net.fc[0].p = float(p)


@register_model("resnet18")
def resnet18(num_classes: int = 10, small_stem: bool = False, **kwargs) -> ResNet18:
    return ResNet18(num_classes=num_classes, small_stem=small_stem, **kwargs)
