"""Counter-based random numbers for loss functions: pure tensor functions of integer keys.

A loss function that needs randomness (LISA's pairs and mixing weights) cannot draw from a torch generator: under
``vmap`` R fused runs would share one stream (not the draws of R separate runs), a captured CUDA graph would replay
the same draws, and a resume would need the generator's state. Here a draw is a hash of its keys instead (the
run's seed, its step counter, a stream number and positions), so the same keys give the same numbers on every
device, fused or not, captured or eager, and a resumed run continues from its saved counter.

The hash is Wellons' ``lowbias32`` (``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16``,
mod 2^32), chained over the keys; int64 arithmetic with every product kept under 2^63 (no overflow on any
backend). Uniforms take the hash's top 24 bits: ``((h >> 8) + 0.5) / 2^24``, in (0, 1), exact in float32.
"""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c, in two 16-bit halves of c (every
    intermediate under 2^49)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` of int64 values in [0, 2^32): a bijection of 32-bit integers with good avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _extend(h: torch.Tensor | None, k: torch.Tensor | int) -> torch.Tensor:
    """The hash of the keys hashed into ``h`` (None: none yet) followed by ``k``."""
    k = (torch.as_tensor(k, dtype=torch.int64) if not isinstance(k, torch.Tensor) else k.long()) & MASK32
    return hash32(k ^ _GOLDEN) if h is None else hash32(h ^ hash32(k))


def hash_keys(*keys: torch.Tensor | int) -> torch.Tensor:
    """One 32-bit hash (int64 tensor) of the keys, broadcast together; each key's low 32 bits count, in order."""
    if not keys:
        raise ValueError("hash_keys needs at least one key")
    h = None
    for k in keys:
        h = _extend(h, k)
    return h


def _to_uniform(h: torch.Tensor) -> torch.Tensor:
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def uniform(*keys: torch.Tensor | int) -> torch.Tensor:
    """Float32 uniforms in (0, 1), one per element of the broadcast keys (see the module docstring)."""
    return _to_uniform(hash_keys(*keys))


def symmetric_beta(a: int, *keys: torch.Tensor | int) -> torch.Tensor:
    """Beta(a, a) draws for a positive integer ``a``, one per element of the broadcast keys: the a-th smallest
    of 2a - 1 independent uniforms (an order statistic: the k-th smallest of n uniforms is Beta(k, n + 1 - k)),
    exact without a Gamma sampler. a = 1 is the uniform, a = 2 (LISA's and mixup's usual alpha) the median of 3.
    The j-th uniform is ``uniform(*keys, j)``; the keys' hash is computed once and extended by each j."""
    if not isinstance(a, int) or a < 1:
        raise ValueError(f"symmetric_beta needs a positive integer a, got {a!r}")
    prefix = hash_keys(*keys)
    draws = torch.stack([_to_uniform(_extend(prefix, j)) for j in range(2 * a - 1)], dim=-1)
    return draws.sort(dim=-1).values[..., a - 1]
