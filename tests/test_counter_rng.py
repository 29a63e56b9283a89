"""Counter-based draws (LISA's and mixup's mixing weights, mixup's permutations): the hash is lowbias32,
uniforms, Gamma and Beta draws have their distributions, and the same keys give the same numbers under vmap as
one by one."""
import numpy as np
import pytest
import torch
from torch.func import vmap

from scipy import stats

from biasbench.methods.counter_rng import beta, hash32, log_gamma, permutation, symmetric_beta, uniform


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
    for draw in (lambda s, t: symmetric_beta(2, s, t, pos), lambda s, t: beta(0.2, 0.2, s, t, pos),
                 lambda s, t: permutation(8, s, t)):
        batched = vmap(draw)(seeds, steps)
        for r in range(3):
            assert torch.equal(batched[r], draw(seeds[r], steps[r]))
        assert not torch.equal(batched[0], batched[1])


def _cdf_gap(sample: torch.Tensor, cdf, grid) -> float:
    """The largest gap between the sample's empirical CDF and ``cdf`` on ``grid``."""
    x = np.sort(sample.double().numpy())
    return float(np.abs(np.searchsorted(x, grid, side="right") / len(x) - cdf(grid)).max())


@pytest.mark.parametrize("a,b", [(0.2, 0.2), (0.5, 3.0), (2.0, 2.0), (5.0, 0.7)])
def test_beta_draws_follow_the_beta_distribution(a, b):
    """Any shapes, including mixup's Beta(0.2, 0.2) (mass piled at 0 and 1): the empirical CDF of 40,000 draws
    is within 0.012 of scipy's on a grid inside (0, 1) (a Kolmogorov-Smirnov bound at about p = 0.001; a wrong
    shape or a Gamma draw that ignored its rejections is off by far more). Float32 rounds a draw within 6e-8 of
    1 to 1.0 (1.9 % of Beta(0.2, 0.2)'s), so the grid stays inside (0, 1) rather than testing the whole line."""
    x = beta(a, b, 11, torch.arange(40_000))
    assert bool(((x >= 0) & (x <= 1)).all())
    grid = np.linspace(0.001, 0.999, 999)
    assert _cdf_gap(x, stats.beta(a, b).cdf, grid) < 0.012
    assert _cdf_gap(beta(a, b, 12, torch.arange(40_000)), stats.beta(a + 0.3, b).cdf, grid) > 0.02  # the test can fail


@pytest.mark.parametrize("shape", [0.2, 1.0, 3.5])
def test_gamma_draws_follow_the_gamma_distribution(shape):
    g = log_gamma(shape, 5, torch.arange(40_000)).exp()
    grid = np.quantile(stats.gamma(shape).rvs(20_000, random_state=0), np.linspace(0.01, 0.99, 99))
    assert _cdf_gap(g, stats.gamma(shape).cdf, grid) < 0.012
    with pytest.raises(ValueError):
        log_gamma(0.0, 1)


def test_permutations_are_uniform():
    """Each draw is a permutation; over 20,000 keys the element at each place is uniform over the 8; a batch of
    keys gives the permutations one by one."""
    perms = permutation(8, 3, torch.arange(20_000)[:, None])  # keys broadcast: 20,000 permutations at once
    assert bool((perms.sort(dim=1).values == torch.arange(8)).all())
    counts = torch.stack([torch.bincount(perms[:, i], minlength=8) for i in range(8)])
    assert counts.min() > 2500 * 0.9 and counts.max() < 2500 * 1.1
    assert torch.equal(perms[5], permutation(8, 3, 5)) and not torch.equal(permutation(8, 3, 0), permutation(8, 4, 0))
