"""The method interface. A method owns its loss, extra modules and optimizers, and its update.

The trainer hands a method a :class:`Batch` per step and never looks inside: ``update(batch)`` does
the forward passes, ``backward`` and optimizer steps, and returns detached scalar tensors (no host
synchronisation); ``predict(x)`` gives the logits used for evaluation. ``state_dict`` covers
everything needed for an exact resume (modules, optimizers, method state such as per-sample EMAs).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..errors import BiasbenchError


@dataclass
class Batch:
    """One training batch: ``x`` float (B, 3, H, W) raw 0-255, ``y`` (B,), ``factors`` (B, 7) value
    indices, ``index`` (B,) positions in the training split."""

    x: torch.Tensor
    y: torch.Tensor
    factors: torch.Tensor
    index: torch.Tensor


@dataclass
class TrainInfo:
    """What a method may know about the training split before training: sizes, labels and factors
    (bias-label methods pick their explicit factors from these)."""

    num_train: int
    num_classes: int
    labels: torch.Tensor
    factors: torch.Tensor
    mode: str


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Method(ABC):
    """Base class. Subclasses set ``name``, ``uses_bias_labels``, ``default_hparams`` and implement
    ``update``; multi-model methods also override ``modules``/``optimizers``."""

    name = "base"
    uses_bias_labels = False
    default_hparams: dict[str, Any] = {}

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, info: TrainInfo,
                 hparams: dict[str, Any] | None = None):
        unknown = set(hparams or {}) - set(self.default_hparams)
        if unknown:
            raise BiasbenchError(f"unknown hyperparameter(s) for {self.name}: {', '.join(sorted(unknown))}; "
                                 f"expected: {', '.join(sorted(self.default_hparams)) or 'none'}")
        self.hparams = {**self.default_hparams, **(hparams or {})}
        self.model = model
        self.info = info
        self.optimizer = make_optimizer(model.parameters())

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.optimizer}

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        """Sample order for an epoch; ``None`` = the trainer's seeded shuffle."""
        return None

    @abstractmethod
    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``; returns detached scalar tensors, at least ``loss``."""

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def describe(self) -> dict[str, Any]:
        """What goes into the run config: hyperparameters and whether bias labels are used."""
        return {"name": self.name, "uses_bias_labels": self.uses_bias_labels, "hparams": dict(self.hparams)}
