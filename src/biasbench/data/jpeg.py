"""The reference's JPEG files, reproduced: a batched, exact emulation of a libjpeg-turbo round trip.

The reference saved every Biased MNIST image with ``cv2.imwrite(path, img)`` (JPEG, OpenCV's default
quality 95) and trained on what ``cv2.imread`` gave back. :func:`jpeg_roundtrip` computes that round trip
for a whole batch of uint8 images with integer tensor arithmetic (any device, no per-image loop), following
libjpeg-turbo's default baseline path step by step:

encode (``jpeg_set_quality(q, force_baseline=TRUE)``, OpenCV's and libjpeg's default 4:2:0 sampling):

1. RGB -> YCbCr in 16-bit fixed point (``jccolor.c``): ``Y = (19595 R + 38470 G + 7471 B + 2^15) >> 16``,
   ``Cb = (-11059 R - 21709 G + 32768 B + 2^23 + 2^15 - 1) >> 16``, ``Cr`` alike.
2. Cb and Cr are averaged over 2x2 pixels with the alternating rounding bias 1, 2, 1, 2, ... along a
   row (``h2v2_downsample``). Planes are extended to whole 8x8 blocks (16x16 pixels for the image) as
   libjpeg does: the image's last column repeats before the averaging, but the last *averaged* row repeats
   after it (``jcprepct.c`` pads rows of the downsampled output), which matters at sizes that are not a
   multiple of 16 (24x24 images, say).
3. Per 8x8 block, samples minus 128 go through the accurate integer forward DCT (``jpeg_fdct_islow``,
   13-bit constants, 2 extra bits in the first pass); each coefficient is divided by 8 x its quantiser and
   rounded half away from zero. The quantisers are the JPEG standard's tables (Annex K) scaled by
   ``(t * s + 50) // 100`` with ``s = 5000 / q`` below quality 50 and ``200 - 2 q`` from 50 on, clamped to
   [1, 255].

decode (``cv2.imread``'s defaults):

4. Dequantised coefficients go through the accurate integer inverse DCT (``jpeg_idct_islow``); +128,
   clamped to [0, 255].
5. Cb and Cr are upsampled 2x2 with the "fancy" triangle filter (``h2v2_fancy_upsample``): each output
   sample weighs its nearest input sample 9/16, the two next-nearest 3/16 each and the diagonal one 1/16,
   with rounding biases 8 and 7 alternating along a row; the image's edges repeat (the MCU padding is
   never read).
6. YCbCr -> RGB in fixed point (``jdcolor.c``), clamped to [0, 255].

The result equals libjpeg-turbo's byte for byte (tested against OpenCV's ``imwrite``/``imread`` and
Pillow, both libjpeg-turbo builds, on rendered datasets and on noise). Huffman coding is lossless and is
skipped.

Channel order: images are in the model's order, which is the reference's BGR tuple order
(:mod:`biasbench.data.factors`); OpenCV hands them to libjpeg as BGR, so red is channel 2 here.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import BiasbenchError

REFERENCE_QUALITY = 95
"""``cv2.imwrite``'s default JPEG quality: what the reference's dataset files were saved with."""

_LUMA_TABLE = np.array([  # JPEG standard, Annex K.1, natural (row-major) order
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
], dtype=np.int64).reshape(8, 8)
_CHROMA_TABLE = np.full((8, 8), 99, dtype=np.int64)  # Annex K.2
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]

_SCALEBITS = 16
_CONST_BITS = 13
_PASS1_BITS = 2
_CHUNK = {"cpu": 256, "cuda": 2048}
"""Images per slice of work: int32 temporaries of 14 MB (CPU) or 113 MB (GPU: fewer kernel launches) at 96x96."""


def _fix(x: float, bits: int) -> int:
    return int(x * (1 << bits) + 0.5)


# jfdctint.c / jidctint.c constants, FIX(x) at CONST_BITS
_F0298, _F0390, _F0541, _F0765 = (_fix(v, _CONST_BITS) for v in (0.298631336, 0.390180644, 0.541196100, 0.765366865))
_F0899, _F1175, _F1501, _F1847 = (_fix(v, _CONST_BITS) for v in (0.899976223, 1.175875602, 1.501321110, 1.847759065))
_F1961, _F2053, _F2562, _F3072 = (_fix(v, _CONST_BITS) for v in (1.961570560, 2.053119869, 2.562915447, 3.072711026))


def check_quality(value) -> int:
    """0 (no JPEG: lossless images) or a libjpeg quality 1..100."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise BiasbenchError(f"JPEG quality must be an integer 1..100, or 0 for lossless images; got {value!r}") \
                from None
    if not 0 <= value <= 100:
        raise BiasbenchError(f"JPEG quality must be 1..100, or 0 for lossless images; got {value}")
    return int(value)


def quant_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's (luma, chroma) quantisers for ``quality`` with ``force_baseline`` (``jcparam.c``)."""
    quality = check_quality(quality)
    if quality == 0:
        raise BiasbenchError("quality 0 means no JPEG; quantisers exist for 1..100")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip((t * scale + 50) // 100, 1, 255) for t in (_LUMA_TABLE, _CHROMA_TABLE))


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _fdct_1d(d: list[torch.Tensor], first: bool) -> list[torch.Tensor]:
    """One pass of ``jpeg_fdct_islow`` over eight rows (or columns) of samples; returns 8 outputs."""
    tmp0, tmp7 = d[0] + d[7], d[0] - d[7]
    tmp1, tmp6 = d[1] + d[6], d[1] - d[6]
    tmp2, tmp5 = d[2] + d[5], d[2] - d[5]
    tmp3, tmp4 = d[3] + d[4], d[3] - d[4]
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    out = [None] * 8
    if first:
        out[0], out[4] = (tmp10 + tmp11) << _PASS1_BITS, (tmp10 - tmp11) << _PASS1_BITS
        shift = _CONST_BITS - _PASS1_BITS
    else:
        out[0], out[4] = _descale(tmp10 + tmp11, _PASS1_BITS), _descale(tmp10 - tmp11, _PASS1_BITS)
        shift = _CONST_BITS + _PASS1_BITS
    z1 = (tmp12 + tmp13) * _F0541
    out[2] = _descale(z1 + tmp13 * _F0765, shift)
    out[6] = _descale(z1 - tmp12 * _F1847, shift)
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1175
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    out[7] = _descale(tmp4 * _F0298 + z1 + z3, shift)
    out[5] = _descale(tmp5 * _F2053 + z2 + z4, shift)
    out[3] = _descale(tmp6 * _F3072 + z2 + z3, shift)
    out[1] = _descale(tmp7 * _F1501 + z1 + z4, shift)
    return out


def _idct_1d(c: list[torch.Tensor], first: bool) -> list[torch.Tensor]:
    """One pass of ``jpeg_idct_islow`` (columns first, then rows); returns 8 outputs."""
    z1 = (c[2] + c[6]) * _F0541
    tmp2 = z1 - c[6] * _F1847
    tmp3 = z1 + c[2] * _F0765
    tmp0 = (c[0] + c[4]) << _CONST_BITS
    tmp1 = (c[0] - c[4]) << _CONST_BITS
    tmp10, tmp13 = tmp0 + tmp3, tmp0 - tmp3
    tmp11, tmp12 = tmp1 + tmp2, tmp1 - tmp2
    t0, t1, t2, t3 = c[7], c[5], c[3], c[1]
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _F1175
    z1, z2 = z1 * -_F0899, z2 * -_F2562
    z3, z4 = z3 * -_F1961 + z5, z4 * -_F0390 + z5
    t0 = t0 * _F0298 + z1 + z3
    t1 = t1 * _F2053 + z2 + z4
    t2 = t2 * _F3072 + z2 + z3
    t3 = t3 * _F1501 + z1 + z4
    shift = _CONST_BITS - _PASS1_BITS if first else _CONST_BITS + _PASS1_BITS + 3
    return [_descale(v, shift) for v in (tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0,
                                         tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3)]


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, H, W) with H, W multiples of 8 -> (N, H/8, W/8, 8, 8)."""
    n, h, w = plane.shape
    return plane.view(n, h // 8, 8, w // 8, 8).transpose(2, 3)


def _unblocks(blocks: torch.Tensor) -> torch.Tensor:
    n, hb, wb = blocks.shape[:3]
    return blocks.transpose(2, 3).reshape(n, hb * 8, wb * 8)


def _apply_rows(x: torch.Tensor, fn, dim: int) -> torch.Tensor:
    return torch.stack(fn(list(x.unbind(dim))), dim=dim)


def _codec_plane(plane: torch.Tensor, qtable: torch.Tensor) -> torch.Tensor:
    """Samples (N, H, W) int32, H and W multiples of 8 -> the decoded samples of the same blocks."""
    b = _blocks(plane) - 128
    b = _apply_rows(b, lambda r: _fdct_1d(r, True), -1)   # pass 1: rows (the last axis)
    b = _apply_rows(b, lambda r: _fdct_1d(r, False), -2)  # pass 2: columns
    div = qtable * 8
    q = torch.div(b.abs() + div // 2, div, rounding_mode="floor") * b.sign()
    c = q * qtable
    c = _apply_rows(c, lambda r: _idct_1d(r, True), -2)   # pass 1: columns
    c = _apply_rows(c, lambda r: _idct_1d(r, False), -1)  # pass 2: rows
    return _unblocks((c + 128).clamp_(0, 255))


def _fancy_upsample(c: torch.Tensor) -> torch.Tensor:
    """``h2v2_fancy_upsample``: (N, h, w) -> (N, 2h, 2w), edges repeated."""
    up = torch.cat([c[:, :1], c[:, :-1]], 1)    # the row above (the first row repeats)
    down = torch.cat([c[:, 1:], c[:, -1:]], 1)  # the row below
    rows = torch.stack([3 * c + up, 3 * c + down], 2).flatten(1, 2)  # (N, 2h, w) column sums
    left = torch.cat([rows[:, :, :1], rows[:, :, :-1]], 2)
    right = torch.cat([rows[:, :, 1:], rows[:, :, -1:]], 2)
    return torch.stack([(3 * rows + left + 8) >> 4, (3 * rows + right + 7) >> 4], 3).flatten(2, 3)


def _extend(t: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """``t`` extended to ``size`` along ``dim`` by repeating its last entry (libjpeg's edge padding)."""
    if t.shape[dim] == size:
        return t
    return t.index_select(dim, torch.arange(size, device=t.device).clamp_(max=t.shape[dim] - 1))


def _roundtrip_chunk(x: torch.Tensor, luma_q: torch.Tensor, chroma_q: torch.Tensor) -> torch.Tensor:
    n, _, h, w = x.shape
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    h2 = h + h % 2
    # the last column repeats to whole MCUs, the last row to a whole row pair
    x = _extend(_extend(x.int(), h2, -2), wp, -1)
    b, g, r = x.unbind(1)  # model order = the reference's BGR
    one_half = 1 << (_SCALEBITS - 1)
    offset = 128 << _SCALEBITS
    fx = lambda v: _fix(v, _SCALEBITS)  # noqa: E731
    y = (fx(0.299) * r + fx(0.587) * g + fx(0.114) * b + one_half) >> _SCALEBITS
    cb = (-fx(0.16874) * r - fx(0.33126) * g + fx(0.5) * b + offset + one_half - 1) >> _SCALEBITS
    cr = (fx(0.5) * r - fx(0.41869) * g - fx(0.08131) * b + offset + one_half - 1) >> _SCALEBITS
    bias = torch.tensor([1, 2], dtype=torch.int32, device=x.device).repeat(wp // 4)  # 1, 2, 1, 2, ... along a row

    def down(p: torch.Tensor) -> torch.Tensor:  # then the last *downsampled* row repeats to whole blocks
        s = p.view(n, h2 // 2, 2, wp // 2, 2).sum((2, 4), dtype=torch.int32)
        return _extend((s + bias) >> 2, hp // 2, -2)

    y = _codec_plane(_extend(y, hp, -2), luma_q)[:, :h, :w]
    hc, wc = -(-h // 2), -(-w // 2)  # the chroma planes' real size; the rest is MCU padding
    cb = _fancy_upsample(_codec_plane(down(cb), chroma_q)[:, :hc, :wc])[:, :h, :w] - 128
    cr = _fancy_upsample(_codec_plane(down(cr), chroma_q)[:, :hc, :wc])[:, :h, :w] - 128
    red = y + ((fx(1.402) * cr + one_half) >> _SCALEBITS)
    green = y + ((-fx(0.34414) * cb + one_half - fx(0.71414) * cr) >> _SCALEBITS)
    blue = y + ((fx(1.772) * cb + one_half) >> _SCALEBITS)
    return torch.stack([blue, green, red], 1).clamp_(0, 255).to(torch.uint8)


def jpeg_roundtrip(images: torch.Tensor, quality: int = REFERENCE_QUALITY, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """What ``cv2.imread`` returns for ``cv2.imwrite``'s JPEG of each image (see the module doc).

    ``images``: uint8 (N, 3, H, W) in model (BGR) order, any device. Returns a uint8 tensor of the same
    shape on the same device (``out`` if given; it may be ``images`` itself). Work is done in slices
    (:data:`_CHUNK`), so memory stays bounded for a whole split.
    """
    quality = check_quality(quality)
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise BiasbenchError(f"jpeg_roundtrip takes uint8 (N, 3, H, W) images, got {images.dtype} "
                             f"{tuple(images.shape)}")
    out = torch.empty_like(images) if out is None else out
    if quality == 0:
        return out.copy_(images)
    luma_q, chroma_q = (torch.from_numpy(t).to(images.device, torch.int32) for t in quant_tables(quality))
    chunk = _CHUNK.get(images.device.type, _CHUNK["cpu"])
    for start in range(0, len(images), chunk):
        sl = slice(start, start + chunk)
        out[sl] = _roundtrip_chunk(images[sl], luma_q, chroma_q)
    return out
