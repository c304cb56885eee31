"""Pulse updates and noise injection against the simulator's numpy device model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cim_runtime.device import make_profile
from cim_runtime.device.cells import CellPopulation
from cim_runtime.device.config import DeviceConfig, ResponseConfig, VariationConfig
from cim_runtime.errors import ConfigError
from cim_runtime.training import DevicePairs, NoiseInjector, PulseSettings, PulseUpdater, WeightNoise
from cim_runtime.training.torch_response import build_torch_curve

QUIET = VariationConfig(step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0)


def exponential_device(nu_up: float, nu_down: float, variation: VariationConfig = QUIET, **spans) -> DeviceConfig:
    response = ResponseConfig(kind="exponential", conductance_min_s=1e-6, conductance_max_s=1e-4,
                              nonlinearity_up=nu_up, nonlinearity_down=nu_down, pulses_up=32, pulses_down=48, **spans)
    return DeviceConfig(name=f"exp-{nu_up}-{nu_down}", response=response, variation=variation)


def soft_bounds_device() -> DeviceConfig:
    response = ResponseConfig(kind="soft-bounds", conductance_min_s=1e-6, conductance_max_s=1e-4,
                              step_fraction_up=0.04, step_fraction_down=0.07)
    return DeviceConfig(name="soft", response=response, variation=QUIET)


def linear_step_device() -> DeviceConfig:
    response = ResponseConfig(kind="linear-step", conductance_min_s=1e-6, conductance_max_s=1e-4, pulses_up=20, pulses_down=40)
    return DeviceConfig(name="linear", response=response, variation=QUIET)


DEVICES = {
    "C4D1": lambda: make_profile("C4D1"),
    "C1D8": lambda: make_profile("C1D8"),
    "Non_spikes_2": lambda: make_profile("Non_spikes_2"),
    "exponential 3/-2": lambda: exponential_device(3.0, -2.0),
    "exponential 10/10 with spans": lambda: exponential_device(10.0, 10.0, up_span_s=(1e-5, 9e-5), down_span_s=(9.5e-5, 2e-6)),
    "soft-bounds": soft_bounds_device,
    "linear-step": linear_step_device,
}


@pytest.mark.parametrize("name", DEVICES)
def test_torch_curve_matches_numpy(name):
    device = DEVICES[name]()
    numpy_curve = device.response.build()
    torch_curve = build_torch_curve(device.response)
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.05, 1.05, 2000)
    pulses = np.where(rng.random(2000) < 0.1, 0.0, rng.uniform(0, 70, 2000))

    up_torch = torch_curve.up(torch.as_tensor(x), torch.as_tensor(pulses)).numpy()
    down_torch = torch_curve.down(torch.as_tensor(x), torch.as_tensor(pulses)).numpy()

    np.testing.assert_allclose(up_torch, numpy_curve.up(x, pulses), atol=1e-9)
    np.testing.assert_allclose(down_torch, numpy_curve.down(x, pulses), atol=1e-9)
    assert torch_curve.reachable() == pytest.approx(numpy_curve.reachable())


@pytest.mark.parametrize("name", ["C4D1", "exponential 3/-2"])
def test_pairs_follow_cell_population(name):
    """n identical pulses at once in training move a device as n single pulses in the simulator."""
    device = DEVICES[name]().without_variation()
    pairs = DevicePairs(torch.tensor([0.3, 0.1, 0.0]), device, PulseSettings(rounding="deterministic", pulse_limit=20),
                        torch.Generator().manual_seed(0))
    population = CellPopulation(device, 3, np.random.default_rng(0))
    window = device.response
    population.conductance_s[:] = window.conductance_min_s + pairs.x_plus.numpy() * window.window_s
    counts = np.array([5, 12, 3])

    pairs.apply(torch.tensor(counts * pairs.step_w, dtype=torch.float64))
    for pulse in range(counts.max()):
        index = np.flatnonzero(counts > pulse)
        population.pulse(index, np.full(index.size, 1.0), np.full(index.size, 100e-6), now_s=0.0)

    simulated = window.normalize(population.conductance_s)
    # Measured tables carry flat stretches that pulse-by-pulse interpolation crosses with rounding of ~1e-7.
    np.testing.assert_allclose(pairs.x_plus.numpy(), simulated, atol=1e-6)


def test_pairs_encode_initial_weights():
    weight = torch.tensor([[0.5, -0.25], [0.0, -1.0]])
    pairs = DevicePairs(weight, make_profile("C4D1"), PulseSettings(), torch.Generator().manual_seed(0))

    torch.testing.assert_close(pairs.weight().float(), weight)
    assert bool(((pairs.x_plus == pairs.low) | (pairs.x_minus == pairs.low)).all())


def test_negative_update_moves_minus_device():
    pairs = DevicePairs(torch.tensor([-0.5, 0.5]), make_profile("ideal"), PulseSettings(rounding="deterministic"),
                        torch.Generator().manual_seed(0))
    plus_before, minus_before = pairs.x_plus.clone(), pairs.x_minus.clone()

    pairs.apply(torch.tensor([-2 * pairs.step_w, -2 * pairs.step_w]))

    assert pairs.x_minus[0] > minus_before[0]
    assert pairs.x_plus[0] == plus_before[0]
    assert pairs.x_plus[1] < plus_before[1]
    assert pairs.x_minus[1] == minus_before[1]


def test_deterministic_rounding_and_limit():
    pairs = DevicePairs(torch.zeros(5), make_profile("ideal"), PulseSettings(rounding="deterministic", pulse_limit=3),
                        torch.Generator().manual_seed(0))
    change = torch.tensor([0.4, 0.6, -1.6, 7.0, -90.0], dtype=torch.float64) * pairs.step_w

    counts, stats = pairs.pulse_counts(change)

    assert counts.tolist() == [0.0, 1.0, -2.0, 3.0, -3.0]
    assert stats.capped == 2
    assert stats.pulses == 9


def test_stochastic_rounding_is_unbiased():
    pairs = DevicePairs(torch.zeros(20000), make_profile("ideal"), PulseSettings(rounding="stochastic"),
                        torch.Generator().manual_seed(0))

    counts, _ = pairs.pulse_counts(torch.full((20000,), 0.3 * pairs.step_w, dtype=torch.float64))

    assert set(counts.unique().tolist()) == {0.0, 1.0}
    assert float(counts.mean()) == pytest.approx(0.3, abs=0.02)


def step_spread(scheme: str) -> float:
    """Return the relative spread of one-pulse steps taken from positions across a nonlinear window."""
    device = exponential_device(5.0, 5.0)
    weight = torch.linspace(0.0, 0.9, 50)
    pairs = DevicePairs(weight, device, PulseSettings(scheme=scheme, rounding="deterministic", weight_range_factor=2.0,
                                                      amplitude_max_v=10.0), torch.Generator().manual_seed(0))
    before = pairs.weight().clone()
    pairs.apply(torch.full((50,), pairs.step_w, dtype=torch.float64))
    steps = (pairs.weight() - before)[1:]
    return float(steps.std() / steps.mean())


def test_non_identical_pulses_linearize_steps():
    identical, non_identical = step_spread("identical"), step_spread("non-identical")

    assert identical > 0.1
    assert non_identical < 0.01


@pytest.mark.parametrize("scheme", ["identical", "non-identical"])
def test_extreme_changes_stay_finite(scheme):
    noisy = VariationConfig(step_sigma_dtod=0.3, step_sigma_ctoc=0.5, write_noise_sigma_rel=0.05)
    device = exponential_device(10.0, -10.0, variation=noisy)
    pairs = DevicePairs(torch.randn(1000, generator=torch.Generator().manual_seed(1)), device,
                        PulseSettings(scheme=scheme, pulse_limit=1000), torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(2)

    for _ in range(50):
        change = 1e30 * torch.randn(1000, generator=generator, dtype=torch.float64)
        change[:10] = math.inf
        change[10:20] = -math.inf
        change[20:30] = math.nan
        stats = pairs.apply(change)
        assert stats.non_finite == 30

    assert bool(torch.isfinite(pairs.weight()).all())
    for state in (pairs.x_plus, pairs.x_minus):
        assert float(state.min()) >= 0.0
        assert float(state.max()) <= 1.0


def test_updater_step_keeps_optimizer_for_digital_parameters():
    layer = torch.nn.Linear(4, 3)
    updater = PulseUpdater({"layer": layer}, make_profile("C4D1"), PulseSettings(), seed=0)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    bias_before = layer.bias.detach().clone()
    layer(torch.ones(2, 4)).sum().backward()

    stats = updater.step(optimizer)

    torch.testing.assert_close(layer.bias.detach(), bias_before - 0.5 * 2.0)
    torch.testing.assert_close(layer.weight.detach(), updater.pairs["layer"].weight().float())
    assert stats.weights == 12


def test_pulse_settings_reject_bad_values():
    with pytest.raises(ConfigError, match="pulse scheme"):
        PulseSettings(scheme="random")
    with pytest.raises(ConfigError, match="rounding"):
        PulseSettings(rounding="up")
    with pytest.raises(ConfigError, match="pulse_limit"):
        PulseSettings(pulse_limit=0)


def test_weight_noise_from_device():
    noise = WeightNoise.from_device(make_profile("C4D1"), tolerance_rel=0.03)

    assert noise.levels == 63
    assert noise.sigma_rel == pytest.approx(math.sqrt(2) * math.hypot(0.03 / math.sqrt(3), 0.002 * 9.0 / 8.0), rel=0.1)


def test_weight_noise_quantizes_and_adds_noise():
    weight = torch.linspace(-1.0, 1.0, 10001)
    quantized = WeightNoise(levels=4, sigma_rel=0.0).perturb(weight, torch.Generator().manual_seed(0))
    noisy = WeightNoise(levels=0, sigma_rel=0.1).perturb(weight, torch.Generator().manual_seed(0))

    assert sorted(quantized.unique().tolist()) == [-1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]
    assert float((noisy - weight).std()) == pytest.approx(0.1, rel=0.05)


def test_injector_restores_clean_weights():
    layer = torch.nn.Linear(8, 8)
    clean = layer.weight.detach().clone()
    injector = NoiseInjector({"layer": layer}, WeightNoise(levels=8, sigma_rel=0.2), seed=0)

    with injector.perturbed():
        assert not torch.equal(layer.weight.detach(), clean)
        layer(torch.ones(1, 8)).sum().backward()

    torch.testing.assert_close(layer.weight.detach(), clean)
    assert layer.weight.grad is not None
