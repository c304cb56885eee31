"""The counter-based Gaussian generator of the compiled ADC loop: statistics, keys and reproducibility."""

from __future__ import annotations

import math

import torch

from cim_runtime.analog.counter_noise import counter_normal, draw_key


def draw(seed: int, shape=(1000, 1000)) -> torch.Tensor:
    key = draw_key(torch.Generator().manual_seed(seed), torch.device("cpu"))
    return counter_normal(torch.empty(shape), key).double().flatten()


def test_values_follow_a_standard_normal():
    values = draw(0)
    assert abs(float(values.mean())) < 0.005
    assert abs(float(values.std()) - 1) < 0.005
    # Two-sided tail fractions of a standard normal beyond 1, 2 and 3 sigma.
    for sigma, expected in ((1, 0.3173), (2, 0.0455), (3, 0.0027)):
        fraction = float((values.abs() > sigma).double().mean())
        assert abs(fraction - expected) < 4 * math.sqrt(expected / values.numel()) + 1e-4
    assert abs(float((values**4).mean()) - 3) < 0.05
    assert bool(torch.isfinite(values).all())


def test_neighbours_and_keys_are_uncorrelated():
    values, other = draw(0), draw(1)
    for shift in (1, 2, 1000):
        assert abs(float(torch.corrcoef(torch.stack([values[:-shift], values[shift:]]))[0, 1])) < 0.005
    assert abs(float(torch.corrcoef(torch.stack([values, other]))[0, 1])) < 0.005


def test_key_fixes_values_when_compiled():
    assert torch.equal(draw(3), draw(3))
    key = draw_key(torch.Generator().manual_seed(4), torch.device("cpu"))
    like = torch.empty(7, 33, 5)
    eager = counter_normal(like, key)
    compiled = torch.compile(counter_normal, dynamic=True)(like, key)
    assert torch.allclose(eager, compiled, rtol=1e-5, atol=1e-5)


def test_distribution_function_matches_the_normal():
    values = draw(5, shape=(2000, 1000)).sort().values
    levels = torch.linspace(-4, 4, 161, dtype=torch.float64)
    empirical = torch.searchsorted(values, levels).double() / values.numel()
    normal = 0.5 * (1 + torch.erf(levels / math.sqrt(2)))
    # Kolmogorov-Smirnov bound for 2 million values at a false-alarm rate far below 0.1 %.
    assert float((empirical - normal).abs().max()) < 0.0015
