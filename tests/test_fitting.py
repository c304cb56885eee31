"""Device fitting on measured data, characterization through the driver, and the round trip between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cim_runtime.characterize import PulseTrainSettings, pulse_train, run_characterization, select_cells
from cim_runtime.device import DeviceConfig, ResponseConfig, VariationConfig, make_profile, save_device_config
from cim_runtime.device.fitting import fit_device
from cim_runtime.device.readers import read_measurements
from cim_runtime.driver import SimulatorDriver, open_driver
from cim_runtime.errors import ConfigError, DataError

PRESETS = Path(__file__).resolve().parents[1] / "cim_runtime" / "device" / "presets"
DEVICES = Path(__file__).resolve().parents[2] / "shared" / "data" / "devices"
KIM = ["C1D1", "C4D1", "C1D8", "Non_spikes_1", "Non_spikes_2"]


def fit_preset(name: str):
    return fit_device(read_measurements([PRESETS / f"{name}_potentiation.txt", PRESETS / f"{name}_depression.txt"]))


@pytest.mark.parametrize("name", KIM)
def test_kim_tables_are_reproduced(name):
    fit = fit_preset(name)
    assert fit.nrmse["up"] < 0.03
    assert fit.nrmse["down"] < 0.03
    assert np.isfinite([fit.nonlinearity_up, fit.nonlinearity_down]).all()


def test_non_spikes_2_is_most_linear_and_symmetric():
    fits = {name: fit_preset(name) for name in KIM}
    nonlinearity = {name: (abs(f.nonlinearity_up) + abs(f.nonlinearity_down)) / 2 for name, f in fits.items()}
    asymmetry = {name: abs(f.asymmetry_measured) for name, f in fits.items()}
    assert min(nonlinearity, key=nonlinearity.get) == "Non_spikes_2"
    assert min(asymmetry, key=asymmetry.get) == "Non_spikes_2"
    assert sorted(nonlinearity, key=nonlinearity.get) == ["Non_spikes_2", "Non_spikes_1", "C1D1", "C4D1", "C1D8"]


@pytest.fixture
def devices() -> Path:
    if not DEVICES.is_dir():
        pytest.skip(f"device data not found at {DEVICES}")
    return DEVICES


def test_crosssim_ramps_fit_exponential(devices):
    data = read_measurements([devices / "crosssim" / "set_currents.csv", devices / "crosssim" / "reset_currents.csv"], 0.1)
    assert (len(data.up), len(data.down)) == (39, 40)
    fit = fit_device(data)
    assert fit.model == "exponential"
    assert fit.nrmse["up"] < 0.05
    assert fit.nrmse["down"] < 0.05
    assert 1.5e-3 < fit.conductance_min_s < fit.conductance_max_s < 2.6e-3
    assert 0 < fit.step_sigma_ctoc < 1


def test_gong2018_fits_after_mapping(devices):
    data = read_measurements([devices / "gong2018" / "pulse_response.csv"])
    with pytest.raises(DataError, match="map-to-s"):
        fit_device(data)
    fit = fit_device(data.mapped_onto(1e-6, 1e-5))
    # The single 1000-pulse ramp of each direction scatters by about 5 % of its range from pulse to
    # pulse, so even the monotonic table of it stays near that floor.
    assert fit.nrmse["up"] < 0.06
    assert fit.nrmse["down"] < 0.06
    assert fit.nrmse_exponential["up"] < 0.07


def exponential_file(tmp_path: Path, nu_up: float, nu_down: float) -> Path:
    response = ResponseConfig(kind="exponential", conductance_min_s=1e-3, conductance_max_s=3e-3,
                              nonlinearity_up=nu_up, nonlinearity_down=nu_down, pulses_up=64, pulses_down=64)
    path = tmp_path / "known.toml"
    save_device_config(DeviceConfig("known", response, variation=VariationConfig(step_sigma_dtod=0.05)), path)
    return path


@pytest.mark.parametrize(("nu_up", "nu_down"), [(2.0, 3.0), (-1.5, 4.0)])
def test_characterize_then_fit_recovers_parameters(tmp_path, nu_up, nu_down):
    device = exponential_file(tmp_path, nu_up, nu_down)
    with open_driver(f"sim://?profile={device}&arrays=1&rows=32&cols=32&seed=4") as driver:
        run_characterization(driver, tmp_path / "run", routines=["pulse-train", "read-noise"], cells=16,
                             train=PulseTrainSettings(pulses=64, cycles=3), progress=False)
    data = read_measurements([tmp_path / "run" / "pulse_train.csv", tmp_path / "run" / "read_noise.csv"])
    fit = fit_device(data, model="exponential")
    assert fit.conductance_min_s == pytest.approx(1e-3, rel=0.10)
    assert fit.conductance_max_s == pytest.approx(3e-3, rel=0.10)
    assert fit.nonlinearity_up == pytest.approx(nu_up, rel=0.10)
    assert fit.nonlinearity_down == pytest.approx(nu_down, rel=0.10)
    assert fit.step_sigma_ctoc == pytest.approx(0.05, rel=0.10)
    assert fit.read_sigma_rel == pytest.approx(0.002, rel=0.10)
    # Without the read-noise file, the 80 pairs of reads between consecutive trains give read noise
    # with a standard error near 8 %.
    train_only = fit_device(read_measurements([tmp_path / "run" / "pulse_train.csv"]), model="exponential")
    assert train_only.read_sigma_rel == pytest.approx(0.002, rel=0.25)


def preset_under_test(name: str, tmp_path: Path) -> tuple[str, DeviceConfig]:
    """Return the simulator profile argument and the configuration it stands for."""
    if name == "C4D1":
        return name, make_profile(name)
    response = ResponseConfig(kind="exponential", conductance_min_s=1e-3, conductance_max_s=3e-3,
                              nonlinearity_up=2.0, nonlinearity_down=3.0, pulses_up=64, pulses_down=64)
    config = DeviceConfig("exponential", response)
    save_device_config(config, tmp_path / "exponential.toml")
    return str(tmp_path / "exponential.toml"), config


@pytest.mark.parametrize("name", ["C4D1", "exponential"])
def test_round_trip_recovers_preset(tmp_path, name):
    profile, config = preset_under_test(name, tmp_path)
    # 256 cells keep the sampling error of the drawn cell-to-cell spread near 4 %, well inside 10 %.
    with open_driver(f"sim://?profile={profile}&arrays=1&rows=64&cols=64&seed=5") as driver:
        run_characterization(driver, tmp_path / "run", routines=["pulse-train", "read-noise"], cells=256, progress=False)
    data = read_measurements([tmp_path / "run" / "pulse_train.csv", tmp_path / "run" / "read_noise.csv"])
    fit = fit_device(data)
    response, variation = config.response, config.variation
    assert fit.model == ("table" if response.kind == "table" else "exponential")
    assert fit.conductance_min_s == pytest.approx(response.conductance_min_s, rel=0.10)
    assert fit.conductance_max_s == pytest.approx(response.conductance_max_s, rel=0.10)
    if response.kind == "table":
        # The fitted table starts with the read before the first pulse, then has one value per pulse like the preset.
        for fitted, preset in ((fit.fitted_up, response.potentiation_s), (fit.fitted_down, response.depression_s)):
            deviation = fitted[1:len(preset)] - np.asarray(preset[1:])
            assert np.sqrt(np.mean(deviation**2)) / response.window_s < 0.10
    else:
        assert fit.nonlinearity_up == pytest.approx(response.nonlinearity_up, rel=0.10)
        assert fit.nonlinearity_down == pytest.approx(response.nonlinearity_down, rel=0.10)
    assert fit.spread_dtod["step_sigma_dtod"] == pytest.approx(variation.step_sigma_dtod, rel=0.10)
    assert fit.step_sigma_ctoc == pytest.approx(variation.step_sigma_ctoc, rel=0.10)
    assert fit.read_sigma_rel == pytest.approx(variation.read_sigma_rel, rel=0.10)


def test_crosssim_simulation_matches_spread(devices):
    from cim_runtime.device.calibration import calibrate_ramp_variation
    from cim_runtime.device.fit_check import SPREAD_WINDOWS

    data = read_measurements([devices / "crosssim" / "set_currents.csv", devices / "crosssim" / "reset_currents.csv"], 0.1)
    fit = fit_device(data)
    assert fit.window_wander["min_sigma_rel"] > 0
    assert 0.5 < fit.window_wander["correlation"] < 1
    fit, check = calibrate_ramp_variation(data, fit)
    assert check["nrmse_mean_up"] < 0.05
    assert check["nrmse_mean_down"] < 0.05
    assert 0.9 < check["spread_ratio_up"] < 1.1
    assert 0.9 < check["spread_ratio_down"] < 1.1
    # The model cannot tell the end of a potentiation ramp from the start of the next depression ramp,
    # while the measured spread differs there (1.7 against 1.1 % of the range), so those two sit further out.
    for label in ("up", "down"):
        for name, _, _ in SPREAD_WINDOWS:
            assert 0.85 < check[f"spread_ratio_{label}_{name}"] < 1.15, f"{label} {name}"


def test_window_wander_continuous_correlated():
    variation = VariationConfig(step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0,
                                window_min_sigma_ctoc=0.05, window_max_sigma_ctoc=0.02, window_correlation_ctoc=0.9)
    response = ResponseConfig(kind="linear-step", conductance_min_s=1e-3, conductance_max_s=3e-3, pulses_up=8, pulses_down=8)
    cells = np.arange(64)
    rows = np.zeros(64, int)
    with SimulatorDriver(DeviceConfig("wander", response, variation=variation), rows=1, cols=64, arrays=1, seed=3) as driver:
        bottoms, tops, jumps = [], [], []
        for _ in range(30):
            for sign, ends in ((1, tops), (-1, bottoms)):
                before = driver.read(rows, cells)
                driver.pulse(rows, cells, sign * 1.5, 1e-4)
                jumps.append(np.abs(driver.read(rows, cells) - before).max())
                for _ in range(11):
                    driver.pulse(rows, cells, sign * 1.5, 1e-4)
                ends.append(driver.read(rows, cells))
    bottoms, tops = np.array(bottoms), np.array(tops)
    # A 1.5 V pulse counts as 2 nominal pulses, a quarter of the 8-pulse range. A reversal adds no jump of
    # its own, so the first step of a ramp stays below a quarter of a range stretched by a few wander sigmas.
    assert max(jumps) < 0.3 * 2e-3
    assert np.std(bottoms - bottoms.mean(axis=0)) == pytest.approx(0.05 * 2e-3, rel=0.3)
    assert np.std(tops - tops.mean(axis=0)) == pytest.approx(0.02 * 2e-3, rel=0.3)
    offsets = bottoms - bottoms.mean(axis=0)
    lag_one = np.sum(offsets[:-1] * offsets[1:]) / np.sum(offsets**2)
    # Consecutive bottoms lie two reversals apart.
    assert lag_one == pytest.approx(0.81, abs=0.15)


def test_range_redraw_moves_ramp_ends():
    variation = VariationConfig(step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0, range_sigma_ctoc=0.05)
    response = ResponseConfig(kind="linear-step", conductance_min_s=1e-3, conductance_max_s=3e-3, pulses_up=8, pulses_down=8)
    with SimulatorDriver(DeviceConfig("cycling", response, variation=variation), rows=1, cols=4, arrays=1, seed=1) as driver:
        tops = []
        for _ in range(20):
            for _ in range(12):
                driver.pulse(np.zeros(4, int), np.arange(4), 1.5, 1e-4)
            tops.append(driver.read([0], [0])[0])
            for _ in range(12):
                driver.pulse(np.zeros(4, int), np.arange(4), -1.5, 1e-4)
    assert np.std(tops) == pytest.approx(0.05 * 2e-3, rel=0.5)


def test_extreme_nonlinearity_gives_finite_fit(tmp_path):
    device = exponential_file(tmp_path, 10.0, 10.0)
    with SimulatorDriver(str(device), rows=4, cols=4, arrays=1) as driver:
        result = pulse_train(driver, select_cells(driver, 8), PulseTrainSettings(pulses=64, cycles=2), progress=False)
    assert np.isfinite(result.conductance_s).all()
    path = tmp_path / "train.csv"
    from cim_runtime.characterize.reports import write_pulse_train

    write_pulse_train(tmp_path, result)
    fit = fit_device(read_measurements([path.with_name("pulse_train.csv")]))
    assert np.isfinite([fit.nonlinearity_up, fit.nonlinearity_down, fit.nrmse["up"], fit.nrmse["down"]]).all()


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("ramp_set.csv", "", "is empty"),
        ("ramp_set.csv", "rmp1,rmp2\n1e-3,\n", "no ramp of at least 2"),
        ("flat_potentiation.txt", "1e-3\n1e-3\n1e-3\n", "need both"),
        ("weird.csv", "1,2,3\n4,5,6\n", "3 unnamed columns"),
        ("mystery.txt", "1e-3\n2e-3\n", "cannot tell the pulse direction"),
        ("ramp_set.csv", "rmp1\n1e-3\nabc\n", "line 3"),
    ],
)
def test_bad_measurement_files_are_rejected(tmp_path, name, content, fragment):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=fragment):
        read_measurements([tmp_path / name])


def test_ragged_ramps_are_averaged(tmp_path):
    (tmp_path / "a_set.csv").write_text("r1,r2\n1,1\n2,2\n3,3\n4,\n")
    (tmp_path / "a_reset.csv").write_text("r1,r2\n4,4\n3,3\n2,2\n1,1\n")
    data = read_measurements([tmp_path / "a_set.csv", tmp_path / "a_reset.csv"])
    assert [ramp.size for ramp in data.up] == [4, 3]
    fit = fit_device(data.mapped_onto(1e-3, 2e-3))
    assert np.isfinite(fit.nonlinearity_up)


def test_flat_data_has_no_range(tmp_path):
    (tmp_path / "f_set.csv").write_text("r1\n1e-3\n1e-3\n1e-3\n")
    (tmp_path / "f_reset.csv").write_text("r1\n1e-3\n1e-3\n1e-3\n")
    with pytest.raises(DataError, match="no conductance range"):
        fit_device(read_measurements([tmp_path / "f_set.csv", tmp_path / "f_reset.csv"]))


def test_unknown_model_is_rejected():
    with pytest.raises(ConfigError, match="model"):
        fit_device(read_measurements([PRESETS / "C4D1_potentiation.txt", PRESETS / "C4D1_depression.txt"]), model="magic")


def test_table_preset_round_trip_matches_cell_spread(tmp_path):
    from cim_runtime.device.fit_check import simulate_like

    with open_driver("sim://?profile=C4D1&arrays=1&rows=32&cols=32&seed=2") as driver:
        run_characterization(driver, tmp_path, routines=["pulse-train"], cells=16, progress=False)
    data = read_measurements([tmp_path / "pulse_train.csv"])
    fit = fit_device(data)
    assert fit.model == "table"
    assert fit.spread_dtod["step_sigma_dtod"] > 0
    assert "conductance_min_sigma_dtod" not in fit.spread_dtod
    check = simulate_like(data, fit)
    assert check["cells"] == 16
    assert check["nrmse_mean_up"] < 0.03
    assert check["nrmse_mean_down"] < 0.03
    assert 0.5 < check["spread_ratio_up"] < 1.5
    assert 0.5 < check["spread_ratio_down"] < 1.5
