"""The serial driver against the board emulator over a real pty and a loopback TCP socket."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from cim_runtime.driver import SimulatorDriver, open_driver
from cim_runtime.cli import main as cli_main
from cim_runtime.driver.serial import BoardArgumentError, BoardChangedError, LinkGoneError
from cim_runtime.errors import ConfigError, TransportError
from cim_runtime.mapping import CellTargets, ConductanceWindow, map_network
from cim_runtime.programming import WriteVerifyConfig, write_verify
from firmware_protocol.codec import FrameReader, encode_frame
from firmware_protocol.emulator import BoardEmulator, LinkFaults, TcpBoardServer, start_emulator
from firmware_protocol.firmware import BoardFirmware, CountingSimulator
from firmware_protocol.messages import (
    BatchHeader, ErrorCode, ErrorReply, ExecuteHeader, Hello, MessageType, PulseParams, ReadParams, operations,
)

GEOMETRY = {"rows": 16, "cols": 12, "arrays": 3, "seed": 7}


@pytest.fixture
def board(tmp_path):
    """Yield a function that starts an emulator (tcp or pty) and returns its backend URL and counting simulator."""
    servers = []

    def start(transport="tcp", faults=LinkFaults(), options="", profile="C4D1", **geometry):
        simulator = CountingSimulator(profile, **{**GEOMETRY, **geometry})
        link_path = tmp_path / "ttyCIM0" if transport == "pty" else None
        server = start_emulator(simulator, transport=transport, faults=faults, link_path=link_path)
        servers.append(server)
        return server.url + options, simulator

    def stop_all():
        for server in servers:
            server.stop()

    start.stop_all = stop_all
    yield start
    stop_all()


def small_network() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 4))


def network_targets(info) -> CellTargets:
    window = ConductanceWindow(info.conductance_min_s, info.conductance_max_s)
    mapped = map_network(small_network(), window, tile_rows=info.rows, tile_cols=info.cols, array_rows=info.rows, array_cols=info.cols)
    return mapped.targets()


def all_cells(info, array=0):
    rows, cols = np.meshgrid(np.arange(info.rows), np.arange(info.cols), indexing="ij")
    return rows.ravel(), cols.ravel()


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_reads_and_pulses_match_simulator(board, transport):
    url, simulator = board(transport)
    reference = SimulatorDriver("C4D1", **GEOMETRY)
    with open_driver(url) as driver:
        rows, cols = all_cells(driver.info())
        assert np.array_equal(driver.read(rows, cols, array=1), reference.read(rows, cols, array=1))
        driver.pulse(rows, cols, 1.5, 1e-4, array=2)
        reference.pulse(rows, cols, 1.5, 1e-4, array=2)
        assert np.array_equal(driver.read_array(2), reference.read_array(2))
        voltages = np.linspace(-0.2, 0.2, GEOMETRY["rows"])
        assert np.array_equal(driver.mvm(np.stack([voltages, -voltages]), array=2), reference.mvm(np.stack([voltages, -voltages]), array=2))
    assert simulator.pulses_applied == rows.size


def test_info_comes_from_handshake(board):
    url, _ = board()
    with open_driver(url) as driver:
        info = driver.info()
    reference = SimulatorDriver("C4D1", **GEOMETRY).info()
    assert (info.rows, info.cols, info.arrays) == (16, 12, 3)
    assert (info.conductance_min_s, info.conductance_max_s) == (reference.conductance_min_s, reference.conductance_max_s)
    assert info.capabilities == {"batched_pulse", "analog_mvm", "onboard_program"}
    assert info.identity.startswith("serial:CIM-EMU-0001:fw1.")


def test_large_calls_go_through_batch_and_execute(board):
    url, simulator = board(options="?frame_bytes=64")
    reference = SimulatorDriver("C4D1", **GEOMETRY)
    with open_driver(url) as driver:
        rows, cols = all_cells(driver.info())
        amplitudes = np.where(rows % 2, 1.2, -1.4)
        readback = driver.pulse_read(rows, cols, amplitudes, 1e-4)
        reference.pulse(rows, cols, amplitudes, 1e-4)
        assert np.array_equal(readback, reference.read(rows, cols))
        assert driver.counters["bytes_sent"] > rows.size * 22
    assert simulator.pulses_applied == rows.size


def test_write_verify_equals_simulator_with_same_seed(board):
    url, simulator = board()
    with open_driver(url) as driver:
        targets = network_targets(driver.info())
        over_serial = write_verify(driver, targets, WriteVerifyConfig(), progress=False)
    on_simulator = write_verify(SimulatorDriver("C4D1", **GEOMETRY), targets, WriteVerifyConfig(), progress=False)
    assert np.array_equal(over_serial.measured_s, on_simulator.measured_s)
    assert np.array_equal(over_serial.pulses, on_simulator.pulses)
    assert over_serial.rounds == on_simulator.rounds
    assert simulator.pulses_applied == int(over_serial.pulses.sum())


def test_noisy_link_programs_network_without_repeated_pulses(board, caplog):
    faults = LinkFaults(drop_rate=0.005, corrupt_rate=0.005, seed=11)
    url, simulator = board(faults=faults, options="?frame_bytes=96&timeout_s=0.02&retries=60")
    caplog.set_level(logging.WARNING, logger="cim_runtime.driver.serial")
    with open_driver(url) as driver:
        targets = network_targets(driver.info())
        result = write_verify(driver, targets, WriteVerifyConfig(), progress=False)
        counters = driver.counters
    assert result.in_tolerance.all()
    assert simulator.pulses_applied == int(result.pulses.sum())
    assert counters["retransmissions"] > 0
    assert counters["bad_frames"] > 0
    assert any("retransmitting" in record.getMessage() for record in caplog.records)
    reference = write_verify(SimulatorDriver("C4D1", **GEOMETRY), targets, WriteVerifyConfig(), progress=False)
    assert np.array_equal(result.pulses, reference.pulses)


def test_duplicated_and_delayed_bytes_are_survived(board):
    faults = LinkFaults(duplicate_rate=0.005, delay_rate=0.05, delay_s=0.05, seed=2)
    url, simulator = board(faults=faults, options="?frame_bytes=96&timeout_s=0.02&retries=60")
    reference = SimulatorDriver("C4D1", **GEOMETRY)
    with open_driver(url) as driver:
        rows, cols = all_cells(driver.info())
        for amplitude in (1.2, -1.1, 1.4):
            driver.pulse(rows, cols, amplitude, 1e-4, array=1)
            reference.pulse(rows, cols, amplitude, 1e-4, array=1)
        assert np.array_equal(driver.read_array(1), reference.read_array(1))
        assert driver.counters["retransmissions"] > 0
    assert simulator.pulses_applied == 3 * rows.size


def test_spy_url_writes_traffic_dump(board, tmp_path):
    url, _ = board("pty")
    dump = tmp_path / "traffic.txt"
    with open_driver(f"spy://{url.removeprefix('serial://')}?file={dump}") as driver:
        driver.read_row(0)
    text = dump.read_text()
    assert "TX" in text
    assert "RX" in text


def test_reset_in_middle_of_batch_uploads_again(board, caplog):
    url, simulator = board(faults=LinkFaults(reset_at_batch=3), options="?frame_bytes=64&timeout_s=0.1")
    caplog.set_level(logging.WARNING, logger="cim_runtime.driver.serial")
    reference = SimulatorDriver("C4D1", **GEOMETRY)
    with open_driver(url) as driver:
        rows, cols = all_cells(driver.info())
        driver.pulse(rows, cols, 1.3, 1e-4)
        reference.pulse(rows, cols, 1.3, 1e-4)
        assert np.array_equal(driver.read_array(0), reference.read_array(0))
    assert simulator.pulses_applied == rows.size
    assert any("lost a staged batch" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_disconnect_and_return_continues_operation(board, transport, caplog):
    faults = LinkFaults(disconnect_at_frame=4, disconnected_s=0.3)
    url, simulator = board(transport, faults=faults, options="?timeout_s=0.2&reconnect_s=5")
    caplog.set_level(logging.WARNING, logger="cim_runtime.driver.serial")
    reference = SimulatorDriver("C4D1", **GEOMETRY)
    with open_driver(url) as driver:
        rows, cols = all_cells(driver.info())
        for amplitude in (1.1, 1.2, 1.3, -1.2):
            driver.pulse(rows, cols, amplitude, 1e-4)
            reference.pulse(rows, cols, amplitude, 1e-4)
        assert np.array_equal(driver.read_array(0), reference.read_array(0))
        assert driver.counters["reconnects"] >= 1
    assert simulator.pulses_applied == 4 * rows.size
    assert any("reconnected" in record.getMessage() for record in caplog.records)


def test_onboard_program_matches_host_write_verify(board):
    url, simulator = board()
    with open_driver(url) as driver:
        targets = network_targets(driver.info())
        on_board = driver.program(targets, WriteVerifyConfig())
        bytes_on_link = driver.counters["bytes_sent"] + driver.counters["bytes_received"]
    on_host = write_verify(SimulatorDriver("C4D1", **GEOMETRY), targets, WriteVerifyConfig(), progress=False)
    assert np.array_equal(on_board.measured_s, on_host.measured_s)
    assert np.array_equal(on_board.pulses, on_host.pulses)
    assert on_board.rounds == on_host.rounds
    assert on_board.in_tolerance.all()
    assert simulator.pulses_applied == int(on_board.pulses.sum())
    assert bytes_on_link < len(targets) * 40


def test_onboard_program_in_groups_under_byte_faults(board):
    faults = LinkFaults(drop_rate=0.005, corrupt_rate=0.005, seed=5)
    url, simulator = board(faults=faults, options="?frame_bytes=96&timeout_s=0.02&retries=60")
    with open_driver(url) as driver:
        targets = network_targets(driver.info())
        result = driver.program(targets, WriteVerifyConfig(), group_cells=40)
        assert driver.counters["retransmissions"] > 0
    assert len(result.measured_s) == len(targets)
    assert result.in_tolerance.all()
    assert np.all(np.abs(result.measured_s - targets.target_s) <= result.tolerance_s)
    assert simulator.pulses_applied == int(result.pulses.sum())


def test_power_cycled_board_is_reported():
    first = start_emulator(CountingSimulator("C4D1", **GEOMETRY))
    port = first.port
    driver = open_driver(f"{first.url}?timeout_s=0.1&retries=2&reconnect_s=5")
    first.stop()
    # A new firmware instance on the same port draws a new boot id, as a board does after power-up.
    second = TcpBoardServer(BoardEmulator(BoardFirmware(CountingSimulator("C4D1", **GEOMETRY))), port).start()
    try:
        with pytest.raises(BoardChangedError, match="power cycle"):
            driver.read_row(0)
    finally:
        driver.close()
        second.stop()


def test_abort_drops_staged_batch():
    firmware = BoardFirmware(CountingSimulator("ideal", rows=4, cols=4, arrays=1))
    records = np.zeros(2, dtype=operations(4, 4)[MessageType.READ].record).tobytes()
    (ack,) = firmware_exchange(firmware, MessageType.BATCH, 1, BatchHeader(9, 0).pack() + records)
    (abort_ack,) = firmware_exchange(firmware, MessageType.ABORT, 2, b"")
    execute = ExecuteHeader(9, MessageType.READ, len(records)).pack() + ReadParams(0.1).pack()
    (reply,) = firmware_exchange(firmware, MessageType.EXECUTE, 3, execute)
    assert ack.message_type == MessageType.ACK
    assert abort_ack.message_type == MessageType.ACK
    assert reply.message_type == MessageType.ERROR
    assert ErrorReply.unpack_prefix(reply.payload)[0].code == ErrorCode.BATCH_UNKNOWN


def test_board_rejects_repeated_cell(board):
    url, simulator = board()
    with open_driver(url) as driver:
        with pytest.raises(ConfigError, match="addressed twice"):
            driver.pulse(np.array([0, 1, 0]), np.array([2, 3, 2]), 1.0, 1e-4)
    assert simulator.pulses_applied == 0


def test_pty_is_opened_exclusively(board):
    url, _ = board("pty")
    with open_driver(url):
        with pytest.raises(TransportError, match="opening .* failed"):
            open_driver(url)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("socket://127.0.0.1:1?colour=red", "unknown option"),
        ("socket://?timeout_s=1", "socket://HOST:PORT"),
        ("serial://dev/ttyACM0", "three slashes"),
        ("socket://127.0.0.1:1?retries=1.5", "whole number"),
        ("socket://127.0.0.1:1?frame_bytes=8", "frame_bytes=8"),
        ("socket://127.0.0.1", "port from 1 to 65535"),
        ("socket://127.0.0.1:99999", "port from 1 to 65535"),
        ("socket://127.0.0.1:abc", "port from 1 to 65535"),
        ("spy://", "three slashes"),
    ],
)
def test_bad_serial_url_is_rejected(url, fragment):
    with pytest.raises(ConfigError, match=fragment):
        open_driver(url)


def test_vanished_board_fails_after_reconnect_window(board):
    url, _ = board()
    driver = open_driver(url + "?reconnect_s=1&timeout_s=0.2&retries=2")
    board.stop_all()
    outcome = {}

    def read_after_loss() -> None:
        try:
            driver.read_array(0)
        except LinkGoneError as exc:
            outcome["error"] = exc

    # A thread with a deadline, so that a driver that never gives up fails the test instead of hanging it.
    reader = threading.Thread(target=read_after_loss, daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive()
    assert "did not come back within 1 s" in str(outcome.get("error"))
    driver.close()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--tcp", "70000"], "use a port from 1 to 65535"),
    (["--tcp", "0", "--max-payload", "0"], "--max-payload 0 is invalid"),
    (["--pty", "--pty-link", "/nonexistent-folder/link"], "does not exist"),
])
def test_emulate_rejects_bad_settings(arguments, message, capsys):
    assert cli_main(["emulate", *arguments]) == 2
    assert message in capsys.readouterr().err


def test_emulate_reports_a_busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        # A subprocess with a deadline: were the port free after all, the emulator would serve forever.
        finished = subprocess.run([sys.executable, "-m", "cim_runtime.cli", "emulate", "--tcp", str(taken.getsockname()[1])],
                                  capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2
    assert "pick another port" in finished.stderr


def test_missing_port_raises_transport_error(tmp_path):
    with pytest.raises(TransportError, match="opening .* failed"):
        open_driver(f"serial://{tmp_path}/no-such-tty")


def firmware_exchange(firmware: BoardFirmware, kind, seq, payload) -> list:
    reader = FrameReader()
    return [item for frame in firmware.handle(next(iter(reader.feed(encode_frame(kind, seq, payload))))) for item in reader.feed(frame)]


def test_firmware_answers_repeat_from_cache():
    simulator = CountingSimulator("C4D1", rows=4, cols=4, arrays=1)
    firmware = BoardFirmware(simulator)
    records = np.zeros(2, dtype=operations(4, 4)[MessageType.PULSE].record)
    records["col"] = [0, 1]
    records["amplitude_v"] = 1.0
    records["width_s"] = 1e-4
    payload = PulseParams(0.0).pack() + records.tobytes()
    first = firmware_exchange(firmware, MessageType.PULSE, 40, payload)
    again = firmware_exchange(firmware, MessageType.PULSE, 40, payload)
    assert first == again
    assert simulator.pulses_applied == 2
    assert firmware.counters["cache_hits"] == 1
    firmware_exchange(firmware, MessageType.PULSE, 41, payload)
    assert simulator.pulses_applied == 4


def test_firmware_rejects_other_protocol_version():
    firmware = BoardFirmware(CountingSimulator("ideal", rows=4, cols=4, arrays=1))
    (reply,) = firmware_exchange(firmware, MessageType.HELLO, 1, Hello(2, 256).pack())
    assert reply.message_type == MessageType.ERROR
    assert ErrorReply.unpack_prefix(reply.payload)[0].code == ErrorCode.UNSUPPORTED_VERSION


def test_firmware_naks_damaged_frame():
    firmware = BoardFirmware(CountingSimulator("ideal", rows=4, cols=4, arrays=1))
    reader = FrameReader()
    damaged = bytearray(encode_frame(MessageType.HELLO, 1, Hello(1, 256).pack()))
    damaged[5] ^= 0x40
    (item,) = reader.feed(bytes(damaged))
    (reply,) = reader.feed(firmware.handle(item)[0])
    assert (reply.message_type, reply.seq) == (MessageType.NAK, 0xFFFF)


def test_emulate_command_serves_tcp():
    process = subprocess.Popen([sys.executable, "-m", "cim_runtime.cli", "emulate", "--tcp", "0", "--rows", "8", "--cols", "8",
                                "--arrays", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        assert "socket://127.0.0.1:" in line, process.stderr.read() if process.poll() is not None else line
        url = line.split("'")[1]
        with open_driver(url) as driver:
            assert (driver.info().rows, driver.info().arrays) == (8, 2)
            assert driver.read_row(3, array=1).shape == (8,)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_board_error_is_config_error():
    assert issubclass(BoardArgumentError, ConfigError)
