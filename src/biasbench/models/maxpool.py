"""The paper CNN's max-pool (3x3, stride 2, padding 1) on channels-last CUDA tensors as two Triton kernels.

Why: on an H100, PyTorch's NHWC max-pool kernels take 0.72 ms of a captured 2.46 ms training step at batch
128 (``docs/benchmarks.md``, ``anatomy``): the forward writes int64 indices (75 MB per step) and the backward
reads them and runs at about a tenth of the memory bandwidth. These kernels keep a one-byte window offset
per output instead and move about 100 MB each way.

Contract: the same numbers as ``F.max_pool2d(x, 3, 2, 1)``, bit for bit, forward and backward:

- forward: each output is the maximum of its window; its offset ``kh * 3 + kw`` is the first element in
  row-major order that is greater than every earlier one, or NaN (PyTorch's rule: ``val > max or isnan(val)``),
  starting from the window's first element inside the image;
- backward: each input element sums, in float32 and in PyTorch's order (window rows, then columns, ascending),
  the output gradients of the windows (at most 4) whose offset points at it, then rounds to its dtype.

With an ``addend`` (conv1's bias, shape (C,), or a (1, C, H, W) map such as ``fold_input_bn``'s border term),
``max_pool_3x3_s2(x, addend)`` is ``F.max_pool2d(x + addend, 3, 2, 1)`` bit for bit, without the add's kernel
over the full map: the forward adds and rounds each window element as PyTorch's add does (in float32, then
to x's dtype, nearest even), and the backward returns the addend's gradient as autograd and conv's backward
compute it (``grad.sum((0, 2, 3))`` for a bias, ``grad.sum(0, keepdim=True)`` for a map: the same reductions
of the same tensor). On an H100 the bias add and its gradient were 0.18 ms of the 2.46 ms step; this saves
the add (0.11 ms), and the reduction stays. With ``grad_sum="kernel"`` (opt-in, not bit for bit) the backward
kernel sums the addend's gradient over the batch itself (``backward_sum_kernel``: the stored, rounded input
gradient added in float32 in batch order, chunks added in a fixed order), instead of PyTorch's reduction
reading the 96x96 gradient map again: the same sum in another order, so a bf16 addend gradient may differ in
its last bit. On the H100 that reduction over the batch (``fold_input_bn``'s border map) took 0.195 ms of a
1.67 ms captured step.

With ``relu=True`` the output is ``F.relu`` of the pool's, computed in the forward kernel (NaN kept, anything not
above zero made +0.0; the CPU's ReLU keeps -0.0's sign, CUDA's, a float maximum, is expected not to, and
``benchmarks/firstblock.py`` reports it on the device), and a window whose output is not above zero gets the
offset :data:`NO_WINDOW`, which the backward kernels match to no input element: ``F.relu``'s backward (zero where
its output is not above zero) folded into the pool's, without the ReLU's two kernels over the pooled map (about
40 MB read and written each way per step at batch 128 and 96 px).

Tested against ``F.max_pool2d`` on the CPU through Triton's interpreter (``TRITON_INTERPRET=1``), float32
and bfloat16, ties and padding included. Used by ``paper_cnn`` with ``pool_kernel="triton"`` on CUDA
(channels-last inputs); any other input goes to ``F.max_pool2d``.
"""
from __future__ import annotations

import functools
import os
import threading

import torch
import torch.nn.functional as F

BLOCK = 1024
"""Elements (positions x channels, the channels rounded up to a power of two) per program of the forward and
backward kernels: 32 positions of a 32-channel map."""
SUM_BLOCK = 512
"""Elements of one image's map per program of ``backward_sum_kernel``."""
SUM_N_PER = 32
"""Images per program of ``backward_sum_kernel``: a batch of 128 at 96x96 makes 576 x 4 programs."""
GRAD_SUMS = ("torch", "kernel")
"""``grad_sum`` values: the addend's gradient reduced by PyTorch from the stored input gradient (bit for bit the
unfused path's), or summed over the batch inside the backward kernel (:func:`pool_backward_summed`)."""
NO_WINDOW = 255
"""The offset the forward kernel stores (with ``relu``; spelled 255 there) for a window whose ReLU'd output is not
above zero: it matches no input element, so the backward kernels route that window no gradient, as ``F.relu``'s
backward routes none."""
_LAUNCH_LOCK = threading.Lock()  # a first launch compiles; threads of ``sweep --streams`` must not race on it


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernels' module (:mod:`biasbench.models._maxpool_kernels`), imported on first use (through
    ``sys.modules``, so a test that drops the module gets it defined afresh)."""
    import importlib

    return importlib.import_module(f"{__package__}._maxpool_kernels")


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _geometry(shape: torch.Size) -> tuple[int, int, int, int, int]:
    """(C, H, W, OH, OW) of the pool on an (N, C, H, W) map."""
    n, c, h, w = shape
    return c, h, w, (h - 1) // 2 + 1, (w - 1) // 2 + 1


def _tile(c: int, elements: int) -> tuple[int, int]:
    """(P_BLOCK, CB) of the kernels' tiles: CB = C rounded up to a power of two, P_BLOCK positions so that a tile
    holds about ``elements`` (both powers of two, ``tl.arange``'s requirement)."""
    cb = 1 << (c - 1).bit_length()
    return max(1, elements // cb), cb


def pool_forward(x: torch.Tensor, addend: torch.Tensor | None, relu: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward kernel: ``(max_pool(x + addend), window offsets)``, both channels-last, the offsets uint8; with
    ``relu`` the output ReLU'd and the offset of a window whose output is not above zero :data:`NO_WINDOW`."""
    c, h, w, oh, ow = _geometry(x.shape)
    shape = (x.shape[0], c, oh, ow)
    out = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    off = torch.empty(shape, dtype=torch.uint8, device=x.device, memory_format=torch.channels_last)
    total_p = out.numel() // c
    p_block, cb = _tile(c, BLOCK)
    fwd = _kernels().forward_kernel
    if addend is None:
        a, strides = x, (0, 0, 0)  # a placeholder pointer, never read
    else:
        # (C,) -> (1, C, H, W) with zero strides over the map; a map keeps its own strides
        a = addend.view(1, c, 1, 1).expand(1, c, h, w) if addend.dim() == 1 else addend
        strides = a.stride()[1:]
    with _LAUNCH_LOCK:
        fwd[(triton_cdiv(total_p, p_block),)](x, a, out, off, total_p, c, h, w, oh, ow, addend is not None, *strides,
                                               P_BLOCK=p_block, CB=cb, RELU=relu)
    return out, off


def pool_backward(grad: torch.Tensor, off: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The backward kernel: the pool's input gradient (``shape``, channels-last) from the output gradient and
    the forward's window offsets."""
    c, h, w, oh, ow = _geometry(shape)
    grad = grad.contiguous(memory_format=torch.channels_last)
    gin = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
    total_p = gin.numel() // c
    p_block, cb = _tile(c, BLOCK)
    bwd = _kernels().backward_kernel
    with _LAUNCH_LOCK:
        bwd[(triton_cdiv(total_p, p_block),)](grad, off, gin, total_p, c, h, w, oh, ow, P_BLOCK=p_block, CB=cb)
    return gin


def pool_backward_summed(grad: torch.Tensor, off: torch.Tensor, shape: torch.Size
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pool_backward`'s input gradient (the same values) and its sum over the batch, (1, C, H, W) float32
    channels-last, from one kernel (``backward_sum_kernel``)."""
    c, h, w, oh, ow = _geometry(shape)
    n = shape[0]
    grad = grad.contiguous(memory_format=torch.channels_last)
    gin = torch.empty(shape, dtype=grad.dtype, device=grad.device, memory_format=torch.channels_last)
    chunks = triton_cdiv(n, SUM_N_PER)
    sums = torch.empty((chunks, h, w, c), dtype=torch.float32, device=grad.device)
    p_block, cb = _tile(c, SUM_BLOCK)
    bwd = _kernels().backward_sum_kernel
    with _LAUNCH_LOCK:
        bwd[(triton_cdiv(h * w, p_block), chunks)](grad, off, gin, sums, n, c, h, w, oh, ow, P_BLOCK=p_block, CB=cb,
                                                    N_PER=SUM_N_PER)
    return gin, sums.sum(0, keepdim=True).permute(0, 3, 1, 2)


def addend_grad_of_sum(total: torch.Tensor, addend_dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The addend's gradient from the pooled map's input gradient summed over the batch, (1, C, H, W) float32:
    a bias's is its sum over the map, a map's is itself (channels-last), both rounded once to ``dtype``."""
    ga = total.sum((0, 2, 3)) if addend_dim == 1 else total.contiguous(memory_format=torch.channels_last)
    return ga.to(dtype)


def addend_grad(gin: torch.Tensor, addend_dim: int) -> torch.Tensor:
    """The addend's gradient as PyTorch computes it from the pooled map's input gradient: conv's backward
    reduces its output gradient to the bias's with ``sum((0, 2, 3))``, autograd's broadcasting add to a
    (1, C, H, W) operand with ``sum_to_size``, a keepdim sum over the batch."""
    return gin.sum((0, 2, 3)) if addend_dim == 1 else gin.sum(0, keepdim=True)


class _TritonMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, addend: torch.Tensor | None, grad_sum: str = "torch",
                relu: bool = False) -> torch.Tensor:
        out, off = pool_forward(x, addend, relu)
        ctx.save_for_backward(off)
        ctx.shape = x.shape
        ctx.addend_dim = None if addend is None else addend.dim()
        ctx.addend_dtype = None if addend is None else addend.dtype
        ctx.grad_sum = grad_sum
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None, None]:
        (off,) = ctx.saved_tensors
        gin, ga = backward_with_addend(ctx, grad, off, ctx.needs_input_grad[1])
        return gin, ga, None, None


def backward_with_addend(ctx, grad: torch.Tensor, off: torch.Tensor, need_addend: bool
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the pooled map's input gradient, the addend's gradient or None) for an autograd function whose ``ctx``
    holds ``shape``, ``addend_dim``, ``addend_dtype`` and ``grad_sum`` (:data:`GRAD_SUMS`)."""
    if ctx.addend_dim is None or not need_addend:
        return pool_backward(grad, off, ctx.shape), None
    if ctx.grad_sum == "kernel":
        gin, total = pool_backward_summed(grad, off, ctx.shape)
        return gin, addend_grad_of_sum(total, ctx.addend_dim, ctx.addend_dtype)
    gin = pool_backward(grad, off, ctx.shape)
    return gin, addend_grad(gin, ctx.addend_dim)


def addend_ok(x: torch.Tensor, addend: torch.Tensor, channels: int | None = None) -> bool:
    """Whether the forward kernel adds ``addend`` to ``x`` itself: x's dtype and device, shape (C,) contiguous
    or (1, C, H, W) with unit channel stride (C: ``channels``, else x's)."""
    c, h, w = x.shape[1:]
    c = c if channels is None else channels
    return (addend.dtype == x.dtype and addend.device == x.device
            and (tuple(addend.shape) == (c,) and addend.is_contiguous()
                 or tuple(addend.shape) == (1, c, h, w) and addend.stride()[1] == 1))


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether Triton can be imported (PyTorch's Linux CUDA wheels bring it; others may not)."""
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def interpreted() -> bool:
    """Whether Triton runs its kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def usable(x: torch.Tensor) -> bool:
    """Whether the Triton kernels take ``x``: a 4-d channels-last tensor (not also NCHW-contiguous, which a
    one-channel or 1x1 map is) of a floating dtype, under 2**31 elements, on CUDA, or on the CPU under Triton's
    interpreter."""
    on_device = x.is_cuda or interpreted()
    return (on_device and x.dim() == 4 and x.is_floating_point() and x.numel() < 2 ** 31
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())


def max_pool_3x3_s2(x: torch.Tensor, addend: torch.Tensor | None = None, grad_sum: str = "torch",
                    relu: bool = False) -> torch.Tensor:
    """``F.max_pool2d(x if addend is None else x + addend, 3, 2, 1)``, through the Triton kernels where
    :func:`usable`, bit for bit the same. ``addend``: shape (C,) (a bias, broadcast over the map) or
    (1, C, H, W) with unit channel stride (channels-last), of x's dtype; any other is added by PyTorch first.
    ``grad_sum``: how the addend's gradient is summed over the batch (:data:`GRAD_SUMS`; ``"kernel"`` is not bit
    for bit). ``relu``: ``F.relu`` of that, inside the forward kernel and the backward's routing (the same
    numbers as ``F.relu``, up to the sign of a zero; on the CPU without the interpreter F.relu itself runs)."""
    if grad_sum not in GRAD_SUMS:
        raise ValueError(f"grad_sum must be one of {', '.join(GRAD_SUMS)}, not {grad_sum!r}")
    if not usable(x):
        out = F.max_pool2d(x if addend is None else x + _as_map(addend), 3, 2, 1)
        return F.relu(out) if relu else out
    if addend is not None and not addend_ok(x, addend):
        x, addend = x + _as_map(addend), None
    return _TritonMaxPool.apply(x, addend, grad_sum, relu)


def _as_map(addend: torch.Tensor) -> torch.Tensor:
    return addend.view(1, -1, 1, 1) if addend.dim() == 1 else addend
