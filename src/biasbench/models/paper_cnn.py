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
quarter of the bytes of the step's largest elementwise kernels. With the Triton pool the ReLU runs inside the
pool's forward kernel and its backward is the pool's routing (no gradient through a window whose output is not
above zero), so it has no kernels of its own (:func:`biasbench.models.maxpool.max_pool_3x3_s2`, ``relu``).

``fold_input_bn=True`` (off by default; ``--model-kwarg fold_input_bn=true``) trains the input batch norm
folded into conv1. In training mode the batch norm is a per-channel affine map of the raw input,
``BN(x) = a * x + c`` with ``a = gamma / sqrt(var_B + eps)`` and ``c = beta - a * mean_B`` (batch statistics of
the input, which carries no gradient), so

    conv1(pad(BN(x))) = conv(pad(x), W * a) + conv(pad(c * 1), W) + b

where the second term, the constant ``c`` seen through conv1's zero padding, is one (1, 32, H, W) map from a
batch-of-one convolution of a ones image. Equal in real arithmetic, forward and gradients (tested in float64),
not bit for bit. What it saves: the normalised input and, in the backward, the gradient with respect to the
batch norm's output, which exists only to train gamma and beta (on an H100 conv1's input-gradient kernel is
about 0.3 ms of a 2.46 ms step). Running statistics are updated as ``nn.BatchNorm2d`` updates them;
evaluation uses the ordinary path. ``fold_input_bn="normalized"`` folds it with the normalised input instead,

    conv1(pad(BN(x))) = conv(pad(x_hat), W * gamma) + conv(pad(beta * 1), W) + b,  x_hat = (x - mean_B) * rstd_B

with ``x_hat`` written by one elementwise kernel in the dtype conv1 runs in. With the raw 0-255 input
(``True``) the first term is large and the border term cancels part of it (``c`` is about ``-a * mean_B``), so
bf16's rounding of each is a larger part of their sum; with ``x_hat`` nothing large cancels. On 48-px Biased
MNIST after 1,500 float32 steps, a bf16 step's errors against float64 are 1.0-3.5x the unfolded network's with the
raw fold and 0.85-1.5x with the normalised one (``benchmarks/fold_precision.py``, ``docs/benchmarks.md``).

``conv1_pad_to=4`` (or 8; off by default) appends zero channels to conv1's input and weight before the
convolution: the same sums in real arithmetic (every added product is an exact zero), so it changes only the
kernels cuDNN may pick. Tensor-core convolution kernels are built for channel counts that are multiples of 4
or 8 (compilers such as TVM pad to them for this reason); at 3 channels conv1 ran cuDNN's generic NHWC engine
(0.32 ms forward, 0.53 ms backward of a 2.46 ms step on an H100). Whether padding buys a faster kernel is
what ``benchmarks/train.py --options pad4,pad8`` measures. Not bit for bit (another kernel adds in another
order), so not the default. Parameters and checkpoints are unchanged.

``pool_kernel="triton"`` runs the max-pool through :mod:`biasbench.models.maxpool` on CUDA: the same numbers
bit for bit, without the int64 indices of PyTorch's NHWC kernels (0.72 ms of the 2.46 ms step on an H100),
conv1's bias added inside its forward kernel. The default, ``pool_kernel="auto"``, takes it where it was
verified bit for bit on a device (CUDA, bf16 autocast, channels-last: what ``train`` and ``sweep`` run on
CUDA by default; an H100 in the sixth GPU session, 1.39x the captured loop) and PyTorch's pool elsewhere
(:func:`auto_pool_kernel`); ``pool_kernel="torch"`` always takes PyTorch's. ``pool_kernel="triton_conv"`` runs conv1 and
the pool as one function (:mod:`biasbench.models.conv_pool`): with ``fold_input_bn`` its backward computes
conv1's weight gradient inside the pool's backward kernel, without the 96x96 gradient map (not bit for bit);
without the fold it is ``triton``'s arithmetic. ``conv1_kernel="triton"`` (with either Triton pool) also
computes conv1's forward by a Triton implicit GEMM instead of cuDNN's generic engine for 3 input channels (with
``triton`` the backward stays the unfused one: the pool's kernel, then cuDNN's convolution backward).
``pool_grad_sum="kernel"`` (with either Triton pool) sums the gradient of conv1's bias or of the fold's border
map over the batch inside the pool's backward kernel instead of by PyTorch's reduction over the 96x96 gradient
map (0.195 ms of a 1.67 ms captured step on an H100 with the fold; the same sum in another order, so not bit for
bit). ``conv1_wgrad="triton"`` (with ``pool_kernel="triton"``) computes conv1's weight gradient and that sum in one
Triton kernel that reads the pool's input gradient once, instead of cuDNN's weight-gradient kernel (0.18 ms) and
the reduction (:func:`biasbench.models.conv_pool.conv_weight_from_grad`; not bit for bit; not timed on a GPU
yet). On an H100 (``docs/benchmarks.md``) the captured loop ran 50.7k images/s by default, 76.8k with
``fold_input_bn`` and ``triton``, 86.5k with ``fold_input_bn``, ``triton_conv`` and ``conv1_kernel="triton"``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import BiasbenchError
from . import maxpool
from .maxpool import max_pool_3x3_s2, usable  # the Triton kernels themselves are imported on first use
from .registry import pick_features, register_model


FOLD_INPUT_BN = (False, True, "normalized")
"""``fold_input_bn`` values: the batch norm as a module; folded into conv1 with the raw input (``True``, the form
the sixth GPU session timed and trained seed 1 with); folded with the normalised input (``"normalized"``: no
large terms that cancel, so bf16 rounds nearer to the unfolded network). Module docstring."""

POOL_KERNELS = ("auto", "torch", "triton", "triton_conv")
"""``pool_kernel`` values: ``triton`` where it is verified, else ``torch`` (:func:`auto_pool_kernel`; the
default); PyTorch's max-pool; :mod:`biasbench.models.maxpool`'s Triton kernels (CUDA,
channels-last; bit for bit the same numbers, one-byte offsets instead of int64 indices); or those with conv1 in
one function whose backward computes conv1's weight gradient in the pool's kernel when conv1's input needs no
gradient (:mod:`biasbench.models.conv_pool`; with ``fold_input_bn``; not bit for bit)."""


CONV1_KERNELS = ("torch", "triton")
"""``conv1_kernel`` values (with a Triton ``pool_kernel``): conv1's forward by cuDNN, or by
:func:`biasbench.models.conv_pool.conv_forward` (an implicit GEMM in Triton; not bit for bit)."""

CONV1_WGRADS = ("torch", "triton")
"""``conv1_wgrad`` values (with ``pool_kernel="triton"``): conv1's weight gradient (and its bias's or the fold's
border map's, G summed over the batch) by cuDNN and PyTorch's reduction, or by
:func:`biasbench.models.conv_pool.conv_weight_from_grad` (one Triton kernel reading the pool's input gradient
once; not bit for bit)."""

POOL_GRAD_SUMS = ("torch", "kernel")
"""``pool_grad_sum`` values (with a Triton ``pool_kernel``): the gradient of the addend the pool adds (conv1's
bias, or the fold's border map) reduced over the batch by PyTorch from the stored 96x96 gradient map (bit for
bit), or inside the pool's backward kernel (:func:`biasbench.models.maxpool.pool_backward_summed`)."""


def _triton_pool_choice(name: str, value: str, allowed: tuple[str, ...], pool_kernel: str,
                        pools: tuple[str, ...] = ("triton", "triton_conv")) -> str:
    """``value`` if it is one of ``allowed`` and, unless it is the first (PyTorch's way), ``pool_kernel`` is one
    of the Triton pools in ``pools``."""
    if value not in allowed:
        raise BiasbenchError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    if value != allowed[0] and pool_kernel not in pools:
        raise BiasbenchError(f"{name}={value} runs with a Triton pool; set pool_kernel={' or '.join(pools)} too"
                             if pool_kernel in ("auto", "torch") else
                             f"{name}={value} runs with pool_kernel={' or '.join(pools)}, not {pool_kernel}")
    return value


def auto_pool_kernel(x: torch.Tensor, weight: torch.Tensor, cuda: bool | None = None) -> str:
    """``pool_kernel="auto"`` for the network input ``x`` and conv1's ``weight``: ``"triton"`` where the Triton
    pool was verified bit for bit on a device, that is on CUDA (``cuda``: ``x.is_cuda`` unless given) with Triton
    importable, in bf16 (bf16 autocast or a bf16 input) on a channels-last input; ``"torch"`` otherwise: on the
    CPU, in fp32 (the paper's precision, kept on PyTorch's kernels), under ``torch.compile`` (Inductor makes
    its own pool) and inside ``torch.func`` transforms (``--fuse``'s vmap: the kernels' autograd function has
    no vmap rule)."""
    cuda = x.is_cuda if cuda is None else cuda
    if not cuda or not maxpool.triton_available() or torch.compiler.is_compiling():
        return "torch"
    if torch._C._functorch.is_functorch_wrapped_tensor(x) or torch._C._functorch.is_functorch_wrapped_tensor(weight):
        return "torch"
    autocast_bf16 = torch.is_autocast_enabled(x.device.type) and \
        torch.get_autocast_dtype(x.device.type) == torch.bfloat16
    return "triton" if (x.dtype == torch.bfloat16 or autocast_bf16) and usable(x) else "torch"


class PaperCNN(nn.Module):
    feature_dims = {"pooled2": 32, "pooled4": 64, "before_logits": 64}

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 32, drop_rate: float = 0.0,
                 fold_input_bn: bool | str = False, pool_kernel: str = "auto", conv1_pad_to: int = 0,
                 conv1_kernel: str = "torch", pool_grad_sum: str = "torch", conv1_wgrad: str = "torch"):
        super().__init__()
        self.drop_rate = float(drop_rate)  # not in the paper (0): dropout before the classifier, for progressive runs
        if fold_input_bn not in FOLD_INPUT_BN or not isinstance(fold_input_bn, (bool, str)):
            raise BiasbenchError(f"fold_input_bn must be false, true or normalized, not {fold_input_bn!r}")
        self.fold_input_bn = fold_input_bn
        if pool_kernel not in POOL_KERNELS:
            raise BiasbenchError(f"pool_kernel must be one of {', '.join(POOL_KERNELS)}, not {pool_kernel!r}")
        self.pool_kernel = pool_kernel
        if isinstance(conv1_pad_to, bool) or not isinstance(conv1_pad_to, int) or (
                conv1_pad_to and not in_chans <= conv1_pad_to <= 64):
            raise BiasbenchError(f"conv1_pad_to must be 0 (off) or a channel count from {in_chans} to 64, "
                                 f"not {conv1_pad_to!r}")
        self.conv1_pad_to = conv1_pad_to
        self.conv1_kernel = _triton_pool_choice("conv1_kernel", conv1_kernel, CONV1_KERNELS, pool_kernel)
        self.pool_grad_sum = _triton_pool_choice("pool_grad_sum", pool_grad_sum, POOL_GRAD_SUMS, pool_kernel)
        # not with triton_conv, whose fused backward computes conv1's weight gradient itself
        self.conv1_wgrad = _triton_pool_choice("conv1_wgrad", conv1_wgrad, CONV1_WGRADS, pool_kernel, ("triton",))
        if conv1_wgrad == "triton" and pool_grad_sum == "kernel":
            raise BiasbenchError("conv1_wgrad=triton sums the pool's input gradient over the batch itself; "
                                 "leave pool_grad_sum at torch")
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
        x = self._first_block(x)
        hidden = F.relu(self.conv2(x))
        x = F.relu(self.conv3(hidden))
        x = F.relu(self.conv4(x))
        pooled4 = x.mean(dim=(2, 3))
        logits = self.fc(F.dropout(pooled4, self.drop_rate, self.training) if self.drop_rate else pooled4)
        pooled2 = hidden.mean(dim=(2, 3))
        feats = pick_features({"pooled2": pooled2, "pooled4": pooled4, "before_logits": pooled4, "hidden": hidden},
                              names, "paper_cnn")
        return logits, feats

    def get_classifier(self) -> nn.Linear:
        """The last layer: logits = classifier(before_logits features) (timm's name for it)."""
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._first_block(x)
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x)).mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, self.drop_rate, self.training)
        return self.fc(x)

    def _first_block(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(pool1(conv1(input_bn(x))))`` = the reference's ``pool1(relu(conv1(bn(x))))`` (module docstring).
        With the Triton pool on a tensor it takes, conv1's bias (or ``fold_input_bn``'s border term) is added
        inside the pool's forward kernel instead of by a kernel of its own over the 96x96 map, and the ReLU is
        applied there too (its backward folded into the pool's routing): the same numbers.
        ``triton_conv``, ``conv1_kernel="triton"`` or ``conv1_wgrad="triton"`` also runs conv1 and the pool as one
        function (:mod:`biasbench.models.conv_pool`; its fused backward only with ``triton_conv``)."""
        kernel = self.pool_kernel_for(x)
        if kernel == "torch" or not usable(x):
            return F.relu(self._pool(self._conv1_of_input(x), kernel))
        if kernel == "triton" and self.conv1_kernel == "torch" and self.conv1_wgrad == "torch":
            return max_pool_3x3_s2(*self._conv1_parts(x, split_bias=True), grad_sum=self.pool_grad_sum, relu=True)
        from .conv_pool import conv_max_pool

        inp, weight, addend, _ = self._conv1_operands(x)
        dt = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else inp.dtype  # the casts autocast would make for F.conv2d
        return conv_max_pool(inp.to(dt), weight.to(dt), addend.to(dt), self.conv1_kernel,
                             fused=kernel == "triton_conv", grad_sum=self.pool_grad_sum, wgrad=self.conv1_wgrad,
                             relu=True)

    def pool_kernel_for(self, x: torch.Tensor) -> str:
        """The pool kernel a forward on the input ``x`` takes: ``pool_kernel``, "auto" resolved by
        :func:`auto_pool_kernel`."""
        return auto_pool_kernel(x, self.conv1.weight) if self.pool_kernel == "auto" else self.pool_kernel

    def _pool(self, x: torch.Tensor, kernel: str) -> torch.Tensor:
        """``pool1(x)``; with the Triton pool kernels through :mod:`biasbench.models.maxpool` (the same numbers)."""
        if kernel != "torch":
            return max_pool_3x3_s2(x)
        return self.pool1(x)

    def _conv1_of_input(self, x: torch.Tensor) -> torch.Tensor:
        """``conv1(input_bn(x))``, with the batch norm folded into conv1 when ``fold_input_bn`` applies."""
        out, addend = self._conv1_parts(x)
        return out if addend is None else out + addend

    def _folding(self, x: torch.Tensor) -> bool:
        bn = self.input_bn
        return self.fold_input_bn and self.training and bn.momentum is not None and not x.requires_grad

    def _conv1_parts(self, x: torch.Tensor, split_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``conv1(input_bn(x))`` as ``(out, addend)`` with ``out + addend`` the map (``addend`` None: ``out`` is it).
        ``split_bias``: the bias is left out of the convolution and returned as the addend, in out's dtype.
        With ``fold_input_bn`` in training the addend is the folded border term, bias included."""
        conv = self.conv1
        if not (self._folding(x) or split_bias or self.conv1_pad_to):
            return conv(self.input_bn(x)), None
        inp, weight, addend, folded = self._conv1_operands(x)
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        if folded or split_bias:
            out = F.conv2d(inp, weight, None, *args)
            return out, addend if folded else addend.to(out.dtype)
        return F.conv2d(inp, weight, addend, *args), None

    def _conv1_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """``(input, weight, addend, folded)`` with ``conv1(input_bn(x)) = conv(input, weight) + addend`` (conv1's
        stride, padding and zero channels of ``conv1_pad_to``): the batch norm's output, conv1's weight and bias;
        or, when ``fold_input_bn`` applies (``folded``), x itself, the weight scaled by the batch norm, and the
        border term, bias included (module docstring). Folding updates the running statistics: call once."""
        bn = self.input_bn
        conv = self.conv1
        if not self._folding(x):
            return *self._padded(bn(x), conv.weight), conv.bias, False
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        with torch.no_grad():  # batch statistics and the running-statistics update, as nn.BatchNorm2d makes them
            var, mean = torch.var_mean(x.to(torch.promote_types(x.dtype, torch.float32)), dim=(0, 2, 3), unbiased=False)
            n = x.numel() // x.shape[1]
            bn.running_mean.mul_(1 - bn.momentum).add_(mean, alpha=bn.momentum)
            bn.running_var.mul_(1 - bn.momentum).add_(var, alpha=bn.momentum * n / max(n - 1, 1))
            bn.num_batches_tracked.add_(1)
        w = conv.weight
        rstd = torch.rsqrt(var + bn.eps)
        if self.fold_input_bn == "normalized":
            scale, shift = bn.weight, bn.bias  # conv(pad(x_hat), W * gamma) + conv(pad(beta * 1), W) + b
            x = _normalized(x, mean, rstd)
        else:
            scale = bn.weight * rstd  # a
            shift = bn.bias - scale * mean  # c
        ones = torch.ones_like(x[:1])  # in x's layout, so the broadcast add below reads both alike
        border = F.conv2d(ones * shift.view(1, -1, 1, 1), w, conv.bias, *args)  # (1, C, H, W): c through the padding
        return *self._padded(x, w * scale.view(1, -1, 1, 1)), border, True

    def _padded(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, weight)`` with ``conv1_pad_to - C`` zero channels appended to both (layouts kept): the same
        convolution in real arithmetic, which cuDNN may run with other kernels."""
        k = self.conv1_pad_to - x.shape[1] if self.conv1_pad_to else 0
        if k <= 0:
            return x, weight
        return F.pad(x, (0, 0, 0, 0, 0, k)), F.pad(weight, (0, 0, 0, 0, 0, k))

    def set_dropout(self, p: float) -> None:
        self.drop_rate = float(p)


def _normalized(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """``(x - mean) * rstd`` per channel, without a gradient, as one kernel ``x * rstd - mean * rstd`` written in
    the dtype autocast would give conv1 (x's layout kept): the input ``fold_input_bn="normalized"`` convolves."""
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    shape = (1, -1) + (1,) * (x.dim() - 2)
    with torch.no_grad():
        out = torch.empty_like(x, dtype=dtype)
        return torch.addcmul((-mean * rstd).view(shape), x, rstd.view(shape), out=out)


@register_model("paper_cnn")
def paper_cnn(num_classes: int = 10, **kwargs) -> PaperCNN:
    return PaperCNN(num_classes=num_classes, **kwargs)
