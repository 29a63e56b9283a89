"""ReBias's ``SimpleConvNet`` (Bahng et al., ICML 2020; ``models/mnist_models.py`` of clovaai/rebias).

Four convolutions of one kernel size (stride 1, "same" padding; 16, 32, 64, 128 channels), each followed by batch
norm and ReLU, then a global average pool [``pooled4`` = ``before_logits``, 128-d] and a linear layer; ``pooled2``
is the global average of the second block's output (32-d), as other models' ``pooled2`` (LNL's default feature). With
``kernel_size=7`` it is ReBias's target network for Biased MNIST; with ``kernel_size=1`` its *biased* network: a
receptive field of one pixel sees colour but no shape, so it can learn the colour shortcuts and never the digit
(ReBias's bias-capturing model; ``rebias`` builds it). Convolutions are Kaiming-normal (fan out), batch norms 1 and 0,
as the reference initialises them. Input: raw 0-255 values, scaled to [-1, 1] inside the model (the reference's
``ToTensor`` and ``Normalize(0.5, 0.5)``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import BiasbenchError
from .registry import pick_features, register_model

WIDTHS = (16, 32, 64, 128)


class SimpleConvNet(nn.Module):
    feature_dims = {"pooled2": WIDTHS[1], "pooled4": WIDTHS[-1], "before_logits": WIDTHS[-1]}

    def __init__(self, num_classes: int = 10, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise BiasbenchError(f"simple_cnn: kernel_size must be a positive odd integer, got {kernel_size}")
        layers, c_in = [], 3
        for c_out in WIDTHS:
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
        self.extracter = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.0)  # 0 (the reference has none) unless progressive learning sets it
        self.fc = nn.Linear(WIDTHS[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor, names=("pooled2", "pooled4")):
        half = self.extracter[:6](x / 127.5 - 1.0)  # two conv-BN-ReLU blocks
        pooled4 = self.extracter[6:](half).mean(dim=(2, 3))
        feats = {"pooled2": half.mean(dim=(2, 3)), "pooled4": pooled4, "before_logits": pooled4}
        return self.fc(self.dropout(pooled4)), pick_features(feats, names, "simple_cnn")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, ())[0]

    def get_classifier(self) -> nn.Linear:
        """The last layer: logits = classifier(before_logits features), after the (eval-time identity) dropout."""
        return self.fc

    def set_dropout(self, p: float) -> None:
        """Dropout before the classifier (progressive learning)."""
        self.dropout.p = float(p)


@register_model("simple_cnn")
def simple_cnn(num_classes: int = 10, kernel_size: int = 7) -> SimpleConvNet:
    return SimpleConvNet(num_classes=num_classes, kernel_size=kernel_size)
