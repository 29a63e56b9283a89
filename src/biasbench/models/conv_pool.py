"""The paper CNN's conv1 and max-pool as one autograd function whose backward never writes the 96x96 gradient map.

``conv_max_pool(x, weight, addend)`` = ``max_pool_3x3_s2(conv2d(x, weight, padding=K // 2), addend)``: the forward is
cuDNN's convolution (without bias) and :mod:`biasbench.models.maxpool`'s Triton forward kernel (the addend, conv1's
bias or ``fold_input_bn``'s border map, added inside it). The backward depends on what needs a gradient:

- when ``x`` needs one (the input batch norm not folded), or ``fused=False``, it is the unfused path's, bit for
  bit (with ``grad_sum="kernel"`` the addend's gradient is summed in the pool's backward kernel): the pool's
  backward kernel writes the input gradient G of the pooled map, ``aten.convolution_backward`` (what autograd calls
  for ``F.conv2d``) gives x's and the weight's gradients from it, and the addend's is G's reduction;
- when it does not (``fold_input_bn``: the input is data), one Triton kernel (``conv_weight_kernel``) forms G
  tile by tile in registers from the pooled gradient and the one-byte window offsets and multiplies it with the
  im2col tile of x on the tensor cores: the weight gradient and the addend's per-position sums come out as
  partial sums per program, added in a fixed order. What it saves on an H100 (``docs/benchmarks.md``): G's
  75 MB written and read twice (the weight gradient and the bias sum), the pool's backward kernel, and cuDNN's
  weight-gradient kernel for 3 input channels (about 0.24 ms). Not bit for bit: the weight gradient sums in
  another order than cuDNN's (G itself is rounded exactly as the unfused path stores it);
- with ``wgrad="triton"`` (``paper_cnn``'s ``conv1_wgrad="triton"``): the pool's backward kernel writes G as in the
  unfused path, then the same Triton kernel (``conv_weight_kernel`` with ``FORM_G=False``) reads it once for both
  the weight gradient (the transposed im2col tile of x times the G tile on the tensor cores, the positions as
  the dots' reduction dimension) and G's sum over the batch (the addend's gradient), instead of cuDNN's
  weight-gradient kernel for 3 input channels and PyTorch's reduction each reading G (0.18 and 0.195 ms of a
  1.67 ms captured step on an H100 with the fold). x's gradient, where it needs one, stays cuDNN's. Not bit for
  bit (another summation order).

Contract: stride-1 square convolution with ``padding = K // 2`` (output the input's size), channels-last CUDA
tensors (or the CPU under ``TRITON_INTERPRET=1``), x and weight of one floating dtype (callers cast for autocast),
C output channels a power of two. Used by ``paper_cnn`` with ``pool_kernel="triton_conv"``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import maxpool

BLOCK_M = 32
"""Conv output positions per program of the fused backward. On the H100 (``benchmarks/firstblock.py``, the block
with the fold) 32 took 2.22 ms per batch against 2.55 ms with 64."""
N_PER = 32
"""Images per program of the fused backward: a batch of 128 at 96x96 makes 288 x 4 = 1,152 programs."""
WARPS = 8
"""Warps per program of the fused backward. Compiled for sm_90 by the wheel's ptxas (no GPU needed) with aligned
pointers, it uses 76 registers per thread at 32 positions and spills none (113 with 4 warps)."""
WGRAD_BLOCK_M = 128
"""Positions per program of :func:`conv_weight_from_grad` (the reduction dimension of its dots): 72 x 8 = 576
programs for a batch of 128 at 96x96."""
WGRAD_N_PER = 16
"""Images per program of :func:`conv_weight_from_grad`."""
WGRAD_WARPS = 8
"""Warps per program of :func:`conv_weight_from_grad`: 118 registers per thread, no spills (ptxas, sm_90, aligned
pointers; 206 at 4 warps, and spills there without the alignment); ``tests/test_conv_pool.py`` compiles it."""
CONV_BLOCK_M = 128
"""Output positions per program of :func:`conv_forward`: 9,216 programs for a batch of 128 at 96x96."""
CONV_WARPS = 4
"""Warps per program of :func:`conv_forward`: 96 registers per thread, no spills (ptxas, sm_90, aligned pointers;
the im2col tile gathered with 32 8-byte loads per thread, where 3 channels in the other order took 80 scalar
ones and 167 registers)."""


def _k_blocks(ci: int, ks: int) -> tuple[int, int]:
    """(K1, K2): two power-of-two column blocks (at least 16, ``tl.dot``'s least) covering the KS * KS * CI
    im2col columns: 64 + 64 for the paper's 100 (5 x 5 taps of 3 channels padded to 4)."""
    k = ci * ks * ks
    k1 = max(16, 1 << (k.bit_length() - 1))  # the largest power of two <= k
    rest = max(k - k1, 1)
    return k1, max(16, 1 << (rest - 1).bit_length())


def padded_channels(x: torch.Tensor) -> torch.Tensor:
    """x with zero channels appended up to a power of two (3 -> 4), channels-last, for the kernels' im2col: a
    tap's channels are then one aligned vector load. x itself when its count is one already."""
    ci = x.shape[1]
    cip = 1 << (ci - 1).bit_length()
    if cip == ci:
        return x
    out = torch.empty((x.shape[0], cip, *x.shape[2:]), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[:, :ci] = x
    out[:, ci:] = 0
    return out


def _weight_rows(weight: torch.Tensor, cip: int) -> torch.Tensor:
    """conv1's weight (C, CI, K, K) as the kernels' (K * K * CIP, C) matrix, row ``(kh * K + kw) * CIP + ci``,
    zero rows for the padded channels."""
    c, ci, ks, _ = weight.shape
    w = weight.permute(0, 2, 3, 1)  # (C, K, K, CI)
    if cip > ci:
        w = F.pad(w, (0, cip - ci))
    return w.reshape(c, ks * ks * cip).t().contiguous()


def _weight_of_rows(rows: torch.Tensor, ci: int, cip: int, ks: int) -> torch.Tensor:
    """The (C, CI, K, K) weight gradient from the kernels' summed partial rows (at least K * K * CIP, C)."""
    c = rows.shape[1]
    return rows[: ks * ks * cip].t().reshape(c, ks, ks, cip)[..., :ci].permute(0, 3, 1, 2)


def _weight_grad(g: torch.Tensor, off: torch.Tensor | None, x: torch.Tensor, ks: int, want_sum: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``conv_weight_kernel`` on the pooled gradient ``g`` and the window offsets ``off`` (``FORM_G``: G formed
    in the kernel, launch settings ``BLOCK_M``, ``N_PER``, ``WARPS``) or, with ``off`` None, on the stored G
    itself (``WGRAD_*``): (weight gradient (C, CI, K, K) float32, G's sums over the batch per position (1, C, H, W)
    float32 channels-last if ``want_sum``, else None); x's channels padded by :func:`padded_channels` here unless
    they are already."""
    n, ci, h, w = x.shape
    xp = padded_channels(x)
    cip = xp.shape[1]
    c, oh, ow = g.shape[1:]
    form_g = off is not None
    block_m, n_per, warps = (BLOCK_M, N_PER, WARPS) if form_g else (WGRAD_BLOCK_M, WGRAD_N_PER, WGRAD_WARPS)
    k1, k2 = _k_blocks(cip, ks)
    tiles, chunks = maxpool.triton_cdiv(h * w, block_m), maxpool.triton_cdiv(n, n_per)
    dw = torch.empty((tiles, chunks, k1 + k2, c), dtype=torch.float32, device=g.device)
    dmap = torch.empty((chunks, h, w, c) if want_sum else (1,), dtype=torch.float32, device=g.device)
    kernel = maxpool._kernels().conv_weight_kernel
    g = g.contiguous(memory_format=torch.channels_last)
    with maxpool._LAUNCH_LOCK:  # without FORM_G, off_ptr (g as a placeholder), OH and OW are unused
        kernel[(tiles, chunks)](g, off if form_g else g, xp, dw, dmap, n, c, h, w, oh, ow, cip, ks, ks // 2, k1, k2,
                                block_m, n_per, x.dtype == torch.float32, maxpool.interpreted(), form_g, want_sum,
                                num_warps=warps)
    total = dmap.sum(0).permute(2, 0, 1).unsqueeze(0) if want_sum else None
    return _weight_of_rows(dw.sum((0, 1)), ci, cip, ks), total


def conv_weight_grad(g: torch.Tensor, off: torch.Tensor, x: torch.Tensor, ks: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight gradient (C, CI, K, K) float32, per-position sums of G over the batch (1, C, H, W) float32,
    channels-last) of ``conv -> max-pool`` from the pooled gradient ``g``, the window offsets and the input (its
    channels padded by :func:`padded_channels` here unless they are already)."""
    return _weight_grad(g, off, x, ks, True)


def conv_weight_from_grad(gin: torch.Tensor, x: torch.Tensor, ks: int, want_sum: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight gradient (C, CI, K, K) float32, and if ``want_sum`` the sums of ``gin`` over the batch per position,
    (1, C, H, W) float32 channels-last, else None) of the stride-1 convolution with ``padding = K // 2`` whose
    output gradient is ``gin`` (channels-last, x's dtype), by ``conv_weight_kernel`` reading the stored map
    (``FORM_G=False``): one read of ``gin`` for both, instead of cuDNN's weight-gradient kernel and PyTorch's
    reduction each reading it. x's channels are padded by :func:`padded_channels` here unless they are already."""
    return _weight_grad(gin, None, x, ks, want_sum)


def conv_forward(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, None, 1, K // 2)`` by ``conv_forward_kernel`` (an implicit GEMM on the tensor cores):
    channels-last, in x's dtype, the same sums in another order than cuDNN's. x may come with its channels padded
    by :func:`padded_channels` (the weight keeps its own count); they are padded here otherwise."""
    xp = padded_channels(x)
    n, cip, h, w = xp.shape
    c, _, ks, _ = weight.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    total = n * h * w
    kernel = maxpool._kernels().conv_forward_kernel
    with maxpool._LAUNCH_LOCK:
        kernel[(maxpool.triton_cdiv(total, CONV_BLOCK_M),)](
            xp, _weight_rows(weight, cip), out, total, c, h, w, cip, ks, ks // 2, *_k_blocks(cip, ks), CONV_BLOCK_M,
            x.dtype == torch.float32, maxpool.interpreted(), num_warps=CONV_WARPS)
    return out


class _ConvMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, addend: torch.Tensor | None,
                conv_kernel: str = "torch", fused: bool = True, grad_sum: str = "torch",
                wgrad: str = "torch", relu: bool = False) -> torch.Tensor:
        ks = weight.shape[-1]
        # the Triton kernels' input, channels padded (padded_channels), made once for the forward and the backward
        triton_bwd = wgrad == "triton" or (fused and not ctx.needs_input_grad[0])
        xp = padded_channels(x) if conv_kernel == "triton" or triton_bwd else None
        out = conv_forward(xp, weight) if conv_kernel == "triton" else F.conv2d(x, weight, None, 1, ks // 2)
        pooled, off = maxpool.pool_forward(out, addend, relu)
        ctx.save_for_backward(x, weight, off, xp if triton_bwd else None)
        ctx.shape = out.shape
        ctx.addend_dim = None if addend is None else addend.dim()
        ctx.addend_dtype = None if addend is None else addend.dtype
        ctx.fused = fused
        ctx.grad_sum = grad_sum
        ctx.wgrad = wgrad
        return pooled

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, off, xp = ctx.saved_tensors
        need_x, need_w, need_a = ctx.needs_input_grad[:3]
        ks, ci = weight.shape[-1], weight.shape[1]
        rest = (None,) * 5  # conv_kernel, fused, grad_sum, wgrad, relu
        if ctx.wgrad == "triton" and need_w:  # the pool's kernel, then conv_weight_kernel reading G (and cuDNN for x's)
            gin = maxpool.pool_backward(g, off, ctx.shape)
            want_sum = bool(need_a and ctx.addend_dim)
            gw, total = conv_weight_from_grad(gin, xp, ks, want_sum)
            ga = maxpool.addend_grad_of_sum(total, ctx.addend_dim, ctx.addend_dtype) if want_sum else None
            gx, _ = _conv_backward(gin, x, weight, need_x, False)
            return gx, gw[:, :ci].to(weight.dtype), ga, *rest
        if need_x or not ctx.fused:  # the unfused path's arithmetic
            gin, ga = maxpool.backward_with_addend(ctx, g, off, need_a)
            return *_conv_backward(gin, x, weight, need_x, need_w), ga, *rest
        gw, gmap = conv_weight_grad(g, off, xp, ks)
        ga = maxpool.addend_grad_of_sum(gmap, ctx.addend_dim, ctx.addend_dtype) if need_a and ctx.addend_dim else None
        return None, gw[:, :ci].to(weight.dtype) if need_w else None, ga, *rest


def _conv_backward(gin: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(x's gradient, the weight's gradient), each None unless asked for, of the stride-1 ``padding = K // 2``
    convolution with output gradient ``gin``, as autograd computes them for ``F.conv2d``
    (``aten.convolution_backward``)."""
    if not (need_x or need_w):
        return None, None
    ks = weight.shape[-1]
    gx, gw, _ = torch.ops.aten.convolution_backward(gin, x, weight, None, [1, 1], [ks // 2] * 2, [1, 1], False,
                                                    [0, 0], 1, [need_x, need_w, False])
    return gx, gw


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv_max_pool` takes these: the pool's conditions for x (:func:`maxpool.usable`), a
    square odd kernel, x's dtype, and a power-of-two channel count of at least 16 (``tl.dot``)."""
    c, ci, kh, kw = weight.shape
    return (maxpool.usable(x) and kh == kw and kh % 2 == 1 and weight.dtype == x.dtype and c >= 16
            and c & (c - 1) == 0 and ci == x.shape[1])


def conv_max_pool(x: torch.Tensor, weight: torch.Tensor, addend: torch.Tensor | None = None,
                  conv_kernel: str = "torch", fused: bool = True, grad_sum: str = "torch",
                  wgrad: str = "torch", relu: bool = False) -> torch.Tensor:
    """``max_pool2d(conv2d(x, weight, padding=K // 2) + addend, 3, 2, 1)``; see the module docstring.
    ``conv_kernel``: the forward convolution by cuDNN (``torch``) or :func:`conv_forward` (``triton``).
    ``fused``: whether the backward, when x needs no gradient, is ``conv_weight_kernel`` (else always the unfused
    arithmetic). ``grad_sum``: the unfused backward's sum of the addend's gradient (:data:`maxpool.GRAD_SUMS`).
    ``wgrad="triton"`` (it takes precedence over both): the backward is the pool's kernel, then
    :func:`conv_weight_from_grad` for the weight's and the addend's gradients (and cuDNN for x's, if it needs one).
    ``relu``: ``F.relu`` of the pooled map, folded into the pool's kernels (:func:`maxpool.max_pool_3x3_s2`).
    Inputs it does not take (:func:`usable`, and an addend the pool's kernel does not add itself) go the unfused
    way."""
    ks = weight.shape[-1]
    if not usable(x, weight) or (addend is not None and not maxpool.addend_ok(x, addend, weight.shape[0])):
        return maxpool.max_pool_3x3_s2(F.conv2d(x, weight, None, 1, ks // 2), addend, grad_sum, relu)
    return _ConvMaxPool.apply(x, weight, addend, conv_kernel, fused, grad_sum, wgrad, relu)
