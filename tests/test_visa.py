"""The VISA backend through pyvisa: pyvisa-py against the SCPI bench emulator on loopback, and pyvisa-sim."""

from __future__ import annotations

import gc
import re
import socket
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest

from cim_runtime.cli import main
from cim_runtime.driver import open_driver
from cim_runtime.driver.visa import ComplianceReachedError
from cim_runtime.driver.visa_emulator import BenchEmulator
from cim_runtime.errors import ConfigError, DeviceReportedError, DeviceTimeoutError, LimitError, TransportError
from cim_runtime.mapping import CellTargets
from cim_runtime.programming import write_verify

ROWS, COLS = 6, 5


@pytest.fixture
def bench(tmp_path):
    with BenchEmulator(rows=ROWS, cols=COLS, seed=3) as emulator:
        emulator.path = emulator.bench_file(tmp_path / "bench.toml", timeout_s=0.5)
        yield emulator


@pytest.fixture
def driver(bench):
    with open_driver(f"visa://?bench={bench.path}") as opened:
        yield opened


def eventually(condition, within_s: float = 3.0) -> bool:
    """Wait until ``condition()`` holds: a closing driver sends its last commands without waiting for replies."""
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def bench_is_safe(bench) -> bool:
    smu = bench.instruments["smu"]
    return smu.voltage_v[1] == 0.0 and not any(smu.output.values()) and not bench.instruments["switch"].closed


def edited_bench(bench, name: str, edit) -> Path:
    """Write a copy of the emulator's bench file, changed by ``edit`` (text to text), beside it."""
    path = bench.path.with_name(name)
    path.write_text(edit(bench.path.read_text()))
    return path


def grid():
    return np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")


def test_reads_match_the_cells(bench, driver):
    rows, cols = grid()
    measured = driver.read(rows, cols)
    assert measured.shape == (ROWS, COLS)
    truth = bench.simulator.true_conductance_s(0)
    read_sigma = bench.simulator.profile.variation.read_sigma_rel
    assert np.all(np.abs(measured / truth - 1) < 5 * read_sigma + 1e-9)
    # The SMU was back at 0 V and the switches open after the reads.
    assert bench.instruments["smu"].voltage_v[1] == 0.0
    assert not bench.instruments["switch"].closed


def test_pulses_move_cells_each_way(bench, driver):
    rows, cols = grid()
    before = bench.simulator.true_conductance_s(0).copy()
    driver.pulse(rows[:3], cols[:3], 1.5, 1e-4)
    driver.pulse(rows[3:], cols[3:], -1.5, 1e-4)
    after = bench.simulator.true_conductance_s(0)
    window = driver.info().window_s
    assert np.all(after[:3] >= before[:3])
    assert np.all(after[3:] <= before[3:])
    assert (after[:3] - before[:3]).mean() > 1e-3 * window
    assert (before[3:] - after[3:]).mean() > 1e-3 * window


def test_one_pulse_per_row_and_setting(bench, driver):
    rows, cols = grid()
    start = bench.command_count
    driver.pulse(rows, cols, np.where(cols < 2, 1.0, -1.0), 1e-4)
    recent = list(bench.received)[start - bench.command_count:]
    triggers = [command for role, command in recent if command == "*TRG"]
    assert len(triggers) == 2 * ROWS


def test_floating_lines_add_sneak_currents(bench, tmp_path):
    path = edited_bench(bench, "floating.toml", lambda text: text.replace('unselected = "ground"', 'unselected = "float"'))
    rows, cols = grid()
    truth = bench.simulator.true_conductance_s(0)
    with open_driver(f"visa://?bench={path}") as floating:
        measured = floating.read(rows, cols)
    # Each reading adds paths through three other cells in series, so every cell reads far too high.
    assert np.all(measured > 2 * truth)


def test_keithley_2400_bench(tmp_path):
    # One channel cannot hold the unselected lines, so the emulated array has selectors (no sneak paths).
    with BenchEmulator(rows=3, cols=3, seed=4, smu_family="keithley-2400") as emulator:
        assert not emulator.sneak_paths
        path = emulator.bench_file(tmp_path / "k2400.toml", timeout_s=0.5)
        with open_driver(f"visa://?bench={path}") as driver:
            assert "MODEL 2400" in driver.info().identity
            measured = driver.read([0, 1, 2], [2, 1, 0])
            truth = emulator.simulator.true_conductance_s(0)[[0, 1, 2], [2, 1, 0]]
            assert np.all(np.abs(measured / truth - 1) < 5 * emulator.simulator.profile.variation.read_sigma_rel)
            assert emulator.instruments["smu"].elements == "CURR"


def test_write_verify_programs_cells(bench, driver):
    info = driver.info()
    rng = np.random.default_rng(0)
    rows, cols = (values.ravel() for values in grid())
    targets = CellTargets(np.zeros_like(rows), rows, cols, rng.uniform(info.conductance_min_s, info.conductance_max_s, rows.size))
    result = write_verify(driver, targets, progress=False)
    assert result.in_tolerance.all()
    truth = bench.simulator.true_conductance_s(0)[rows, cols]
    margin = 5 * bench.simulator.profile.variation.read_sigma_rel * info.conductance_max_s
    assert np.all(np.abs(truth - targets.target_s) <= result.tolerance_s + margin)


@pytest.mark.parametrize("request_call, message", [
    (lambda d: d.pulse([0], [0], 3.5, 1e-4), "amplitude_v=3.5"),
    (lambda d: d.pulse([0], [0], 1.0, 1e-7), "width_s=1e-07"),
    (lambda d: d.read([0], [0], read_voltage_v=0.5), "read_voltage_v=0.5"),
    (lambda d: d.read([ROWS], [0]), f"row={ROWS}"),
])
def test_limits_are_checked_before_sending(bench, driver, request_call, message):
    sent = bench.command_count
    with pytest.raises(LimitError, match=message):
        request_call(driver)
    assert bench.command_count == sent


def test_force_channel_compliance_is_reported(bench, tmp_path):
    # Each cell passes about 0.15 to 0.34 mA at 0.1 V, and the force channel feeds a whole row of 5.
    path = edited_bench(bench, "row.toml", lambda text: re.sub(r"compliance_max_a = .*", "compliance_max_a = 0.0007", text))
    with open_driver(f"visa://?bench={path}") as driver:
        with pytest.raises(ComplianceReachedError, match="SMU channel 1"):
            driver.read([0], [0])


def test_failed_setup_turns_outputs_off(bench):
    # The pulse generator rejects its last set-up command, after the SMU outputs are on.
    generator = bench.instruments["pulse"]
    generator.commands = tuple(entry for entry in generator.commands if entry[0] != re.escape("TRIG:SOUR BUS"))
    with pytest.raises(DeviceReportedError, match="TRIG:SOUR BUS"):
        open_driver(f"visa://?bench={bench.path}")
    assert eventually(lambda: bench_is_safe(bench))


def test_line_on_two_buses_is_a_short(bench):
    bench.handle("switch", "ROUT:CLOS (@1101,1301)")
    bench.handle("smu", ":OUTP1 ON")
    bench.handle("smu", ":SOUR1:VOLT 0.1")
    bench.handle("smu", ":MEAS:CURR? (@1)")
    code, text = bench.instruments["smu"].errors[-1]
    assert code == -200
    assert "short" in text


def test_pulse_compliance_rejected(bench, driver):
    sent = bench.command_count
    with pytest.raises(ConfigError, match="compliance_a=0.001 cannot be applied"):
        driver.pulse([0], [0], 1.0, 1e-4, compliance_a=1e-3)
    assert bench.command_count == sent


def test_repeated_cell_in_one_pulse_call_is_rejected(bench, driver):
    sent = bench.command_count
    with pytest.raises(ConfigError, match="twice"):
        driver.pulse([1, 1], [2, 2], 1.0, 1e-4)
    assert bench.command_count == sent


def test_mvm_says_what_to_use_instead(driver):
    assert "analog_mvm" not in driver.info().capabilities
    with pytest.raises(ConfigError, match="readback mode"):
        driver.mvm(np.zeros(ROWS))


def test_silent_instrument_times_out(bench, driver):
    bench.muted = {"smu", "pulse", "switch"}
    started = time.monotonic()
    with pytest.raises(DeviceTimeoutError, match=r"within 0\.5 s.*timeout_s"):
        driver.read([0], [0])
    assert time.monotonic() - started < 5


def test_timeout_leaves_bench_safe_and_closes(bench, driver):
    # The SMU stops replying while it forces the read voltage.
    bench.muted = {"smu"}
    with pytest.raises(DeviceTimeoutError, match="closed itself"):
        driver.read([0], [0])
    assert driver.closed
    assert eventually(lambda: bench_is_safe(bench))
    bench.muted = set()
    with open_driver(f"visa://?bench={bench.path}") as again:
        assert again.read([0], [0]).shape == (1,)


def test_interrupt_leaves_bench_safe_and_closes(bench, driver, monkeypatch):
    # Ctrl-C arrives while the SMU forces the read voltage.
    def interrupted(command):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver._smu, "query_float", interrupted)
    with pytest.raises(KeyboardInterrupt):
        driver.read([0], [0])
    assert driver.closed
    assert eventually(lambda: bench_is_safe(bench))


def test_dropped_driver_frees_its_instruments(bench):
    driver = open_driver(f"visa://?bench={bench.path}")
    del driver
    gc.collect()
    with open_driver(f"visa://?bench={bench.path}") as again:
        assert again.read([0], [0]).shape == (1,)


def test_refused_pulse_setting_fires_nothing(bench, driver):
    def triggers():
        return sum(1 for _, command in bench.received if command == "*TRG")

    before = triggers()
    bench.instruments["pulse"].errors.append((-222, "Data out of range"))
    with pytest.raises(DeviceReportedError, match="Data out of range"):
        driver.pulse([0], [0], 1.25, 1e-4)
    assert triggers() == before
    # The setting is sent again on the next call, and the pulse goes out.
    driver.pulse([0], [0], 1.25, 1e-4)
    assert triggers() == before + 1
    assert bench.instruments["pulse"].high_v == 1.25


def test_negative_pulse_rests_at_zero(bench, driver):
    driver.pulse([0], [0], -1.5, 2e-4)
    generator = bench.instruments["pulse"]
    assert (generator.high_v, generator.low_v, generator.inverted) == (0.0, -1.5, True)
    assert generator.period_s > generator.width_s == 2e-4


def test_instrument_errors_are_raised_with_their_source(bench, driver):
    bench.instruments["switch"].errors.append((-310, "System error"))
    with pytest.raises(DeviceReportedError, match=r"System error \(the switch matrix at TCPIP0::127\.0\.0\.1"):
        driver.read([0], [0])


def test_compliance_is_reported(bench, tmp_path):
    # The cells conduct above 1 mS, so at 0.1 V they pass more than 0.1 mA.
    path = edited_bench(bench, "low.toml", lambda text: re.sub(r"compliance_max_a = .*", "compliance_max_a = 0.0001", text))
    with open_driver(f"visa://?bench={path}") as driver:
        with pytest.raises(ComplianceReachedError, match="row 0, column 0 at 0.1 V reached the compliance of 0.0001 A"):
            driver.read([0], [0])


def test_close_leaves_the_bench_safe(bench):
    driver = open_driver(f"visa://?bench={bench.path}")
    driver.pulse([0], [0], 1.0, 1e-4)
    driver.close()
    driver.close()
    assert not bench.instruments["smu"].output[1]
    assert not bench.instruments["smu"].output[2]
    assert not bench.instruments["pulse"].output
    assert not bench.instruments["switch"].closed
    with pytest.raises(ConfigError, match="closed"):
        driver.read([0], [0])


def test_instrument_opened_twice_rejected(bench, driver):
    with pytest.raises(ConfigError, match="already open"):
        open_driver(f"visa://?bench={bench.path}")
    # Another spelling of the same resource is the same instrument.
    path = edited_bench(bench, "spelled.toml", lambda text: text.replace("TCPIP0::", "TCPIP::"))
    with pytest.raises(ConfigError, match="already open"):
        open_driver(f"visa://?bench={path}")


def test_instrument_busy_with_another_client(bench):
    host, port = bench.resource("smu").split("::")[1:3]
    with socket.create_connection((host, int(port))):
        time.sleep(0.1)
        with pytest.raises(TransportError, match="SMU"):
            open_driver(f"visa://?bench={bench.path}")


def test_miswired_bench_warns_of_open_circuit(bench, tmp_path, caplog):
    path = edited_bench(bench, "miswired.toml", lambda text: text.replace(f"first_col_line = {ROWS + 1}", f"first_col_line = {ROWS + 20}"))
    with open_driver(f"visa://?bench={path}") as driver:
        assert np.all(driver.read([0, 1, 2, 3], [0, 1, 2, 3]) == 0)
    assert "like an open circuit" in caplog.text


def test_wrong_instrument_is_named(bench, tmp_path):
    smu, switch = bench.resource("smu"), bench.resource("switch")
    path = edited_bench(bench, "wrong.toml", lambda text: text.replace(smu, "SWAP").replace(switch, smu).replace("SWAP", switch))
    with pytest.raises(ConfigError, match="identifies as .*34980A.*not a keysight-b2900"):
        open_driver(f"visa://?bench={path}")


def test_unreachable_instrument(bench, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = edited_bench(bench, "gone.toml", lambda text: text.replace(bench.resource("pulse"), f"TCPIP0::127.0.0.1::{port}::SOCKET"))
    with pytest.raises(TransportError, match="pulse generator"):
        open_driver(f"visa://?bench={path}")


@pytest.mark.parametrize("family, port", [("keysight-b2900", 5025), ("keithley-2400", 5028)])
def test_pyvisa_sim_bench(tmp_path, family, port):
    """Every command the backend sends is one the pyvisa-sim instruments know, with values in their ranges."""
    library = files("cim_runtime.driver").joinpath("visa_sim.yaml")
    path = tmp_path / "sim.toml"
    text = SIM_BENCH.format(library=f"{library}@sim")
    path.write_text(text.replace('"TCPIP0::127.0.0.1::5025::SOCKET"\nfamily = "keysight-b2900"',
                                 f'"TCPIP0::127.0.0.1::{port}::SOCKET"\nfamily = "{family}"'))
    with open_driver(f"visa://?bench={path}") as driver:
        assert "PYVISA-SIM" in driver.info().identity
        # The simulated SMU always measures 10 uA.
        np.testing.assert_allclose(driver.read([0, 3], [1, 2], read_voltage_v=0.2), [5e-5, 5e-5])
        driver.pulse([0, 1, 1], [0, 0, 3], [2.0, -2.0, -2.0], [1e-6, 1e-4, 1e-4])


def test_pyvisa_sim_file_beside_bench(tmp_path):
    library = files("cim_runtime.driver").joinpath("visa_sim.yaml")
    (tmp_path / "instruments.yaml").write_text(library.read_text())
    path = tmp_path / "sim.toml"
    path.write_text(SIM_BENCH.format(library="instruments.yaml@sim"))
    with open_driver(f"visa://?bench={path}") as driver:
        assert "PYVISA-SIM" in driver.info().identity


def test_cli_info_and_emulator_arguments(bench, capsys, tmp_path):
    assert main(["info", "--backend", f"visa://?bench={bench.path}"]) == 0
    assert "34980A" in capsys.readouterr().out
    for arguments, message in ((["--rows", "60", "--cols", "60"], "together at most 99"),
                               (["--timeout-s", "inf"], "--timeout-s inf is invalid"),
                               (["--bench-file", str(tmp_path)], "is a folder")):
        assert main(["emulate-bench", *arguments]) == 2
        assert message in capsys.readouterr().err
    assert main(["info", "--backend", f"visa://host/x?bench={bench.path}"]) == 2
    assert "as an option only" in capsys.readouterr().err


SIM_BENCH = """
[array]
rows = 4
cols = 4
conductance_min_s = 2.0e-5
conductance_max_s = 1.2e-4
read_voltage_max_v = 0.3
pulse_amplitude_max_v = 3.0
pulse_width_min_s = 1.0e-6
pulse_width_max_s = 1.0e-2
compliance_max_a = 1.0e-3

[visa]
library = "{library}"
timeout_s = 1.0

[smu]
resource = "TCPIP0::127.0.0.1::5025::SOCKET"
family = "keysight-b2900"

[pulse]
resource = "TCPIP0::127.0.0.1::5026::SOCKET"
family = "keysight-33500b"

[switch]
resource = "TCPIP0::127.0.0.1::5027::SOCKET"
family = "keysight-34980a"
first_row_line = 1
first_col_line = 5
"""


def test_characterization_runs_through_the_bench(bench, tmp_path):
    output = tmp_path / "characterize"
    arguments = ["characterize", "--backend", f"visa://?bench={bench.path}", "--routines", "pulse-train,read-noise",
                 "--cells", "4", "--pulses", "8", "--cycles", "1", "--output", str(output), "--no-progress"]
    assert main(arguments) == 0
    assert (output / "pulse_train.csv").stat().st_size > 0
    assert (output / "read_noise.png").exists()
