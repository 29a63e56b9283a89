"""JTT: Just Train Twice (Liu et al., ICML 2021). Not in the paper; uses no bias labels.

Stage 1 trains the model with plain ERM for T = ``stage1_epochs`` epochs. At the start of epoch T + 1 that
model becomes the *identifier*: its mistakes on the training split (evaluation mode, as the trainer evaluates)
form the error set E. The model then starts again from its initial weights with a new optimizer, and trains
with plain ERM on the training split with E upsampled ``upweight`` = lambda_up times, until the last epoch.
Evaluation before the switch sees the stage-1 model, after it the second one.

``sampler`` (how stage 2 draws an epoch):

- ``upsample`` (default, JTT's): the split plus lambda_up - 1 further copies of E, shuffled, so an epoch has
  N + (lambda_up - 1) |E| samples: with |E| = 11 % of N and lambda_up = 20, 3.1 times the images of an
  ERM epoch, and more the larger E is;
- ``draw``: N samples with replacement, sample i with probability proportional to lambda_up for i in E and 1
  otherwise: the upsampled set's distribution with every other method's epoch length, for comparisons at
  equal training images.

Both stages run in one training run, so that its records, checkpoints and resume are those of any run: the
initial weights are kept in the identifier network until the switch, and the error set is checkpointed. The
defaults (T = 1, lambda_up = 20) are from JTT's grids (T: 1-2 epochs for CelebA and the NLP sets;
lambda_up in {20, 50, 100}); tune them with ``--hparam``.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ..errors import BiasbenchError
from .registry import register_method
from .stdm import StdM


@register_method
class JTT(StdM):
    """StdM's loss (inherited) in both stages; its own samplers and stage switch."""

    name = "jtt"
    display_name = "JTT"
    uses_bias_labels = False
    supports_soft_targets = False
    default_hparams = {"stage1_epochs": 1, "upweight": 20, "sampler": "upsample"}
    hparam_choices = {"sampler": ("draw", "upsample")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        t, up, epochs = self.hparams["stage1_epochs"], self.hparams["upweight"], self.info.epochs
        if t < 1 or (epochs and t >= epochs):
            raise BiasbenchError(f"jtt: stage1_epochs must be at least 1 and less than the run's {epochs} epochs, "
                                 f"got {t}")
        if up < 1:
            raise BiasbenchError(f"jtt: upweight must be at least 1, got {up}")
        self.identifier = copy.deepcopy(self.model)  # the initial weights until the switch, then stage 1's model
        self.switched = False
        self.errors = torch.zeros(self.info.num_train, dtype=torch.bool)  # E, on the CPU (the samplers' side)

    def modules(self):
        return {"model": self.model, "identifier": self.identifier}

    def begin_epoch(self, epoch: int, predict_train: Callable[[str], torch.Tensor]) -> str | None:
        if self.switched or epoch <= self.hparams["stage1_epochs"]:
            return None
        with torch.no_grad():
            for a, b in zip(self.model.state_dict().values(), self.identifier.state_dict().values()):
                tmp = a.clone()
                a.copy_(b)  # the model starts again from the initial weights
                b.copy_(tmp)  # the identifier is stage 1's model
        logits = predict_train("identifier")
        self.errors = (logits.argmax(1) != self.info.labels.to(logits.device)).cpu()
        self.optimizer = self.make_optimizer(self.model.parameters())
        self.switched = True
        n, e = len(self.errors), int(self.errors.sum())
        up, sampler = self.hparams["upweight"], self.hparams["sampler"]
        return (f"jtt: stage 2 from epoch {epoch}: the stage-1 model misclassifies {e} of {n} training samples "
                f"({100 * e / n:.1f} %), each drawn {up}x as often ({sampler}); the model starts again from its "
                f"initial weights with a new optimizer")

    def epoch_indices(self, epoch: int, generator: torch.Generator) -> torch.Tensor | None:
        if not self.switched:
            return None
        up = self.hparams["upweight"]
        if self.hparams["sampler"] == "draw":
            w = 1.0 + (up - 1.0) * self.errors.float()
            return torch.multinomial(w, len(w), replacement=True, generator=generator)
        e = self.errors.nonzero().squeeze(1)
        pool = torch.cat([torch.arange(len(self.errors)), e.repeat(up - 1)])
        return pool[torch.randperm(len(pool), generator=generator)]

    def extra_state(self):
        return {"switched": torch.tensor(self.switched), "errors": self.errors}

    def load_extra_state(self, state):
        if "switched" in state:
            self.switched = bool(state["switched"])
            self.errors = state["errors"].cpu()
