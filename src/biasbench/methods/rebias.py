"""ReBias: learning de-biased representations with biased representations (Bahng et al., ICML 2020;
clovaai/rebias). Not in the paper; uses no bias labels: the bias is named by an architecture instead.

Two networks: the run's model f and a biased network g whose design can only see the bias, ReBias's
``SimpleConvNet`` with ``g_kernel_size`` = 1 (1x1 convolutions: colour without shape; ``simple_cnn``), each with its
own optimizer. Per batch, as the reference's ``_update_g`` then ``_update_f``:

    g step:  CE(g(x), y) - ``g_lambda`` * HSIC(g_feat, f_feat)   (g learns the label while tracking f's features)
    f step:  CE(f(x), y) + ``f_lambda`` * HSIC(f_feat, g_feat)   (f learns the label independently of g)

so f is pushed away from every feature a colour-only network can express. The features are each network's
``before_logits`` (f's pooled features; g's 128-d global average pool, the reference's ``feature_pos='post'``); the
other network's features enter each step detached (only the stepping network's optimizer moves, as in the
reference), and in each step the other network runs in training mode as well (its batch-norm statistics move, as
the reference's do). HSIC is the unbiased estimator of Song et al. (2012) with Gaussian kernels
k(a, b) = exp(-|a - b|^2 / (2 sigma^2)), ``sigma`` = 1 for both (the reference's Biased MNIST setting):

    HSIC_1 = [tr(K~ L~) + 1'K~1 1'L~1 / ((m - 1)(m - 2)) - 2/(m - 2) 1'K~L~1] / (m (m - 3)),

K~, L~ the kernel matrices with zero diagonal. (The reference subtracts ``torch.diag(K)``, a vector, which also
shifts every off-diagonal entry by -1; the estimator is invariant to that shift, so both give the same numbers:
``test_rebias_hsic_is_the_unbiased_estimator``.) The statistic is computed in float32 at least. Evaluation uses f.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import BiasbenchError
from ..models import create_model
from .base import Batch, LossResult, Method, Nets
from .registry import register_method


def rbf_kernel(f: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, B) Gaussian kernel exp(-|f_i - f_j|^2 / (2 sigma^2)) of the rows of ``f`` (B, D); ``sigma`` 0: the
    median heuristic, sigma^2 = the median of the batch's squared distances (detached), so the kernel follows
    the features' scale."""
    sq = (f * f).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * f @ f.t()).clamp_min(0)
    if sigma == 0:
        return torch.exp(-d2 / (2 * d2.detach().median().clamp_min(1e-12)))
    return torch.exp(-d2 / (2 * sigma ** 2))


def unbiased_hsic(a: torch.Tensor, b: torch.Tensor, sigma: float) -> torch.Tensor:
    """HSIC_1 of the rows of ``a`` and ``b`` (module docstring), in float32 at least; 0 for fewer than 4 rows,
    where the estimator is not defined (an epoch's last batch can be that short)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    m = a.shape[0]
    if m < 4:  # a static shape: no host sync
        return (a.sum() * 0 + b.sum() * 0).to(dtype)
    k, l_ = rbf_kernel(a.to(dtype), sigma), rbf_kernel(b.to(dtype), sigma)
    off = 1 - torch.eye(m, dtype=dtype, device=k.device)
    k, l_ = k * off, l_ * off
    ks, ls = k.sum(0), l_.sum(0)
    return ((k * l_).sum() + ks.sum() * ls.sum() / ((m - 1) * (m - 2)) - 2 * (ks @ ls) / (m - 2)) / (m * (m - 3))


@register_method
class ReBias(Method):
    name = "rebias"
    display_name = "ReBias"
    uses_bias_labels = False
    step_cost = 4.0  # an estimate, not measured: each of the two phases runs both networks, and g's 1x1 convolutions
    # at full resolution are 1.7x the paper CNN's multiply-adds at 96 px
    default_hparams = {"f_lambda": 1.0, "g_lambda": 1.0, "sigma": 1.0, "g_kernel_size": 1}
    phases = (("g_loss", ("biased_optimizer",)), ("f_loss", ("optimizer",)))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h = self.hparams
        if h["f_lambda"] < 0 or h["g_lambda"] < 0:
            raise BiasbenchError(f"rebias: f_lambda and g_lambda must be at least 0, got {h['f_lambda']} and "
                                 f"{h['g_lambda']}")
        if h["sigma"] < 0:
            raise BiasbenchError(f"rebias: sigma must be positive (or 0: the median heuristic), got {h['sigma']}")
        if self.info.batch_size < 4:
            raise BiasbenchError(f"rebias: the unbiased HSIC needs batches of at least 4, got {self.info.batch_size}")
        dtype = next(self.model.parameters()).dtype
        self.biased = create_model("simple_cnn", num_classes=self.info.num_classes,
                                   kernel_size=h["g_kernel_size"]).to(self.device, dtype)
        conv = next((p for p in self.model.parameters() if p.dim() == 4), None)
        if conv is not None and not conv.is_contiguous() and conv.is_contiguous(memory_format=torch.channels_last):
            self.biased = self.biased.to(memory_format=torch.channels_last)  # the layout the trainer gave f
        self.biased_optimizer = self.make_optimizer(self.biased.parameters())

    def modules(self):
        return {"model": self.model, "biased": self.biased}

    def optimizers(self):
        return {"optimizer": self.optimizer, "biased_optimizer": self.biased_optimizer}

    @staticmethod
    def _features(net, x):
        logits, feats = net.forward_features(x, ("before_logits",))
        return logits.float(), feats["before_logits"]

    def g_loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits, g_feat = self._features(nets["biased"], batch.x)
        f_feat = self._features(nets["model"], batch.x)[1].detach()
        ce = F.cross_entropy(logits, batch.y)
        hsic = unbiased_hsic(g_feat, f_feat, self.hparams["sigma"])
        loss = ce - self.hparams["g_lambda"] * hsic
        return loss, {}, {"biased_ce": ce.detach(), "biased_hsic": hsic.detach()}

    def f_loss(self, nets: Nets, t, batch: Batch) -> LossResult:
        logits, f_feat = self._features(nets["model"], batch.x)
        g_feat = self._features(nets["biased"], batch.x)[1].detach()
        ce = F.cross_entropy(logits, batch.y)
        hsic = unbiased_hsic(f_feat, g_feat, self.hparams["sigma"])
        loss = ce + self.hparams["f_lambda"] * hsic
        return loss, {}, {"loss": ce.detach(), "hsic": hsic.detach(), "f_loss": loss.detach()}
