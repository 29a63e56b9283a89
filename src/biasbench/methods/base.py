"""The method interface. A method owns its loss, extra modules and optimizers, and its update.

The trainer hands a method a :class:`Batch` per step and never looks inside: ``update(batch)`` does
the forward passes, ``backward`` and optimizer steps, and returns detached scalar tensors (no host
synchronisation); ``predict(x)`` gives the logits used for evaluation. ``state_dict`` covers
everything needed for an exact resume (modules, optimizers, method state such as per-sample EMAs).

**The update is functional.** A method declares its update as ``phases``: a sequence of (loss function,
optimizers it steps). A loss function ``loss(nets, t, batch) -> (loss, updates, stats)`` is pure: it
calls the networks only through ``nets`` (name -> callable with ``forward_features``), reads per-run
tensors only from ``t`` (the method's ``tensor_names``, e.g. GDRO's ``q``, LfF's EMAs, the bias
groups), returns new values for the tensors it changes in ``updates`` (never in place) and detached
scalars in ``stats``; everything else it may read from ``self`` (hyperparameters, ``info``) must be the
same for every run that could be fused. The generic :meth:`Method.update` runs the phases on the
method's own modules; :mod:`biasbench.train.fused` runs the *same* loss functions under ``torch.func.vmap``
over R stacked copies, which is what makes a fused run of R models R separate runs.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

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
    epochs: int = 0  # the run's epochs (0: not known, as in a bare method built by hand)
    seed: int = 0  # the run's seed (keys the counter-based draws of a loss function that needs randomness: LISA)


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
Nets = Mapping[str, Callable[..., torch.Tensor]]
"""Module name -> the network to call: the module itself, or its per-run functional stand-in when fused."""
LossResult = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]
"""(loss to backpropagate, new values of changed per-run tensors, detached scalar statistics)."""


def one_hot(index: torch.Tensor, num: int) -> torch.Tensor:
    """Float one-hot rows; unlike ``F.one_hot`` it never reads values on the host (safe under vmap)."""
    return (index[..., None] == torch.arange(num, device=index.device)).float()


class Method(ABC):
    """Base class. Subclasses set ``name``, ``display_name``, ``uses_bias_labels``, ``default_hparams`` and implement
    ``loss`` (or declare other ``phases``); multi-model methods also override ``modules``/``optimizers``
    and stateful ones list their per-run tensors in ``tensor_names``."""

    name = "base"
    display_name = "base"
    """The name tables and figures show (the paper's abbreviations for its methods: StdM, UpWt, GDRO, ...)."""
    uses_bias_labels = False
    supports_soft_targets = False  # mixup
    default_hparams: dict[str, Any] = {}

    group_with_label = False
    """Bias-label methods: whether groups are (bias value(s), class) rather than bias value(s) alone."""

    group_label_hparam: str | None = None
    """The boolean hyperparameter, if any, that sets ``group_with_label`` per run (IRMv1's and VREx's
    ``env_with_label``); its default is the method's default grouping."""

    step_cost = 1.0
    """GPU time of one training step relative to one network's forward, backward and optimizer step (StdM's).
    Two-network or two-pass methods are 2: captured on an H100 they train at 24k images/s against 48-50k for
    the others (``docs/benchmarks.md``). ``sweep --streams`` balances costly and cheap trials with it."""

    phases: tuple[tuple[str, tuple[str, ...] | None], ...] = (("loss", None),)
    """The update: per phase the name of a loss function and the optimizers it steps (None: all). Every
    gradient is cleared before each phase's backward, as :attr:`grads_to_none` says."""

    grads_to_none = True
    """How a phase clears the gradients. True: set to None (``zero_grad()`` of PyTorch >= 2.0), so an optimizer
    skips a parameter that the phase's loss does not reach. False: zeroed in place (``zero_grad()`` of the
    PyTorch 1.4 the reference ran on), so such a parameter, once it has had a gradient, is stepped with a zero
    one (Adam: its momentum and weight decay still move it). The two differ only for a method with a phase
    that leaves part of a stepped network out of its loss (LNL's second pass)."""

    tensor_names: tuple[str, ...] = ()
    """Attributes holding per-run tensors that the loss functions read (``groups`` is added for bias-label
    methods). When fused, tensors of different lengths are zero-padded to the longest, so a method must
    read zero padding as absent (GDRO: a group with zero weight)."""

    def __init_subclass__(cls, **kwargs):
        """A method class must define every loss function its ``phases`` name (``loss`` by default), each
        ``(nets, t, batch) -> LossResult`` as the module docstring states: checked when the class is made."""
        super().__init_subclass__(**kwargs)
        missing = [name for name, _ in cls.phases if not callable(getattr(cls, name, None))]
        if missing:
            raise TypeError(f"method class {cls.__name__} declares phases without loss functions: {', '.join(missing)}")

    def __init__(self, model: nn.Module, make_optimizer: OptimizerFactory, info: TrainInfo,
                 hparams: dict[str, Any] | None = None):
        self.hparams = self.check_hparams(hparams)
        if self.group_label_hparam:
            self.group_with_label = self.hparams[self.group_label_hparam]
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

    def begin_epoch(self, epoch: int, predict_train: Callable[[str], torch.Tensor]) -> str | None:
        """Called by the trainer before it draws each epoch's order (on resume, first for the epoch it resumes
        at); ``predict_train(name)`` gives the logits of the module ``name`` over the training split, in
        evaluation mode as the trainer evaluates. A method whose networks or optimizers change here (JTT's
        switch to its second stage) returns a line for the log, and the trainer builds its training step again
        (a captured step holds the optimizers it was captured with); None: nothing changed. Such a method is
        trained unfused. Whatever it changes must be in its ``state_dict`` for an exact resume."""
        return None

    def before_evaluation(self, epoch: int, held_out: Callable[[str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                          generator: torch.Generator) -> str | None:
        """Called by the trainer before each evaluation (after the epoch's training, before any split is
        predicted); ``held_out(split)`` gives (the model's ``before_logits`` features (N, D) float32, labels (N,),
        factors (N, 7)) over a split, in evaluation mode; ``generator`` is seeded by the run's seed and the epoch.
        A method that changes what ``predict`` computes here (DFR's refit last layer) returns a line for the log;
        None: nothing changed. What it changes must be in its ``state_dict`` (an evaluated run resumes after the
        evaluation) and in :meth:`evaluated_model_state`. Such a method is trained unfused."""
        return None

    def evaluated_model_state(self) -> dict[str, torch.Tensor]:
        """The state dict of the main model as :meth:`predict` evaluates it: what a run keeps for an evaluation
        epoch (``weights/epochNNN.pt``, which ``biasbench audit`` loads into a fresh model). The model's own by
        default; a method whose prediction replaces a layer (DFR) puts that layer in."""
        return self.model.state_dict()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-run tensors the loss functions read, by name."""
        names = (("groups",) if self.uses_bias_labels else ()) + tuple(self.tensor_names)
        return {n: getattr(self, n) for n in names}

    def update(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One optimisation step on ``batch``: each phase's loss, ``backward`` and its optimizers' steps;
        returns detached scalar tensors, at least ``loss``."""
        stats: dict[str, torch.Tensor] = {}
        optimizers = self.optimizers()
        for loss_name, stepped in self.phases:
            loss, updates, st = getattr(self, loss_name)(self.modules(), self.tensors(), batch)
            for k, v in updates.items():
                setattr(self, k, v)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=self.grads_to_none)
            loss.backward()
            for k in (stepped or optimizers):
                optimizers[k].step()
            stats.update(st)
        return stats

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
