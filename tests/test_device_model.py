"""Table-driven device physics and the measured presets."""

from __future__ import annotations

import numpy as np
import pytest

from cim_runtime.device import MEASURED_PRESETS, PulseLaw, TableDeviceModel, load_measured_preset, make_profile
from cim_runtime.device.model import DeviceProfile
from cim_runtime.device.presets import read_conductance_column
from cim_runtime.errors import ConfigError, DataError


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


def test_nominal_pulses_walk_the_measured_curve():
    table = load_measured_preset("Non_spikes_1")
    profile = DeviceProfile(table, step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0)
    model = TableDeviceModel(profile)
    rng = np.random.default_rng(0)
    conductance = np.array([table.potentiation_s[0]])
    walked = []
    for _ in range(10):
        conductance = model.apply_pulses(conductance, np.array([1.0]), np.array([1e-4]), np.array([1.0]), rng)
        walked.append(conductance[0])
    assert np.allclose(walked, table.potentiation_s[1:11], rtol=1e-9)


def test_depression_follows_its_own_curve():
    table = load_measured_preset("C1D1")
    profile = DeviceProfile(table, step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0)
    model = TableDeviceModel(profile)
    start = np.array([table.depression_s[7]])  # a strictly falling stretch of the curve
    after = model.apply_pulses(start, np.array([-1.0]), np.array([1e-4]), np.array([1.0]), np.random.default_rng(0))
    assert after[0] == pytest.approx(table.depression_s[8], rel=1e-9)


def test_cells_saturate_at_curve_ends():
    model = TableDeviceModel(make_profile("ideal"))
    rng = np.random.default_rng(0)
    top = np.array([model.conductance_max_s])
    assert model.apply_pulses(top, np.array([3.0]), np.array([1e-3]), np.array([1.0]), rng)[0] == pytest.approx(top[0])
    bottom = np.array([model.conductance_min_s])
    assert model.apply_pulses(bottom, np.array([-3.0]), np.array([1e-3]), np.array([1.0]), rng)[0] == pytest.approx(bottom[0])


def test_window_is_reachable_from_both_directions():
    model = TableDeviceModel(make_profile("C1D1"))
    table = load_measured_preset("C1D1")
    assert model.conductance_min_s == pytest.approx(max(table.potentiation_s.min(), table.depression_s.min()))
    assert model.conductance_max_s == pytest.approx(min(table.potentiation_s.max(), table.depression_s.max()))


def test_unknown_profile_names_the_choices():
    with pytest.raises(ConfigError, match="C4D1"):
        make_profile("C2D2")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "contains no values"), ("0.001\nabc\n", "line 2"), ("0.001\nnan\n", "not a finite"), ("\n\n", "contains no values")],
)
def test_bad_table_file_is_rejected(tmp_path, content, fragment):
    path = tmp_path / "table.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        read_conductance_column(path)


def test_missing_table_file_is_rejected(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_conductance_column(tmp_path / "absent.txt")
