"""The ArrayDriver contract, exercised on the simulator and on the serial driver talking to the board emulator."""

from __future__ import annotations

import numpy as np
import pytest

from cim_runtime.driver import SimulatorDriver, open_driver
from cim_runtime.errors import CimError, ConfigError, LimitError
from firmware_protocol.emulator import start_emulator
from firmware_protocol.firmware import CountingSimulator


@pytest.fixture(params=["sim", "serial"])
def make_driver(request):
    """Open a backend with a simulator of the given profile and geometry, directly or behind the board emulator."""
    servers = []

    def make(profile, **geometry):
        if request.param == "sim":
            return SimulatorDriver(profile, **geometry)
        server = start_emulator(CountingSimulator(profile, **geometry))
        servers.append(server)
        return open_driver(server.url)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def driver(make_driver):
    with make_driver("C4D1", rows=16, cols=12, arrays=3, seed=7) as opened:
        yield opened


def test_info_reports_geometry_and_limits(driver):
    info = driver.info()
    assert (info.arrays, info.rows, info.cols) == (3, 16, 12)
    assert 0 < info.conductance_min_s < info.conductance_max_s
    assert info.pulse_width_min_s < info.pulse_width_max_s
    assert info.read_voltage_max_v < info.pulse_amplitude_max_v
    assert info.compliance_max_a > 0
    assert "analog_mvm" in info.capabilities


def test_read_shapes(driver):
    assert driver.read(np.array([0, 1, 2]), np.array([3, 4, 5]), array=1).shape == (3,)
    assert driver.read_row(2, array=2).shape == (12,)
    assert driver.read_array(0).shape == (16, 12)


def test_read_accepts_per_cell_array_index(driver):
    values = driver.read(np.array([0, 0]), np.array([0, 0]), array=np.array([0, 2]))
    assert values.shape == (2,)


def test_potentiation_raises_and_depression_lowers(driver):
    rows, cols = np.arange(5), np.arange(5)
    before = driver.read(rows, cols)
    driver.pulse(rows, cols, 1.5, 100e-6)
    after_up = driver.read(rows, cols)
    assert np.all(after_up > before)
    driver.pulse(rows, cols, -1.5, 100e-6)
    assert np.all(driver.read(rows, cols) < after_up)


def test_pulse_below_threshold_changes_nothing(make_driver):
    with make_driver("ideal", rows=4, cols=4, arrays=1) as ideal:
        before = ideal.read_array()
        ideal.pulse(np.arange(4), np.arange(4), 0.4, 100e-6)
        assert np.array_equal(ideal.read_array(), before)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda d: d.pulse([0], [0], 3.5, 1e-4), "amplitude_v=3.5"),
        (lambda d: d.pulse([0], [0], -3.5, 1e-4), "amplitude_v=-3.5"),
        (lambda d: d.pulse([0], [0], 0.0, 1e-4), "amplitude_v=0"),
        (lambda d: d.pulse([0], [0], 1.0, 1.0), "width_s=1"),
        (lambda d: d.pulse([0], [0], 1.0, 1e-12), "width_s=1e-12"),
        (lambda d: d.pulse([0], [0], 1.0, 1e-4, compliance_a=5.0), "compliance_a=5"),
        (lambda d: d.read([0], [0], read_voltage_v=1.0), "read_voltage_v=1"),
        (lambda d: d.read([16], [0]), "row=16"),
        (lambda d: d.read([0], [12]), "col=12"),
        (lambda d: d.read([0], [0], array=3), "array=3"),
        (lambda d: d.mvm(np.full(16, 0.5)), "read voltage=0.5"),
    ],
)
def test_request_outside_limits_is_rejected(driver, call, fragment):
    before = driver.read_array(0, read_voltage_v=0.1)
    with pytest.raises(LimitError, match=fragment.replace(".", r"\.")):
        call(driver)
    assert np.allclose(driver.read_array(0), before, rtol=0.02)


def test_rejected_pulse_leaves_every_cell_unchanged(make_driver):
    with make_driver("ideal", rows=4, cols=4, arrays=1) as ideal:
        before = ideal.read_array()
        with pytest.raises(LimitError):
            ideal.pulse(np.array([0, 1]), np.array([0, 1]), np.array([1.0, 9.0]), 1e-4)
        assert np.array_equal(ideal.read_array(), before)


def test_mvm_matches_conductance_product(make_driver):
    with make_driver("ideal", rows=8, cols=6, arrays=1) as ideal:
        ideal.pulse(np.arange(6), np.arange(6), 2.0, 1e-3)
        voltages = np.linspace(-0.2, 0.2, 8)
        expected = voltages @ ideal.read_array()
        assert np.allclose(ideal.mvm(voltages), expected, rtol=1e-12)
        assert ideal.mvm(np.stack([voltages, voltages])).shape == (2, 6)


def test_close_is_idempotent_and_blocks_use(driver):
    driver.close()
    driver.close()
    assert driver.closed
    with pytest.raises(ConfigError, match="closed"):
        driver.read([0], [0])


def test_same_seed_reproduces_reads():
    def run(seed):
        with open_driver(f"sim://?rows=8&cols=8&arrays=1&seed={seed}") as sim:
            sim.pulse(np.arange(8), np.arange(8), 1.2, 1e-4)
            return sim.read_array()

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sim://?colour=red", "unknown option"),
        ("sim://?rows=abc", "not an integer"),
        ("sim://?rows=0", "rows=0"),
        ("sim://?profile=C9D9", "unknown device profile"),
        ("warp://", "unknown backend scheme"),
        ("no-scheme", "has no scheme"),
        ("sim://?seed=1&seed=2", "repeats"),
    ],
)
def test_bad_backend_url_is_rejected(url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_driver(url)


def test_errors_share_one_root():
    assert issubclass(LimitError, CimError)
    assert issubclass(ConfigError, ValueError)


def test_cell_addressed_twice_in_one_pulse_is_rejected(driver):
    before = driver.read_array(0, read_voltage_v=0.1)
    with pytest.raises(ConfigError, match="addressed twice"):
        driver.pulse(np.array([0, 1, 0]), np.array([2, 3, 2]), 1.0, 1e-4)
    assert np.allclose(driver.read_array(0), before, rtol=0.02)
    driver.pulse(np.array([0, 1]), np.array([2, 3]), 1.0, 1e-4)
