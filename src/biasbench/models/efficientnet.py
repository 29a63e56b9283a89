"""EfficientNetV2 (Tan & Le, ICML 2021) through timm, built offline (``pretrained=False``).

Names: ``efficientnetv2_s``, ``efficientnetv2_m``, ``efficientnetv2_l`` (the paper's architectures, PyTorch
padding) and ``efficientnetv2_rw_t`` (Ross Wightman's smaller variant), plus presets for 24-160 px images:

- ``effnetv2_s_w025``: S at 0.25 width, 0.35 depth (about 0.56 M parameters);
- ``effnetv2_s_w050``: S at 0.5 width, 0.5 depth (about 2.7 M parameters).

Options (``--model-kwarg KEY=VALUE``): ``channel_multiplier`` (width), ``depth_multiplier``, ``drop_rate``
(dropout before the classifier; progressive learning changes it per stage), ``drop_path_rate``
(stochastic depth), ``output_stride`` (16 keeps a 6x6 final map at 96 px). The input (raw 0-255 values)
is scaled inside the model. Features by name: ``pooled2`` (global average pool after the second stage of
blocks, stride 4) and ``pooled4``/``before_logits`` (the pooled head features before the classifier).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import BiasbenchError
from .registry import pick_features, register_model

PRESETS = {
    "efficientnetv2_s": ("efficientnetv2_s", {}),
    "efficientnetv2_m": ("efficientnetv2_m", {}),
    "efficientnetv2_l": ("efficientnetv2_l", {}),
    "efficientnetv2_rw_t": ("efficientnetv2_rw_t", {}),
    "effnetv2_s_w025": ("efficientnetv2_s", {"channel_multiplier": 0.25, "depth_multiplier": 0.35}),
    "effnetv2_s_w050": ("efficientnetv2_s", {"channel_multiplier": 0.5, "depth_multiplier": 0.5}),
}
OPTIONS = {"channel_multiplier", "depth_multiplier", "drop_rate", "drop_path_rate", "output_stride"}


class TimmEfficientNet(nn.Module):
    def __init__(self, arch: str, num_classes: int = 10, **kwargs):
        super().__init__()
        import timm

        unknown = set(kwargs) - OPTIONS
        if unknown:
            raise BiasbenchError(f"unknown EfficientNetV2 option(s): {', '.join(sorted(unknown))}; "
                                 f"expected: {', '.join(sorted(OPTIONS))}")
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5 * 255))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25 * 255))
        chans = [i["num_chs"] for i in self.net.feature_info]
        self.feature_dims = {"pooled2": chans[1] if len(chans) > 1 else chans[0],
                             "pooled4": self.net.num_features, "before_logits": self.net.num_features}

    def set_dropout(self, p: float) -> None:
        self.net.drop_rate = float(p)  # read by timm's forward_head on every call

    def get_classifier(self) -> nn.Linear:
        """The last layer: logits = classifier(before_logits features), timm's ``get_classifier``."""
        return self.net.get_classifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def forward_features(self, x: torch.Tensor, names=("pooled2", "pooled4")):
        n = self.net
        x = n.bn1(n.conv_stem((x - self.mean) / self.std))
        pooled2 = None
        for i, block in enumerate(n.blocks):
            x = block(x)
            if i == 1:
                pooled2 = x.mean(dim=(2, 3))
        x = n.bn2(n.conv_head(x))
        pooled = n.forward_head(x, pre_logits=True)
        logits = n.classifier(pooled)
        feats = pick_features({"pooled2": pooled2, "pooled4": pooled, "before_logits": pooled}, names,
                              "EfficientNetV2")
        return logits, feats


def _register(name: str, arch: str, defaults: dict) -> None:
    @register_model(name)
    def build(num_classes: int = 10, **kwargs):
        return TimmEfficientNet(arch, num_classes, **{**defaults, **kwargs})


for _name, (_arch, _defaults) in PRESETS.items():
    _register(_name, _arch, _defaults)
