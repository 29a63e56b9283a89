"""The Triton kernels of :mod:`biasbench.models.maxpool` (imported on first use: Triton reads
``TRITON_INTERPRET`` when a kernel is defined, so the tests import this module after setting it).

Layout: channels-last, element ``(n, c, h, w)`` at ``((n * H + h) * W + w) * C + c``; one program per
``BLOCK_SIZE`` consecutive elements (of the output in the forward, of the input in the backward). The map's
sizes are compile-time constants, so the index arithmetic divides by constants (a kernel per map shape: the
paper CNN has one; the batch size is not among them).
"""
import triton
import triton.language as tl


@triton.jit
def _block_coords(BLOCK_SIZE: tl.constexpr, total, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr):
    """This program's element indices in a channels-last (N, C, H, W) map, whether each exists, and its
    (n, c, h, w)."""
    idx = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    t = idx // C
    return idx, idx < total, t // W // H, idx % C, t // W % H, t % W


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
def forward_kernel(x_ptr, a_ptr, out_ptr, off_ptr, total, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                   OH: tl.constexpr, OW: tl.constexpr, HAS_ADDEND: tl.constexpr, A_SC: tl.constexpr,
                   A_SH: tl.constexpr, A_SW: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Max-pool of ``x + a`` where ``HAS_ADDEND`` (``a`` broadcast over the batch, element ``(c, h, w)`` at
    ``c * A_SC + h * A_SH + w * A_SW``; the sum is rounded to x's dtype, as PyTorch's add rounds it), else of x."""
    idx, live, n, c, oh, ow = _block_coords(BLOCK_SIZE, total, C, OH, OW)
    best = tl.full((BLOCK_SIZE,), float("-inf"), tl.float32)
    # the window's first element inside the image: row 2oh-1 is outside only for oh = 0, likewise columns
    off = tl.where(oh == 0, 3, 0) + tl.where(ow == 0, 1, 0)
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
    tl.store(out_ptr + idx, best.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(off_ptr + idx, off.to(tl.uint8), mask=live)


@triton.jit
def backward_kernel(g_ptr, off_ptr, gin_ptr, total, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
                    OH: tl.constexpr, OW: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    idx, live, n, c, h, w = _block_coords(BLOCK_SIZE, total, C, H, W)
    acc = tl.full((BLOCK_SIZE,), 0.0, tl.float32)
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
            acc = tl.where(hit, acc + tl.load(g_ptr + o, mask=hit, other=0.0).to(tl.float32), acc)
    tl.store(gin_ptr + idx, _rounded(acc, gin_ptr.dtype.element_ty), mask=live)
