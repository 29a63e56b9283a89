"""Model registry and factory, timm-style: ``create_model(name, num_classes=10, **kwargs)``.

Every model takes float images with raw 0-255 values in the reference's channel order, shape
(N, 3, H, W), and returns logits. Input normalisation lives inside the model (the paper's CNN starts
with a BatchNorm over the raw input). Intermediate features are available by name through
``model.forward_features(x, names) -> (logits, {name: tensor})``; ``model.feature_dims`` maps each name
to its width.
"""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from ..errors import BiasbenchError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        _MODELS[name] = fn
        return fn

    return deco


def pick_features(available: dict, names, model: str) -> dict:
    """``{name: available[name]}`` for the requested feature names (``forward_features``'s contract); an
    unknown name is a KeyError that lists the model's features."""
    unknown = [n for n in names if n not in available]
    if unknown:
        raise KeyError(f"unknown feature {unknown[0]!r}; {model} has {sorted(available)}")
    return {n: available[n] for n in names}


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_MODELS)


def _ensure_loaded() -> None:
    from . import paper_cnn, resnet, simple_cnn  # noqa: F401  (registration side effects)

    try:
        from . import efficientnet  # noqa: F401  (needs timm)
    except ImportError:  # pragma: no cover - timm is a dependency; keep the core usable without it
        pass


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    _ensure_loaded()
    if name not in _MODELS:
        raise BiasbenchError(f"unknown model {name!r}; expected one of: {', '.join(sorted(_MODELS))}")
    try:
        return _MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise BiasbenchError(f"bad options for model {name!r}: {exc}") from None


def check_model(name: str, **kwargs) -> None:
    """Build ``create_model(name, **kwargs)`` on the meta device (no memory, no weights drawn): an unknown model
    or a bad option raises its error here, before a run or sweep writes anything."""
    import torch

    with torch.device("meta"):
        create_model(name, **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
