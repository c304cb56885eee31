"""The counter-based Gaussian generator of the compiled ADC loop: statistics, keys and reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from cim_runtime.analog.counter_noise import (
    NORMALIZING_POLYNOMIAL,
    counter_normal,
    draw_key,
    fit_normalizing_polynomial,
    sum_distribution,
)


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


def test_equal_keys_still_give_a_standard_normal():
    # The two hashes use different multipliers, so equal keys do not make their bits equal.
    values = counter_normal(torch.empty(1000, 1000), torch.tensor([7, 7], dtype=torch.int32)).double()
    assert abs(float(values.std()) - 1) < 0.005
    assert abs(float((values**4).mean()) - 3) < 0.05


@pytest.mark.parametrize("difference", [1, 5, 1 << 12])
def test_related_keys_uncorrelated(difference):
    key = torch.tensor([0x1234567, -0x7654321], dtype=torch.int32)
    values = counter_normal(torch.empty(1 << 20), key).double()
    related = counter_normal(torch.empty(1 << 20), key ^ difference).double()
    for shifted in (related, related[torch.arange(1 << 20) ^ difference]):
        assert abs(float(torch.corrcoef(torch.stack([values, shifted]))[0, 1])) < 0.006


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


def normalized(t: torch.Tensor) -> torch.Tensor:
    result = torch.zeros_like(t)
    for power, coefficient in enumerate(NORMALIZING_POLYNOMIAL):
        result += coefficient * t ** (2 * power + 1)
    return result


def test_polynomial_is_the_documented_fit():
    fitted = fit_normalizing_polynomial()
    assert torch.allclose(fitted, torch.tensor(NORMALIZING_POLYNOMIAL, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def test_exact_distribution_is_close_to_the_normal():
    t, cdf, density = sum_distribution()
    values = normalized(t)
    assert bool((values.diff() > 0).all()), "the map must keep the order of the sums"
    assert float((cdf - torch.special.ndtr(values)).abs().max()) < 0.0003
    step = float(t[1] - t[0])
    assert abs(float((density * values**2).sum() * step) - 1) < 1e-4
    for sigma in (2.0, 3.0, 4.0):
        tail = float(density[values > sigma].sum() * step)
        normal = float(torch.special.ndtr(torch.tensor(-sigma, dtype=torch.float64)))
        assert abs(tail / normal - 1) < 0.03, (sigma, tail / normal)
    assert 5.0 < float(values.max()) < 5.5
