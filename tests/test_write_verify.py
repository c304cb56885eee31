"""Write-verify programming through the simulator driver."""

from __future__ import annotations

import numpy as np
import pytest

from cim_runtime.driver import SimulatorDriver
from cim_runtime.errors import ConfigError
from cim_runtime.mapping import CellTargets
from cim_runtime.device.config import PulseLaw
from cim_runtime.programming import WriteVerifyConfig, config_from_dict, write_verify
from cim_runtime.programming.write_verify import verify_read


def random_targets(driver: SimulatorDriver, count: int, seed: int = 0) -> CellTargets:
    info = driver.info()
    rng = np.random.default_rng(seed)
    flat = rng.choice(info.arrays * info.rows * info.cols, size=count, replace=False)
    array, row, col = np.unravel_index(flat, (info.arrays, info.rows, info.cols))
    target = rng.uniform(info.conductance_min_s, info.conductance_max_s, size=count)
    return CellTargets(array, row, col, target)


@pytest.mark.parametrize("profile", ["ideal", "C4D1", "C1D1", "C1D8", "Non_spikes_1", "Non_spikes_2"])
def test_every_cell_converges(profile):
    with SimulatorDriver(profile, rows=64, cols=64, arrays=2, seed=1) as driver:
        targets = random_targets(driver, 3000)
        result = write_verify(driver, targets, progress=False)
        assert result.in_tolerance.all()
        true_conductance = np.stack([driver.true_conductance_s(a) for a in range(2)])[targets.array, targets.row, targets.col]
        read_margin = 4 * driver.profile.variation.read_sigma_rel * driver.info().conductance_max_s
        assert np.all(np.abs(true_conductance - targets.target_s) <= result.tolerance_s + read_margin)


def test_report_figures():
    with SimulatorDriver("C4D1", rows=32, cols=32, arrays=1, seed=2) as driver:
        summary = write_verify(driver, random_targets(driver, 500), progress=False).summary()
    assert summary["cells"] == 500
    assert summary["fraction_in_tolerance"] == 1.0
    assert summary["failed_cells"] == 0
    assert 1 <= summary["pulses_per_cell_mean"] <= summary["pulses_per_cell_p99"] <= 100
    assert summary["time_s"] > 0


def test_pulse_budget_is_respected_and_failures_reported():
    with SimulatorDriver("C4D1", rows=32, cols=32, arrays=1, seed=3) as driver:
        targets = random_targets(driver, 400)
        result = write_verify(driver, targets, WriteVerifyConfig(max_pulses=3), progress=False)
    assert result.pulses.max() <= 3
    assert result.summary()["failed_cells"] > 0
    assert result.summary()["failed_cells"] == int((~result.in_tolerance).sum())


def test_cells_already_in_band_get_no_pulse():
    with SimulatorDriver("ideal", rows=8, cols=8, arrays=1) as driver:
        rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        current = driver.read_array()
        targets = CellTargets(np.zeros(64, dtype=int), rows.ravel(), cols.ravel(), current.ravel())
        result = write_verify(driver, targets, progress=False)
    assert result.pulses.sum() == 0
    assert result.rounds == 1


def test_ramp_above_backend_limit_is_rejected_before_pulsing():
    with SimulatorDriver("ideal", rows=8, cols=8, arrays=1) as driver:
        before = driver.read_array()
        with pytest.raises(ConfigError, match="max_amplitude_v=5"):
            write_verify(driver, random_targets(driver, 10), WriteVerifyConfig(max_amplitude_v=5.0), progress=False)
        assert np.array_equal(driver.read_array(), before)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"tolerance_rel": 0}, "tolerance_rel"),
        ({"start_amplitude_v": 3.0, "max_amplitude_v": 2.0}, "start_amplitude_v"),
        ({"min_amplitude_v": 0.9}, "min_amplitude_v"),
        ({"reversal_shrink": 1.5}, "reversal_shrink"),
        ({"amplitude_step_v": -0.1}, "amplitude_step_v"),
        ({"max_pulses": -1}, "max_pulses"),
        ({"colour": 1}, "unknown write-verify setting"),
    ],
)
def test_invalid_settings_are_rejected(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        config_from_dict(settings)


def test_seeded_programming_is_reproducible():
    def run():
        with SimulatorDriver("C4D1", rows=16, cols=16, arrays=1, seed=9) as driver:
            return write_verify(driver, random_targets(driver, 200), progress=False).measured_s

    assert np.array_equal(run(), run())


@pytest.mark.parametrize("scheme", ["fixed", "amplitude-ramp", "width-ramp", "adaptive"])
@pytest.mark.parametrize("profile", ["ideal", "C4D1", "Non_spikes_2"])
def test_every_scheme_converges(scheme, profile):
    with SimulatorDriver(profile, rows=64, cols=64, arrays=1, seed=3) as driver:
        targets = random_targets(driver, 2000)
        config = WriteVerifyConfig(scheme=scheme, tolerance_rel=0.02, max_pulses=200)
        result = write_verify(driver, targets, config, progress=False)
    assert result.in_tolerance.mean() >= 0.995
    assert result.pulses.max() <= 200


def test_adaptive_needs_fewer_pulses_than_fixed():
    def mean_pulses(scheme: str) -> float:
        with SimulatorDriver("C4D1", rows=64, cols=64, arrays=1, seed=5) as driver:
            targets = random_targets(driver, 3000)
            result = write_verify(driver, targets, WriteVerifyConfig(scheme=scheme, tolerance_rel=0.02), progress=False)
        assert result.in_tolerance.all()
        return float(result.pulses.mean())

    assert mean_pulses("adaptive") <= 0.5 * mean_pulses("fixed")


def test_adaptive_device_model_saves_pulses():
    def mean_pulses(**model) -> float:
        with SimulatorDriver("C4D1", rows=64, cols=64, arrays=1, seed=5) as driver:
            result = write_verify(driver, random_targets(driver, 3000), WriteVerifyConfig(scheme="adaptive", tolerance_rel=0.02),
                                  progress=False, **model)
        assert result.in_tolerance.all()
        return float(result.pulses.mean())

    assert mean_pulses() < 0.9 * mean_pulses(law=PulseLaw())


def test_absolute_tolerance_replaces_the_relative_one():
    with SimulatorDriver("C4D1", rows=32, cols=32, arrays=1, seed=3) as driver:
        band_s = 0.015 * driver.info().window_s
        result = write_verify(driver, random_targets(driver, 300), WriteVerifyConfig(tolerance_s=band_s), progress=False)
    assert result.tolerance_s == band_s
    assert result.in_tolerance.all()


def test_confirming_reads_cost_reads_but_no_pulses():
    with SimulatorDriver("ideal", rows=8, cols=8, arrays=1) as driver:
        rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
        targets = CellTargets(np.zeros(64, dtype=int), rows.ravel(), cols.ravel(), driver.read_array().ravel())
        result = write_verify(driver, targets, WriteVerifyConfig(confirm_reads=2), progress=False)
    assert result.pulses.sum() == 0
    assert result.rounds == 3


def test_averaged_verify_reads_have_less_noise():
    def spread(config: WriteVerifyConfig) -> float:
        with SimulatorDriver("C4D1", rows=16, cols=16, arrays=1, seed=8) as driver:
            rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
            cells = np.arange(256)
            targets = CellTargets(np.zeros(256, dtype=int), rows.ravel(), cols.ravel(), np.zeros(256))
            reads = verify_read(driver, targets, cells, config)
            return float(np.std((reads - driver.true_conductance_s(0).ravel()) / driver.true_conductance_s(0).ravel()))

    assert spread(WriteVerifyConfig(reads_per_verify=16, discard_reads=2)) < 0.4 * spread(WriteVerifyConfig())


def test_pulse_time_budget_stops_a_cell():
    with SimulatorDriver("C4D1", rows=32, cols=32, arrays=1, seed=3) as driver:
        result = write_verify(driver, random_targets(driver, 300), WriteVerifyConfig(max_cell_time_s=250e-6), progress=False)
    assert result.pulses.max() == 3
    assert (~result.in_tolerance).any()


def test_width_ramp_beyond_backend_limit_is_rejected():
    with SimulatorDriver("ideal", rows=4, cols=4, arrays=1) as driver:
        with pytest.raises(ConfigError, match="pulse width 0.1"):
            write_verify(driver, random_targets(driver, 4), WriteVerifyConfig(scheme="width-ramp", max_width_s=0.1), progress=False)


def test_unknown_scheme_is_rejected():
    with pytest.raises(ConfigError, match="scheme='magic'"):
        config_from_dict({"scheme": "magic"})
