"""The Triton kernels of :mod:`biasbench.models.maxpool` (imported on first use: Triton reads
``TRITON_INTERPRET`` when a kernel is defined, so the tests import this module after setting it).

Layout: channels-last, element ``(n, c, h, w)`` at ``((n * H + h) * W + w) * C + c``. The pool's kernels work on
tiles of ``P_BLOCK`` consecutive positions ``n * H * W + h * W + w`` (of the output in the forward, of the input in
the backward) by ``CB`` channels (``C`` rounded up to a power of two): the index arithmetic and the masks are
per position, so that the loads and stores of a position's channels are contiguous and (with ``CB == C``)
vectorised, 16 bytes per instruction (ptxas, sm_90: 18 loads per thread in the forward instead of 144). The
map's sizes are compile-time constants, so the index arithmetic divides by constants (a kernel per map shape:
the paper CNN has one; the batch size is not among them).
"""
import triton
import triton.language as tl


@triton.jit
def _tile_coords(P_BLOCK: tl.constexpr, CB: tl.constexpr, total_p, C: tl.constexpr, H: tl.constexpr,
                 W: tl.constexpr):
    """This program's tile of a channels-last (N, C, H, W) map: element indices (P_BLOCK, CB), whether each
    exists, and n, c, h, w broadcastable to the tile (n, h, w a column of positions, c a row of channels). The
    channel mask is left out when ``CB == C``, so the masks stay constant along the channels."""
    p = tl.program_id(0) * P_BLOCK + tl.arange(0, P_BLOCK)
    c = tl.arange(0, CB)
    live = (p < total_p)[:, None]
    if CB != C:
        live = live & (c < C)[None, :]
    return (p[:, None] * C + c[None, :], live, (p // (H * W))[:, None], c[None, :], (p // W % H)[:, None],
            (p % W)[:, None])


@triton.jit
def _rounded(v, DTYPE: tl.constexpr):
    """float32 ``v`` converted to ``DTYPE``, bfloat16 rounded to nearest even by hand: what the GPU's conversion
    does, and what Triton's CPU interpreter (which truncates) would not, so the tests check the GPU's numbers."""
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DTYPE)


@triton.jit
def forward_kernel(x_ptr, a_ptr, out_ptr, off_ptr, total_p, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                   OH: tl.constexpr, OW: tl.constexpr, HAS_ADDEND: tl.constexpr, A_SC: tl.constexpr,
                   A_SH: tl.constexpr, A_SW: tl.constexpr, P_BLOCK: tl.constexpr, CB: tl.constexpr,
                   RELU: tl.constexpr = False):
    """Max-pool of ``x + a`` where ``HAS_ADDEND`` (``a`` broadcast over the batch, element ``(c, h, w)`` at
    ``c * A_SC + h * A_SH + w * A_SW``; the sum is rounded to x's dtype, as PyTorch's add rounds it), else of x;
    ``total_p`` = N * OH * OW output positions. ``RELU``: the output is ReLU'd (NaN kept, anything else not above
    zero made +0.0) and such a window's offset is ``NO_WINDOW`` (255), which no input element matches, so the
    backward routes it no gradient: ``F.relu``'s backward (zero where its output is not above zero) folded into
    the pool's."""
    idx, live, n, c, oh, ow = _tile_coords(P_BLOCK, CB, total_p, C, OH, OW)
    best = tl.full((P_BLOCK, CB), float("-inf"), tl.float32)
    # the window's first element inside the image: row 2oh-1 is outside only for oh = 0, likewise columns
    off = tl.full((P_BLOCK, CB), 0, tl.int32) + tl.where(oh == 0, 3, 0) + tl.where(ow == 0, 1, 0)
    for kh in tl.static_range(3):
        h = 2 * oh - 1 + kh
        for kw in tl.static_range(3):
            w = 2 * ow - 1 + kw
            inside = live & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            v = tl.load(x_ptr + ((n * H + h) * W + w) * C + c, mask=inside, other=float("-inf")).to(tl.float32)
            if HAS_ADDEND:
                a = tl.load(a_ptr + c * A_SC + h * A_SH + w * A_SW, mask=inside, other=0.0).to(tl.float32)
                v = _rounded(v + a, x_ptr.dtype.element_ty).to(tl.float32)
            take = inside & ((v > best) | (v != v))
            best = tl.where(take, v, best)
            off = tl.where(take, kh * 3 + kw, off)
    if RELU:
        keep = (best > 0.0) | (best != best)
        best = tl.where(keep, best, 0.0)
        off = tl.where(keep, off, 255)
    tl.store(out_ptr + idx, best.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(off_ptr + idx, off.to(tl.uint8), mask=live)


@triton.jit
def _pooled_input_grad(g_ptr, off_ptr, n, c, h, w, live, C: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr):
    """The max-pool's input gradient at (n, c, h, w) in float32 (the arguments broadcast against each other: a
    vector of elements, or a column of positions against a row of channels): the output gradients of the
    windows (at most 4) whose offset points at it, summed in PyTorch's order (window rows, then columns)."""
    acc = (h + c).to(tl.float32) * 0.0
    # windows covering row h: oh = h // 2 and, for odd h, also oh = h // 2 + 1 (rows 2oh-1 .. 2oh+1)
    for i in tl.static_range(2):
        oh = h // 2 + i
        row_ok = (oh <= (h + 1) // 2) & (oh < OH)
        for j in tl.static_range(2):
            ow = w // 2 + j
            ok = live & row_ok & (ow <= (w + 1) // 2) & (ow < OW)
            o = ((n * OH + oh) * OW + ow) * C + c
            want = (h - (2 * oh - 1)) * 3 + (w - (2 * ow - 1))
            hit = ok & (tl.load(off_ptr + o, mask=ok, other=255).to(tl.int32) == want)
            # loaded under ok (constant along the channels, so vectorised), added only where hit
            acc = tl.where(hit, acc + tl.load(g_ptr + o, mask=ok, other=0.0).to(tl.float32), acc)
    return acc


@triton.jit
def backward_kernel(g_ptr, off_ptr, gin_ptr, total_p, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                    OH: tl.constexpr, OW: tl.constexpr, P_BLOCK: tl.constexpr, CB: tl.constexpr):
    """The pool's input gradient; ``total_p`` = N * H * W input positions."""
    idx, live, n, c, h, w = _tile_coords(P_BLOCK, CB, total_p, C, H, W)
    acc = _pooled_input_grad(g_ptr, off_ptr, n, c, h, w, live, C, OH, OW)
    tl.store(gin_ptr + idx, _rounded(acc, gin_ptr.dtype.element_ty), mask=live)


@triton.jit
def backward_sum_kernel(g_ptr, off_ptr, gin_ptr, sum_ptr, N, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        OH: tl.constexpr, OW: tl.constexpr, P_BLOCK: tl.constexpr, CB: tl.constexpr,
                        N_PER: tl.constexpr):
    """``backward_kernel`` that also sums the input gradient over the batch (the gradient of an addend broadcast
    over it). Program ``(t, j)``: the positions ``t * P_BLOCK ...`` of one image's H * W by its CB channels, for
    the images ``j * N_PER ...``; it stores each image's input gradient as ``backward_kernel`` does and adds the
    stored (rounded) values in float32 in batch order, writing the partial sum to ``sum_ptr[j]`` (H, W, C); the
    caller adds the chunks in a fixed order (deterministic)."""
    e, live, _, c, h, w = _tile_coords(P_BLOCK, CB, H * W, C, H, W)  # one image's tile: n = 0
    j = tl.program_id(1)
    total = tl.full((P_BLOCK, CB), 0.0, tl.float32)
    for n in range(j * N_PER, tl.minimum(j * N_PER + N_PER, N)):
        q = _rounded(_pooled_input_grad(g_ptr, off_ptr, n, c, h, w, live, C, OH, OW), gin_ptr.dtype.element_ty)
        tl.store(gin_ptr + n * (H * W * C) + e, q, mask=live)
        total += q.to(tl.float32)
    tl.store(sum_ptr + j * (H * W * C) + e, total, mask=live)


@triton.jit
def _im2col(x_ptr, n, h, w, live, K0: tl.constexpr, KB: tl.constexpr, CI: tl.constexpr, KS: tl.constexpr,
            PAD: tl.constexpr, H: tl.constexpr, W: tl.constexpr, TRANS: tl.constexpr = False):
    """Columns ``K0 .. K0 + KB`` of the im2col tile of channels-last x (CI channels, a power of two: callers pad
    with zero channels) at output positions (h, w) of image n (a scalar, or a column of per-row images):
    ``x[n, h + kh - PAD, w + kw - PAD, ci]`` for ``k = (kh * KS + kw) * CI + ci``, zero outside the image, for
    dead rows and for k >= KS * KS * CI. The channel is the fastest index, so a tap's CI channels are contiguous
    in x and in the tile, and each is one vector load (8 bytes for 4 bf16 channels; ptxas, sm_90: 32 loads per
    thread for the forward's 128 positions x 128 columns instead of 80 scalar ones with 3 channels in the other
    order). ``TRANS``: the tile transposed, (KB, positions), gathered so (for a weight gradient's
    ``tile^T @ G``) instead of transposed in registers afterwards."""
    k = K0 + tl.arange(0, KB)
    ci = k % CI
    tap = k // CI
    if TRANS:
        hh = h[None, :] + (tap // KS)[:, None] - PAD
        ww = w[None, :] + (tap % KS)[:, None] - PAD
        inside = live[None, :] & (tap < KS * KS)[:, None] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        return tl.load(x_ptr + ((n * H + hh) * W + ww) * CI + ci[:, None], mask=inside, other=0.0)
    else:
        hh = h[:, None] + (tap // KS)[None, :] - PAD
        ww = w[:, None] + (tap % KS)[None, :] - PAD
        inside = live[:, None] & (tap < KS * KS)[None, :] & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        return tl.load(x_ptr + ((n * H + hh) * W + ww) * CI + ci[None, :], mask=inside, other=0.0)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """``a @ b`` in float32: float32 operands exactly (``IEEE``, not as TF32); under Triton's CPU interpreter
    (``UPCAST_DOT``) bf16 operands converted to float32 first, as its dot multiplies bf16 operands' bits (the
    products are exact in float32 either way, so this is the tensor cores' arithmetic); else on the tensor cores."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    elif UPCAST_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def conv_weight_kernel(g_ptr, off_ptr, x_ptr, dw_ptr, dmap_ptr, N, C: tl.constexpr, H: tl.constexpr,
                       W: tl.constexpr, OH: tl.constexpr, OW: tl.constexpr, CI: tl.constexpr, KS: tl.constexpr,
                       PAD: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, BLOCK_M: tl.constexpr,
                       N_PER: tl.constexpr, IEEE: tl.constexpr, UPCAST_DOT: tl.constexpr,
                       FORM_G: tl.constexpr = True, SUM: tl.constexpr = True):
    """The weight gradient of a stride-1 convolution with few input channels (and with ``SUM`` its output
    gradient G summed over the batch per position: the gradient of an addend broadcast over it, a bias or the
    fold's border map), from G formed from the max-pool after it (``FORM_G``: the pool's backward fused in) or
    read from G stored channels-last at ``g_ptr`` (N, H, W, C) (``off_ptr``, OH and OW then unused).

    Program ``(t, j)``: the conv output positions ``t * BLOCK_M ...`` (of H * W) and the images ``j * N_PER ...``.
    Per image it forms the pool's input gradient G for its positions and all C channels as the backward kernel
    does (same windows, same order, rounded to g's dtype), never writing it out, or reads the G tile (BLOCK_M x C,
    contiguous), and accumulates

        dw[k, co] += sum_p x[n, h_p + kh - PAD, w_p + kw - PAD, ci] * G[p, co],  k = (kh * KS + kw) * CI + ci

    (``tl.dot`` of the transposed im2col tile in two column blocks, K1 + K2 >= KS * KS * CI, with the G tile, the
    positions being the dots' reduction dimension) and, per position, ``dmap[p, co] += G[p, co]``. Writes its partial
    sums: ``dw_ptr[t, j]`` (K1 + K2, C) and ``dmap_ptr[j, p]`` (C); the caller sums them in a fixed order
    (deterministic)."""
    t = tl.program_id(0)
    j = tl.program_id(1)
    p = t * BLOCK_M + tl.arange(0, BLOCK_M)
    live_p = p < H * W
    h = p // W
    w = p % W
    co = tl.arange(0, C)
    acc1 = tl.full((K1, C), 0.0, tl.float32)
    acc2 = tl.full((K2, C), 0.0, tl.float32)
    acc_map = tl.full((BLOCK_M, C), 0.0, tl.float32)
    for i in range(N_PER):
        n = j * N_PER + i
        live = live_p & (n < N)
        if FORM_G:
            gacc = _pooled_input_grad(g_ptr, off_ptr, n, co[None, :], h[:, None], w[:, None], live[:, None], C, OH,
                                      OW)
            gq = _rounded(gacc, g_ptr.dtype.element_ty)  # the pool's input gradient as the unfused path stores it
        else:
            gq = tl.load(g_ptr + (n * (H * W) + p[:, None]) * C + co[None, :], mask=live[:, None], other=0.0)
        if SUM:
            acc_map += gq.to(tl.float32)
        x1 = _im2col(x_ptr, n, h, w, live, 0, K1, CI, KS, PAD, H, W, True).to(gq.dtype)
        acc1 += _dot(x1, gq, IEEE, UPCAST_DOT)
        x2 = _im2col(x_ptr, n, h, w, live, K1, K2, CI, KS, PAD, H, W, True).to(gq.dtype)
        acc2 += _dot(x2, gq, IEEE, UPCAST_DOT)
    base = dw_ptr + (t * tl.num_programs(1) + j) * (K1 + K2) * C
    tl.store(base + tl.arange(0, K1)[:, None] * C + co[None, :], acc1)
    tl.store(base + (K1 + tl.arange(0, K2))[:, None] * C + co[None, :], acc2)
    if SUM:
        tl.store(dmap_ptr + (j * (H * W) + p[:, None]) * C + co[None, :], acc_map, mask=live_p[:, None])


@triton.jit
def conv_forward_kernel(x_ptr, w_ptr, out_ptr, total, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                        CI: tl.constexpr, KS: tl.constexpr, PAD: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                        BLOCK_M: tl.constexpr, IEEE: tl.constexpr, UPCAST_DOT: tl.constexpr):
    """A stride-1 convolution with few input channels as an implicit GEMM: program ``t`` computes the output
    positions ``t * BLOCK_M ...`` (of ``total`` = N * H * W, channels-last) for all C channels as ``tl.dot`` of
    their im2col tile (two column blocks K1 + K2, see ``conv_weight_kernel``) with the weight as a
    (KS * KS * CI, C) matrix (rows in ``_im2col``'s order), accumulated in float32 and rounded once to the
    output's dtype."""
    q = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    live = q < total
    n = (q // (H * W))[:, None]
    h = q // W % H
    w = q % W
    co = tl.arange(0, C)
    k1 = tl.arange(0, K1)
    k2 = K1 + tl.arange(0, K2)
    b1 = tl.load(w_ptr + k1[:, None] * C + co[None, :], mask=(k1 < CI * KS * KS)[:, None], other=0.0)
    b2 = tl.load(w_ptr + k2[:, None] * C + co[None, :], mask=(k2 < CI * KS * KS)[:, None], other=0.0)
    acc = _dot(_im2col(x_ptr, n, h, w, live, 0, K1, CI, KS, PAD, H, W), b1, IEEE, UPCAST_DOT)
    acc += _dot(_im2col(x_ptr, n, h, w, live, K1, K2, CI, KS, PAD, H, W), b2, IEEE, UPCAST_DOT)
    tl.store(out_ptr + q[:, None] * C + co[None, :], _rounded(acc, out_ptr.dtype.element_ty), mask=live[:, None])
