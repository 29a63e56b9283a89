"""The paper's ``BiasedMNISTCNN`` (reference ``models/cnn_models.py``), 67,760 parameters at 10 classes.

BN(3) on the raw 0-255 input -> conv5x5 3->32 (pad 2) -> ReLU -> maxpool 3x3/2 (pad 1)
-> conv3x3 32->32 (pad 1) -> ReLU  [``hidden``; its global average pool is ``pooled2``, 32-d]
-> conv3x3 32->64 /2 (pad 1) -> ReLU -> conv3x3 64->64 /2 (pad 1) -> ReLU
-> global average pool [``pooled4`` = ``before_logits``, 64-d] -> linear 64 -> classes.
PyTorch default initialisation, no dropout, no BN after convolutions. At 96 px the maps are
96, 48, 48, 24, 12. Unlike the reference (``.squeeze()``), a batch of one keeps its shape.

The first block runs as ``relu(maxpool(conv1))``, the reference's ``maxpool(relu(conv1))`` reordered: the
same values (ReLU is monotonic, so it commutes with max) and the same gradients (a window's gradient goes
to its first maximum in both orders when that maximum is positive, and is zero in both when it is not),
tested bit for bit, with the ReLU and its backward on the pooled 48x48 map instead of the 96x96 one: a
quarter of the bytes of the step's largest elementwise kernels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import pick_features, register_model


class PaperCNN(nn.Module):
    feature_dims = {"pooled2": 32, "pooled4": 64, "before_logits": 64}

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.0):
        super().__init__()
        self.drop_rate = float(drop_rate)  # not in the paper (0): dropout before the classifier, for progressive runs
        w = width
        self.input_bn = nn.BatchNorm2d(in_chans)
        self.conv1 = nn.Conv2d(in_chans, w, 5, 1, 2)
        self.pool1 = nn.MaxPool2d(3, 2, 1)
        self.conv2 = nn.Conv2d(w, w, 3, 1, 1)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, 2, 1)
        self.conv4 = nn.Conv2d(2 * w, 2 * w, 3, 2, 1)
        self.fc = nn.Linear(2 * w, num_classes)
        self.feature_dims = {"pooled2": w, "pooled4": 2 * w, "before_logits": 2 * w}

    def forward_features(self, x: torch.Tensor, names=("pooled2", "pooled4")):
        x = self.input_bn(x)
        x = F.relu(self.pool1(self.conv1(x)))  # = pool1(relu(conv1(x))), see the module docstring
        hidden = F.relu(self.conv2(x))
        x = F.relu(self.conv3(hidden))
        x = F.relu(self.conv4(x))
        pooled4 = x.mean(dim=(2, 3))
        logits = self.fc(F.dropout(pooled4, self.drop_rate, self.training) if self.drop_rate else pooled4)
        pooled2 = hidden.mean(dim=(2, 3))
        feats = pick_features({"pooled2": pooled2, "pooled4": pooled4, "before_logits": pooled4, "hidden": hidden},
                              names, "paper_cnn")
        return logits, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(x)
        x = F.relu(self.pool1(self.conv1(x)))  # = pool1(relu(conv1(x))), see the module docstring
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x)).mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.fc(x)

    def set_dropout(self, p: float) -> None:
        self.drop_rate = float(p)


@register_model("paper_cnn")
def paper_cnn(num_classes: int = 10, **kwargs) -> PaperCNN:
    return PaperCNN(num_classes=num_classes, **kwargs)
