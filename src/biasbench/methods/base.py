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
    y_soft: torch.Tensor | None = None  # (B, C) soft targets when mixup is on


@dataclass
class TrainInfo:
    """What a method may know about the training split before training: sizes, labels and factors
    (bias-label methods pick their explicit factors from these)."""

    num_train: int
    num_classes: int
    labels: torch.Tensor
    factors: torch.Tensor
    mode: str
    explicit: tuple = ()
    grouping: str = "unique"
    batch_size: int = 128


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class Method(ABC):
    """Base class. Subclasses set ``name``, ``uses_bias_labels``, ``default_hparams`` and implement
    ``update``; multi-model methods also override ``modules``/``optimizers``."""

    name = "base"
    uses_bias_labels = False
    supports_soft_targets = False  # mixup
    default_hparams: dict[str, Any] = {}

    group_with_label = False
    """Bias-label methods: whether groups are (bias value(s), class) rather than bias value(s) alone."""

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, info: TrainInfo,
                 hparams: dict[str, Any] | None = None):
        self.hparams = self.check_hparams(hparams)
        self.model = model
        self.info = info
        self.device = info.labels.device
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer(model.parameters())
        if self.uses_bias_labels:
            from .groups import group_ids

            ids, self.num_groups = group_ids(info.labels, info.factors, info.explicit, info.grouping, info.mode,
                                             self.group_with_label)
            self.groups = ids.to(self.device)  # (N,) group id of each training sample

    @classmethod
    def check_hparams(cls, hparams: dict[str, Any] | None) -> dict[str, Any]:
        """Merge with the defaults; unknown names and values of the wrong type are errors."""
        hparams = dict(hparams or {})
        unknown = set(hparams) - set(cls.default_hparams)
        if unknown:
            raise BiasbenchError(f"unknown hyperparameter(s) for {cls.name}: {', '.join(sorted(unknown))}; "
                                 f"expected: {', '.join(sorted(cls.default_hparams)) or 'none'}")
        out = dict(cls.default_hparams)
        for k, v in hparams.items():
            d = cls.default_hparams[k]
            if isinstance(d, bool) and not isinstance(v, bool):
                raise BiasbenchError(f"hyperparameter {k} of {cls.name} must be true or false, got {v!r}")
            if isinstance(d, (int, float)) and not isinstance(d, bool):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise BiasbenchError(f"hyperparameter {k} of {cls.name} must be a number, got {v!r}")
                if isinstance(d, int) and not float(v).is_integer():
                    raise BiasbenchError(f"hyperparameter {k} of {cls.name} must be an integer, got {v!r}")
                v = type(d)(v)
            if isinstance(d, str):
                choices = cls.hparam_choices.get(k)
                if choices and v not in choices:
                    raise BiasbenchError(f"hyperparameter {k} of {cls.name} must be one of "
                                         f"{', '.join(choices)}, got {v!r}")
            out[k] = v
        return out

    hparam_choices: dict[str, tuple[str, ...]] = {}

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
        """What goes into the run config: hyperparameters and the bias labels used (if any)."""
        d = {"name": self.name, "uses_bias_labels": self.uses_bias_labels, "hparams": dict(self.hparams)}
        if self.uses_bias_labels:
            d.update(explicit=list(self.info.explicit), grouping=self.info.grouping,
                     groups_include_class=self.group_with_label, num_groups=self.num_groups)
        else:
            d["explicit"] = f"ignored: {self.name} uses no bias labels"
        return d
