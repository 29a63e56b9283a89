"""DFR: Deep Feature Reweighting (Kirichenko, Izmailov and Wilson, ICLR 2023). Not in the paper; uses the
bias labels of a held-out split.

The network trains with plain ERM (StdM's loss, so a DFR run's training is a StdM run's). Before each
evaluation its last layer is refit on group-balanced data, and evaluation uses the refit layer:

1. features f = the model's ``before_logits`` features (the classifier's input) over the split ``source``, in
   evaluation mode: ``val`` (DFR^Val_Tr, DFR's main variant and the default: the validation split, biased as
   the training split is), ``balanced_val`` (the dataset's unbiased validation split, where the groups are
   nearly balanced already) or ``train`` (DFR^Tr_Tr);
2. groups = (explicit bias value(s), class), numbered as UpWt's (the run's ``--explicit`` and ``--grouping``);
3. ``subsets`` times, a group-balanced subset: every group present in the split cut to the size m of the
   smallest, drawn without replacement;
4. f standardised with the mean and standard deviation over the whole split (DFR's ``StandardScaler``);
5. per subset an L1-penalised logistic regression with inverse strength ``C``, one-vs-rest over the classes
   (scikit-learn's ``liblinear``, DFR's solver, which fitted multi-class problems one-vs-rest; scikit-learn >= 1.8
   spells the L1 penalty ``l1_ratio=1``); its coefficients W and intercepts c are averaged over the subsets.

The refit layer is W and c with the standardisation folded in, ``logits = (W / s) f + c - W (mu / s)``: a linear
layer of the classifier's shape, applied in float32 whatever the autocast (in bf16 the two folded terms, each
about mu / s times the standardised signal, would keep too few digits). Training goes on with the model's own
classifier, so an evaluation never changes training; the refit layer is a module of the method (checkpointed), and the weights a run keeps for an
evaluation epoch (``weights/epochNNN.pt``, which ``biasbench audit`` loads) are the model with its classifier
replaced by the refit layer, the predictor that was evaluated. A refit draws from a generator seeded by the run's
seed and the epoch, so resuming gives the same layer.

``subsets`` = 10 is this package's default (DFR's code averages more refits; each costs one fit).

C: by default the hyperparameter ``C`` (1.0), to sweep and pick with ``report --select`` as for every other
method. ``tune_C=true`` is DFR's own protocol (``dfr_on_validation_tune``): the split is cut into two random
halves; per C of DFR's grid (1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01) one refit on a balanced subset of the first half
is scored by its worst-group accuracy on the second (groups present there); the best C, the first in grid order
on a tie (DFR's ``argmax``), is then used for the refit above on the whole split. Refitting on the validation
split and selecting on it uses that split twice, as DFR does.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..errors import BiasbenchError
from .groups import group_ids
from .registry import register_method
from .stdm import StdM

HeldOut = Callable[[str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
"""DFR's grid of inverse regularisation strengths, in its order (ties go to the first)."""


def balanced_subset(groups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of a group-balanced subset, sorted: ``m`` samples of every group present in ``groups`` (ids
    0..G-1, some possibly absent), m = the smallest present group's size, drawn uniformly without replacement."""
    counts = torch.bincount(groups)
    m = int(counts[counts > 0].min())
    perm = torch.randperm(len(groups), generator=generator)
    sorted_groups, order = torch.sort(groups[perm], stable=True)  # a random order within each group
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(groups)) - start[sorted_groups]
    return perm[order[rank < m]].sort().values


def fit_last_layer(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int, C: float,
                   subsets: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """(weight (K, D), bias (K,), samples per subset): the averaged L1 logistic regressions on standardised
    features folded back onto the raw features (module docstring, steps 3-5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    present = np.unique(labels)
    if len(present) != num_classes:  # every class is in each subset, as the groups include the class
        raise BiasbenchError(f"dfr: the held-out split has samples of {len(present)} of {num_classes} classes")
    mu, sd = features.mean(0), features.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # a feature constant over the split (a dead unit) stays 0 after scaling
    z = (features - mu) / sd
    weight, bias = np.zeros((num_classes, z.shape[1])), np.zeros(num_classes)
    g = torch.from_numpy(groups)
    for _ in range(subsets):
        idx = balanced_subset(g, generator).numpy()
        seed = int(torch.randint(0, 2 ** 31 - 1, (), generator=generator))
        ovr = OneVsRestClassifier(LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", random_state=seed))
        ovr.fit(z[idx], labels[idx])
        weight += np.concatenate([e.coef_ for e in ovr.estimators_])
        bias += np.concatenate([e.intercept_ for e in ovr.estimators_])
    weight, bias = weight / subsets, bias / subsets
    return weight / sd, bias - weight @ (mu / sd), len(idx)


def tune_C(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, num_classes: int,
           generator: torch.Generator, grid: tuple[float, ...] = C_GRID) -> tuple[float, dict[float, float]]:
    """(the C of ``grid`` with the best worst-group accuracy, {C: worst-group accuracy in %}): DFR's tuning
    (module docstring) on two random halves of the split; one balanced-subset refit per C on the first half,
    scored on the groups present in the second."""
    perm = torch.randperm(len(labels), generator=generator).numpy()
    held, fit = perm[:len(labels) // 2], perm[len(labels) // 2:]
    present = np.unique(groups[held])
    worst = {}
    for C in grid:
        w, b, _ = fit_last_layer(features[fit], labels[fit], groups[fit], num_classes, C, 1, generator)
        right = (features[held] @ w.T + b).argmax(1) == labels[held]
        worst[C] = 100.0 * min(right[groups[held] == g].mean() for g in present)
    return max(grid, key=lambda c: (worst[c], -grid.index(c))), worst


@register_method
class DFR(StdM):
    """StdM's loss and training (inherited); its own prediction."""

    name = "dfr"
    display_name = "DFR"
    uses_bias_labels = True
    supports_soft_targets = False
    group_with_label = True
    default_hparams = {"source": "val", "C": 1.0, "subsets": 10, "tune_C": False}
    hparam_choices = {"source": ("balanced_val", "train", "val")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.hparams["C"] > 0:
            raise BiasbenchError(f"dfr: C must be positive, got {self.hparams['C']}")
        if self.hparams["subsets"] < 1:
            raise BiasbenchError(f"dfr: subsets must be at least 1, got {self.hparams['subsets']}")
        classifier = self.classifier()
        self.head = nn.Linear(classifier.in_features, classifier.out_features).to(self.device)
        self.head.load_state_dict(classifier.state_dict())  # the model's own until the first refit

    def classifier(self) -> nn.Linear:
        get = getattr(self.model, "get_classifier", None)
        if get is None:
            raise BiasbenchError(f"dfr: the model {type(self.model).__name__} does not name its classifier "
                                 "(get_classifier)")
        return get()

    def modules(self):
        return {"model": self.model, "head": self.head}

    def before_evaluation(self, epoch: int, held_out: HeldOut, generator: torch.Generator) -> str | None:
        source, info = self.hparams["source"], self.info
        features, labels, factors = (a.cpu() for a in held_out(source))
        ids, num_groups = group_ids(labels, factors, info.explicit, info.grouping, info.mode, with_label=True)
        f, y, g = features.double().numpy(), labels.numpy(), ids.numpy()
        C, tuned = self.hparams["C"], ""
        if self.hparams["tune_C"]:
            C, worst = tune_C(f, y, g, info.num_classes, generator)
            tuned = f"; C {C:g} tuned on half of it (worst-group accuracy {worst[C]:.1f} %)"
        weight, bias, n = fit_last_layer(f, y, g, info.num_classes, C, self.hparams["subsets"], generator)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(weight))
            self.head.bias.copy_(torch.from_numpy(bias))
        return (f"dfr: epoch {epoch}: last layer refit on {self.hparams['subsets']} balanced subsets of the {source} "
                f"split, {n} samples each ({num_groups} (bias, class) groups x {n // num_groups}){tuned}")

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        _, feats = self.model.forward_features(x, ("before_logits",))
        with torch.autocast(x.device.type, enabled=False):  # in float32: (W / s) f and W mu / s nearly cancel
            return self.head(feats["before_logits"].float())

    def evaluated_model_state(self) -> dict:
        state = self.model.state_dict()
        names = {id(p): n for n, p in self.model.named_parameters()}
        classifier = self.classifier()
        state[names[id(classifier.weight)]] = self.head.weight.detach().clone()
        state[names[id(classifier.bias)]] = self.head.bias.detach().clone()
        return state
