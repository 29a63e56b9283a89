"""Counter-based draws (LISA's mixing weights): the hash is lowbias32, uniforms and Beta draws have the right
moments, and the same keys give the same numbers under vmap as one by one."""
import numpy as np
import pytest
import torch
from torch.func import vmap

from biasbench.methods.counter_rng import hash32, symmetric_beta, uniform


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_hash_is_lowbias32_without_int64_overflow():
    values = torch.randint(0, 2 ** 32, (2000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    values[:3] = torch.tensor([0, 2 ** 32 - 1, 2 ** 31])  # the ends, where a careless product overflows
    assert [_lowbias32(int(v)) for v in values] == hash32(values).tolist()
    assert len(torch.unique(hash32(torch.arange(1 << 16)))) == 1 << 16  # a bijection


def test_uniforms_and_beta_draws_have_their_moments():
    n = torch.arange(1 << 18)
    u = uniform(3, 7, n)
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01  # neighbouring counters
    assert abs(np.corrcoef(u, uniform(4, 7, n))[0, 1]) < 0.01  # another seed
    for a in (1, 2, 4):
        b = symmetric_beta(a, 3, 7, n)
        var = 1 / (4 * (2 * a + 1))  # Beta(a, a): a^2 / ((2a)^2 (2a + 1))
        assert abs(b.mean() - 0.5) < 0.005 and abs(b.var() - var) < 0.05 * var, a
    with pytest.raises(ValueError):
        symmetric_beta(0, 1, n)


def test_draws_are_the_same_under_vmap_as_per_run():
    seeds, steps = torch.tensor([0, 1, 2]), torch.tensor([5, 5, 9])
    pos = torch.arange(8)
    batched = vmap(lambda s, t: symmetric_beta(2, s, t, pos))(seeds, steps)
    for r in range(3):
        assert torch.equal(batched[r], symmetric_beta(2, seeds[r], steps[r], pos))
    assert not torch.equal(batched[0], batched[1])
