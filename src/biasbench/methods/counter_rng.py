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

import math

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
    return _uniform_block(hash_keys(*keys), 0, 2 * a - 1).sort(dim=-1).values[..., a - 1]


GAMMA_TRIES = 8
"""Proposals per Gamma draw in :func:`log_gamma`. Marsaglia-Tsang accepts at least 95 % of proposals for
shapes >= 1, so all 8 fail with probability below 0.05^8 = 4e-11; such a draw takes the mode instead."""


def _uniform_block(prefix: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """``count`` uniforms per element, the j-th the hash of ``prefix``'s keys extended by ``first + j``."""
    return torch.stack([_to_uniform(_extend(prefix, first + j)) for j in range(count)], dim=-1)


def _log_gamma_from(shape: float, prefix: torch.Tensor, first: int) -> torch.Tensor:
    """log of a Gamma(``shape``, 1) draw per element of ``prefix``, from the uniforms ``first`` ...
    ``first + 3 * GAMMA_TRIES`` (see :func:`log_gamma`)."""
    boost = shape < 1
    s = shape + 1.0 if boost else float(shape)
    d = s - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    u = _uniform_block(prefix, first, 3 * GAMMA_TRIES).unflatten(-1, (GAMMA_TRIES, 3))
    z = torch.sqrt(-2.0 * torch.log(u[..., 0])) * torch.cos((2.0 * math.pi) * u[..., 1])  # Box-Muller normals
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(1e-30))
    accept = (v > 0) & (torch.log(u[..., 2]) < 0.5 * z * z + d - d * v + d * log_v)
    first_ok = torch.argmax(accept.to(torch.uint8), dim=-1, keepdim=True)  # the first accepted proposal
    chosen = torch.where(accept.any(-1), log_v.gather(-1, first_ok).squeeze(-1), torch.zeros_like(log_v[..., 0]))
    out = math.log(d) + chosen
    if boost:  # Gamma(a) = Gamma(a + 1) * U^(1/a)
        out = out + torch.log(_to_uniform(_extend(prefix, first + 3 * GAMMA_TRIES))) / shape
    return out


def log_gamma(shape: float, *keys: torch.Tensor | int) -> torch.Tensor:
    """log of Gamma(``shape``, 1) draws for any ``shape`` > 0, one per element of the broadcast keys.

    Marsaglia and Tsang (2000) with a fixed number of proposals (:data:`GAMMA_TRIES`), so the work has a static
    shape (no data-dependent loop: it runs under vmap and in a captured CUDA graph): a proposal is
    ``d v`` with ``d = s - 1/3``, ``v = (1 + z / sqrt(9 d))^3`` for a standard normal z (Box-Muller), accepted when
    ``v > 0`` and ``log u < z^2 / 2 + d - d v + d log v``; the first accepted proposal is the draw. A shape below 1
    draws Gamma(shape + 1) and multiplies by ``U^(1/shape)``. Returned as a log, which keeps tiny shapes (Gamma(0.2)
    is below 1e-30 about once in a million draws) finite in float32."""
    if not shape > 0:
        raise ValueError(f"log_gamma needs a positive shape, got {shape!r}")
    return _log_gamma_from(shape, hash_keys(*keys), 0)


def beta(a: float, b: float, *keys: torch.Tensor | int) -> torch.Tensor:
    """Beta(a, b) draws for any a, b > 0, one per element of the broadcast keys: ``G_a / (G_a + G_b)`` for
    independent Gamma draws, computed as ``sigmoid(log G_a - log G_b)`` (:func:`log_gamma`; the two use disjoint
    uniforms of the same keys). Mixup's Beta(0.2, 0.2) puts most of its mass near 0 and 1, which this keeps."""
    if not (a > 0 and b > 0):
        raise ValueError(f"beta needs positive a and b, got {a!r}, {b!r}")
    prefix = hash_keys(*keys)
    first_b = 3 * GAMMA_TRIES + 1
    return torch.sigmoid(_log_gamma_from(a, prefix, 0) - _log_gamma_from(b, prefix, first_b))


def permutation(n: int, *keys: torch.Tensor | int) -> torch.Tensor:
    """A uniformly random permutation of ``range(n)`` for the keys: the order of n uniforms ``uniform(*keys, i)``
    (ties, at 24 bits, are about n^2 / 2^25 likely and only break the uniformity slightly)."""
    return torch.argsort(uniform(*keys, torch.arange(n, device=_device_of(keys))))


def _device_of(keys) -> torch.device:
    for k in keys:
        if isinstance(k, torch.Tensor):
            return k.device
    return torch.device("cpu")


class CounterDraws:
    """Mixin for a method whose loss function draws counter-based numbers: the per-run tensors ``rng_seed`` (the
    run's seed) and ``rng_step`` (steps taken: the draws' counter), which the loss reads from ``t`` and advances
    by returning ``{"rng_step": step + 1}`` in its updates; the counter is kept in the checkpoint. List it before
    :class:`~biasbench.methods.base.Method` and call :meth:`init_counter` in ``__init__``."""

    tensor_names = ("rng_seed", "rng_step")

    def init_counter(self) -> None:
        self.rng_seed = torch.tensor(self.info.seed, dtype=torch.int64, device=self.device)
        self.rng_step = torch.zeros((), dtype=torch.int64, device=self.device)

    def extra_state(self):
        return {"rng_step": self.rng_step}

    def load_extra_state(self, state):
        if "rng_step" in state:
            self.rng_step = state["rng_step"].to(self.device)
