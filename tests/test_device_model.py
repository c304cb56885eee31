"""Device physics: measured presets, response curves, pulse law, variability and faults."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cim_runtime.device import (
    MEASURED_PRESETS,
    CellPopulation,
    DeviceConfig,
    PulseLaw,
    ResponseConfig,
    VariationConfig,
    load_device_config,
    load_measured_preset,
    make_profile,
    save_device_config,
)
from cim_runtime.device.presets import read_conductance_column
from cim_runtime.device.response import exponential_shape, inverse_exponential_shape
from cim_runtime.errors import ConfigError, DataError

QUIET = VariationConfig(step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0)


def exponential_device(nu_up=2.0, nu_down=3.0, pulses=64.0, variation=QUIET) -> DeviceConfig:
    response = ResponseConfig(kind="exponential", conductance_min_s=1e-3, conductance_max_s=3e-3,
                              nonlinearity_up=nu_up, nonlinearity_down=nu_down, pulses_up=pulses, pulses_down=pulses)
    return DeviceConfig("exp", response, variation=variation)


def nominal_pulses(cells: CellPopulation, count: int, amplitude_v: float, index=np.array([0])) -> list[float]:
    trace = []
    for _ in range(count):
        cells.pulse(index, np.full(index.shape, amplitude_v), np.full(index.shape, 100e-6), 0.0)
        trace.append(float(cells.conductance_s[index][0]))
    return trace


@pytest.mark.parametrize("name", MEASURED_PRESETS)
def test_presets_load_64_pulses_in_siemens(name):
    table = load_measured_preset(name)
    assert table.potentiation_s.size == 64
    assert table.depression_s.size == 64
    assert 1e-3 < table.potentiation_s.min() < table.potentiation_s.max() < 1e-2
    assert table.potentiation_s[-1] > table.potentiation_s[0]
    assert table.depression_s[-1] < table.depression_s[0]


def test_pulse_law_threshold_and_scaling():
    law = PulseLaw(threshold_v=0.5, nominal_amplitude_v=1.0, nominal_width_s=1e-4)
    counts = law.nominal_pulses(np.array([0.4, -0.5, 1.0, -1.5, 1.0]), np.array([1e-4, 1e-4, 1e-4, 1e-4, 2e-4]))
    assert np.allclose(counts, [0.0, 0.0, 1.0, 2.0, 2.0])


def test_pulse_law_exponents():
    law = PulseLaw(threshold_v=0.5, nominal_amplitude_v=1.0, nominal_width_s=1e-4, amplitude_exponent=2.0, width_exponent=0.5)
    assert law.nominal_pulses(np.array([1.5]), np.array([4e-4]))[0] == pytest.approx(4.0 * 2.0)


def test_nominal_pulses_walk_the_measured_curve():
    profile = replace(make_profile("Non_spikes_1"), variation=QUIET)
    cells = CellPopulation(profile, 1, np.random.default_rng(0))
    table = load_measured_preset("Non_spikes_1")
    cells.conductance_s[0] = table.potentiation_s[0]
    assert np.allclose(nominal_pulses(cells, 10, 1.0), table.potentiation_s[1:11], rtol=1e-9)


def test_depression_follows_its_own_curve():
    profile = replace(make_profile("C1D1"), variation=QUIET)
    cells = CellPopulation(profile, 1, np.random.default_rng(0))
    table = load_measured_preset("C1D1")
    cells.conductance_s[0] = table.depression_s[7]  # a strictly falling stretch of the curve
    assert nominal_pulses(cells, 1, -1.0)[0] == pytest.approx(table.depression_s[8], rel=1e-9)


def test_exponential_shape_inverts_for_extreme_nonlinearity():
    u = np.linspace(0, 1, 101)
    for nu in (-10.0, -1.0, 0.0, 1e-9, 0.5, 10.0, 50.0):
        shape = exponential_shape(u, nu)
        assert np.all(np.isfinite(shape))
        assert shape[0] == pytest.approx(0.0, abs=1e-12)
        assert shape[-1] == pytest.approx(1.0)
        invertible = shape < 1 - 1e-9
        assert np.allclose(inverse_exponential_shape(shape[invertible], nu), u[invertible], atol=1e-6)
        assert np.all(np.isfinite(inverse_exponential_shape(shape, nu)))


@pytest.mark.parametrize("nu", [0.0, 3.0, -3.0, 10.0])
def test_exponential_device_crosses_window_in_its_pulse_count(nu):
    cells = CellPopulation(exponential_device(nu_up=nu, nu_down=nu), 1, np.random.default_rng(0))
    cells.conductance_s[0] = 1e-3
    trace = nominal_pulses(cells, 64, 1.0)
    assert trace[-1] == pytest.approx(3e-3)
    assert trace[31] == pytest.approx(1e-3 + 2e-3 * float(exponential_shape(32 / 64, nu)), rel=1e-9)
    assert np.all(np.diff(trace) >= 0)


def test_soft_bounds_approach_the_bound():
    response = ResponseConfig(kind="soft-bounds", conductance_min_s=1e-3, conductance_max_s=2e-3, step_fraction_up=0.1, step_fraction_down=0.2)
    cells = CellPopulation(DeviceConfig("soft", response, variation=QUIET), 1, np.random.default_rng(0))
    cells.conductance_s[0] = 1e-3
    trace = nominal_pulses(cells, 3, 1.0)
    assert trace == pytest.approx([1.1e-3, 1.19e-3, 1.271e-3])
    down = nominal_pulses(cells, 1, -1.0)
    assert down[0] == pytest.approx(1e-3 + 0.271e-3 * 0.8)


def test_linear_step_is_linear_and_clipped():
    response = ResponseConfig(kind="linear-step", conductance_min_s=0.0, conductance_max_s=1e-3, pulses_up=10, pulses_down=10)
    cells = CellPopulation(DeviceConfig("lin", response, variation=QUIET), 1, np.random.default_rng(0))
    cells.conductance_s[0] = 0.0
    assert nominal_pulses(cells, 12, 1.0) == pytest.approx([1e-4 * min(k, 10) for k in range(1, 13)])


def test_identical_and_rising_schemes_differ():
    cells = CellPopulation(exponential_device(nu_up=0.0), 2, np.random.default_rng(0))
    cells.conductance_s[:] = 1e-3
    for step in range(10):
        cells.pulse(np.array([0, 1]), np.array([1.0, 0.8 + 0.05 * step]), np.full(2, 100e-6), 0.0)
    identical, rising = cells.conductance_s
    assert identical == pytest.approx(1e-3 + 10 * 2e-3 / 64)
    assert rising > identical


def test_stuck_cells_ignore_pulses():
    variation = replace(QUIET, stuck_min_fraction=0.25, stuck_max_fraction=0.25)
    cells = CellPopulation(exponential_device(variation=variation), 4000, np.random.default_rng(1))
    stuck_min = cells.stuck == 1
    stuck_max = cells.stuck == 2
    assert 0.2 < stuck_min.mean() < 0.3
    assert 0.2 < stuck_max.mean() < 0.3
    index = np.arange(4000)
    cells.pulse(index, np.full(4000, 2.0), np.full(4000, 1e-3), 0.0)
    cells.pulse(index, np.full(4000, -0.8), np.full(4000, 1e-4), 0.0)
    assert np.all(cells.conductance_s[stuck_min] == 1e-3)
    assert np.all(cells.conductance_s[stuck_max] == 3e-3)


def test_drift_relaxes_toward_bottom_over_time():
    variation = replace(QUIET, drift_nu_mean=0.05, drift_t0_s=1.0)
    cells = CellPopulation(exponential_device(variation=variation), 1, np.random.default_rng(0))
    cells.conductance_s[0] = 2e-3
    cells.pulse(np.array([0]), np.array([0.6]), np.array([1e-9]), 0.0)
    programmed = cells.conductance_at(np.array([0]), 0.0)[0]
    later = cells.conductance_at(np.array([0]), 999.0)[0]
    assert later == pytest.approx(1e-3 + (programmed - 1e-3) * 1000.0**-0.05)


def test_wear_out_sticks_cells_at_top():
    variation = replace(QUIET, endurance_cycles=5, endurance_sigma_dtod=0.0)
    cells = CellPopulation(exponential_device(variation=variation), 1, np.random.default_rng(0))
    index = np.array([0])
    for _ in range(5):
        nominal_pulses(cells, 1, 1.0, index)
        nominal_pulses(cells, 1, -1.0, index)
    assert cells.stuck is None or cells.stuck[0] == 0
    nominal_pulses(cells, 1, 1.0, index)
    assert cells.stuck[0] == 2
    assert nominal_pulses(cells, 3, -2.0, index)[-1] == 3e-3


def test_spread_of_every_parameter_is_drawn_per_cell():
    variation = replace(QUIET, conductance_min_sigma_dtod=0.05, conductance_max_sigma_dtod=0.05, nonlinearity_sigma_dtod=0.5, step_sigma_dtod=0.2)
    cells = CellPopulation(exponential_device(variation=variation), 2000, np.random.default_rng(2))
    assert np.std(cells.range_min_s) == pytest.approx(0.05 * 2e-3, rel=0.1)
    assert np.std(cells.range_max_s) == pytest.approx(0.05 * 2e-3, rel=0.1)
    assert np.std(cells.curve.nu_up) == pytest.approx(0.5, rel=0.1)
    assert np.std(np.log(cells.step_factor)) == pytest.approx(0.2, rel=0.1)
    index = np.arange(2000)
    cells.pulse(index, np.full(2000, 1.0), np.full(2000, 1e-4), 0.0)
    assert np.all(np.isfinite(cells.conductance_s))


def test_device_file_round_trip(tmp_path):
    config = exponential_device(variation=replace(QUIET, drift_nu_mean=0.01, endurance_cycles=1e5))
    save_device_config(config, tmp_path / "device.toml")
    assert load_device_config(tmp_path / "device.toml") == config
    table = make_profile("C4D1")
    save_device_config(table, tmp_path / "table.toml")
    assert load_device_config(tmp_path / "table.toml") == table
    assert make_profile(str(tmp_path / "table.toml")) == table


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('name = "x"\n', "[response] table is missing"),
        ('[response]\nkind = "exponential"\nconductance_min_s = 2e-3\nconductance_max_s = 2e-3\n', "conductance range"),
        ('[response]\nkind = "exponential"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\npulses_up = 0\n', "pulses_up=0"),
        ('[response]\nkind = "exponential"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\nnonlinearity_up = nan\n', "nonlinearity_up=nan"),
        ('[response]\nkind = "magic"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\n', "response kind"),
        ('[response]\nkind = "table"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\npotentiation_s = [1e-3]\ndepression_s = [2e-3, 1e-3]\n', "at least 2 values"),
        ('[response]\nkind = "linear-step"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\ncolour = 1\n', "unknown key(s) colour"),
        ('[response]\nkind = "linear-step"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\n[variation]\nread_sigma_rel = -1\n', "read_sigma_rel=-1"),
        ('[response]\nkind = "linear-step"\nconductance_min_s = 1e-3\nconductance_max_s = 2e-3\n[law_up]\nthreshold_v = 2.0\n', "threshold_v=2.0"),
        ("this is = = not toml", "not valid TOML"),
    ],
)
def test_invalid_device_file_is_rejected(tmp_path, text, fragment):
    path = tmp_path / "device.toml"
    path.write_text(text)
    with pytest.raises((ConfigError, DataError), match=fragment.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_device_config(path)


def test_window_is_reachable_from_both_directions():
    profile = make_profile("C1D1")
    cells = CellPopulation(profile, 1, np.random.default_rng(0))
    table = load_measured_preset("C1D1")
    low, high = cells.window_s()
    assert low == pytest.approx(max(table.potentiation_s.min(), table.depression_s.min()))
    assert high == pytest.approx(min(table.potentiation_s.max(), table.depression_s.max()))


def test_unknown_profile_names_the_choices():
    with pytest.raises(ConfigError, match="C4D1"):
        make_profile("C2D2")


def test_missing_device_file_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        make_profile(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "contains no values"), ("0.001\nabc\n", "line 2"), ("0.001\nnan\n", "not a finite"), ("\n\n", "contains no values")],
)
def test_bad_table_file_is_rejected(tmp_path, content, fragment):
    path = tmp_path / "table.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        read_conductance_column(path)


def test_endurance_infinite_by_default():
    assert math.isinf(VariationConfig().endurance_cycles)


def test_threshold_spread_is_drawn_per_cell():
    variation = replace(QUIET, threshold_sigma_dtod_v=0.1)
    cells = CellPopulation(exponential_device(variation=variation), 4000, np.random.default_rng(3))
    assert np.std(cells.threshold_shift_v) == pytest.approx(0.1, rel=0.1)
    index = np.arange(4000)
    cells.conductance_s[:] = 1e-3
    cells.pulse(index, np.full(4000, 0.55), np.full(4000, 1e-4), 0.0)
    moved = cells.conductance_s > 1e-3
    assert np.all(moved == (cells.threshold_shift_v < 0.05))
