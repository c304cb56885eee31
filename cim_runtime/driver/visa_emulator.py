"""SCPI emulators of a bench's SMU, pulse generator and switch matrix, on loopback TCP ports.

Each instrument listens on its own port of 127.0.0.1 and speaks line-terminated SCPI, as a LAN
instrument's raw socket does, so pyvisa-py reaches it as ``TCPIP0::127.0.0.1::PORT::SOCKET``. All
three share one simulated array (:class:`~cim_runtime.driver.simulator.SimulatorDriver`): the switch
matrix decides which lines the SMU channels, the generator and ground hold, and so which cells the
pulses reach and where the read currents flow.

The command parsers here are written from the instruments' manuals, apart from the tables in
``visa_commands``, so the tests check the tables against a second reading of the same manuals. An
unknown command, or a value an instrument would refuse, goes to that instrument's error queue
(``SYST:ERR?``), as on the real one. Nothing is clipped.

With a two-channel SMU the array is passive: lines on no bus float, and current flows through
every cell by Kirchhoff's laws (``crossbar_network``), sneak paths included. With a one-channel SMU,
which cannot read such an array, the array has selector devices (``sneak_paths=False``): cells on
a floating line carry no current. Instruments named in
``muted`` stop replying, for timeout tests.
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
from collections import deque
from pathlib import Path

import numpy as np
import tomli_w

from cim_runtime.driver.crossbar_network import line_currents
from cim_runtime.driver.simulator import PULSE_AMPLITUDE_MAX_V, READ_VOLTAGE_MAX_V, SimulatorDriver
from cim_runtime.errors import CimError, ConfigError
from cim_runtime.files import atomic_write

logger = logging.getLogger(__name__)

NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
#: The overflow value SCPI instruments return in place of a measurement they could not make.
NOT_A_NUMBER = "9.91E+37"
UNDEFINED_HEADER = (-113, "Undefined header")
OUT_OF_RANGE = (-222, "Data out of range")
SETTINGS_CONFLICT = (-221, "Settings conflict")

#: Wiring of the emulated bench: matrix slot, first matrix line of the rows, and the bus of each role.
SLOT, FIRST_ROW_LINE, SMU_BUS, PULSE_BUS, GROUND_BUS, SENSE_BUS = 1, 1, 1, 2, 3, 4
#: Bus of each SMU channel: channel 1 forces the read voltage, channel 2 senses at a column.
CHANNEL_BUS = {1: SMU_BUS, 2: SENSE_BUS}
#: Commands kept in :attr:`BenchEmulator.received`, and the longest command line, in bytes.
RECENT_COMMANDS = 10000
MAX_LINE_BYTES = 65536
#: How long a new client waits for the previous one to leave, in seconds.
HANDOVER_S = 1.0
#: Limits the emulated instruments share with the simulator behind them.
PULSE_WIDTH_MIN_S, PULSE_WIDTH_MAX_S, COMPLIANCE_MAX_A = 1e-6, 1e-2, 1.0


class Instrument:
    """The common part of an emulated SCPI instrument: identity, status and error queue."""

    def __init__(self, bench: "BenchEmulator", identity: str):
        self.bench = bench
        self.identity = identity
        #: The instrument's role on the bench ("smu", "pulse" or "switch"), for logs.
        self.role = type(self).__name__
        self.errors: list[tuple[int, str]] = []
        #: The command being run, for error logs.
        self.command = ""
        self.commands = (
            (r"\*IDN\?", lambda: self.identity),
            (r"\*CLS", self.errors.clear),
            (r"\*OPC\?", lambda: "1"),
            (r"SYST:ERR\?", self._next_error),
        )

    def fail(self, error: tuple[int, str], command: str) -> None:
        """Queue an instrument error for ``SYST:ERR?``, as the real instrument would, and log it."""
        logger.warning("emulated %s: error %d %s, after %r", self.role, error[0], error[1], command)
        self.errors.append(error)

    def _next_error(self) -> str:
        code, text = self.errors.pop(0) if self.errors else (0, "No error")
        return f"{code:+d},\"{text}\""

    def handle(self, line: str) -> str | None:
        """Run one command; return its reply, or None for a command without one."""
        for pattern, action in self.commands:
            match = re.fullmatch(pattern, line)
            if match:
                self.command = line
                reply = action(*match.groups())
                return None if reply is None else str(reply)
        self.fail(UNDEFINED_HEADER, line)
        return NOT_A_NUMBER if line.endswith("?") else None


class Smu(Instrument):
    """An SMU that forces a voltage on its channels and measures the current through the routed cells."""

    def __init__(self, bench, identity: str, channels: int):
        super().__init__(bench, identity)
        self.voltage_v = dict.fromkeys(range(1, channels + 1), 0.0)
        self.compliance_a = dict.fromkeys(range(1, channels + 1), 1e-4)
        self.output = dict.fromkeys(range(1, channels + 1), False)
        self.tripped = dict.fromkeys(range(1, channels + 1), False)

    def _set_voltage(self, channel: str, value: str) -> None:
        if abs(float(value)) > 21.0:
            self.fail(OUT_OF_RANGE, self.command)
        else:
            self.voltage_v[int(channel)] = float(value)

    def _set_compliance(self, channel: str, value: str) -> None:
        if not 1e-8 <= float(value) <= 1.0:
            self.fail(OUT_OF_RANGE, self.command)
        else:
            self.compliance_a[int(channel)] = float(value)

    def _set_output(self, channel: str, state: str) -> None:
        self.output[int(channel)] = state == "ON"

    def _measure(self, channel: str) -> str:
        channel = int(channel)
        if not self.output[channel]:
            self.fail(SETTINGS_CONFLICT, self.command)
            return NOT_A_NUMBER
        current_a = self.bench.channel_current_a(channel)
        limit = self.compliance_a[channel]
        self.tripped[channel] = abs(current_a) > limit
        return f"{float(np.clip(current_a, -limit, limit)):+.9E}"


class KeysightB2900(Smu):
    """A two-channel Keysight B2902A; commands name their channel."""

    def __init__(self, bench):
        super().__init__(bench, "Keysight Technologies,B2902A,EMULATOR,1.0", channels=2)
        self.commands += (
            (r":SOUR([12]):FUNC:MODE VOLT", lambda channel: None),
            (r':SENS([12]):FUNC "CURR"', lambda channel: None),
            (rf":SENS([12]):CURR:NPLC {NUMBER}", lambda channel, value: None),
            (rf":SOUR([12]):VOLT {NUMBER}", self._set_voltage),
            (rf":SENS([12]):CURR:PROT {NUMBER}", self._set_compliance),
            (r":OUTP([12]) (ON|OFF)", self._set_output),
            (r":MEAS:CURR\? \(@([12])\)", self._measure),
            (r":SENS([12]):CURR:PROT:TRIP\?", lambda channel: int(self.tripped[int(channel)])),
        )


class Keithley2400(Smu):
    """A one-channel Keithley 2400 SourceMeter set to return only the current of each reading."""

    def __init__(self, bench):
        super().__init__(bench, "KEITHLEY INSTRUMENTS INC.,MODEL 2400,EMULATOR,C32", channels=1)
        self.elements = "VOLT,CURR,RES,TIME,STAT"
        self.commands += (
            (r":SOUR:FUNC VOLT", lambda: None),
            (r':SENS:FUNC "CURR"', lambda: None),
            (rf":SENS:CURR:NPLC {NUMBER}", lambda value: None),
            (r":FORM:ELEM CURR", lambda: setattr(self, "elements", "CURR")),
            (rf":SOUR:VOLT:LEV {NUMBER}", lambda value: self._set_voltage("1", value)),
            (rf":SENS:CURR:PROT {NUMBER}", lambda value: self._set_compliance("1", value)),
            (r":OUTP (ON|OFF)", lambda state: self._set_output("1", state)),
            (r":MEAS:CURR\?", self._read_current),
            (r":SENS:CURR:PROT:TRIP\?", lambda: int(self.tripped[1])),
        )

    def _read_current(self) -> str:
        current = self._measure("1")
        if self.elements == "CURR":
            return current
        # Without FORM:ELEM CURR a reading lists voltage, current, resistance, time and status.
        return f"{self.voltage_v[1]:+.6E},{current},+9.910000E+37,+0.000000E+00,+0.000000E+00"


#: Emulated SMU of each family in ``visa_commands.SMU_FAMILIES``.
SMU_EMULATORS = {"keysight-b2900": KeysightB2900, "keithley-2400": Keithley2400}


class PulseGenerator(Instrument):
    """A pulse generator in triggered single-pulse burst mode, into a high-impedance load.

    A normal pulse rests at the low level and rises to the high level. An inverted one rests at the
    high level and falls to the low level. Pulses must rest at 0 V.
    """

    SETTINGS = ("OUTP:LOAD INF", "FUNC PULS", "BURS:MODE TRIG", "BURS:NCYC 1", "BURS:STAT ON", "TRIG:SOUR BUS")

    def __init__(self, bench):
        super().__init__(bench, "Agilent Technologies,33522B,EMULATOR,1.0")
        self.high_v, self.low_v, self.width_s, self.period_s = 0.1, 0.0, 1e-4, 1e-3
        self.inverted = False
        self.output = False
        self.armed: set[str] = set()
        self.commands += tuple((re.escape(text), lambda text=text: self.armed.add(text)) for text in self.SETTINGS) + (
            (rf"VOLT:HIGH {NUMBER}", lambda value: self._set("high_v", value, -10.0, 10.0)),
            (rf"VOLT:LOW {NUMBER}", lambda value: self._set("low_v", value, -10.0, 10.0)),
            (rf"FUNC:PULS:WIDT {NUMBER}", lambda value: self._set("width_s", value, 16e-9, 1e3)),
            (rf"FUNC:PULS:PER {NUMBER}", lambda value: self._set("period_s", value, 33e-9, 1e6)),
            (r"OUTP:POL (NORM|INV)", lambda polarity: setattr(self, "inverted", polarity == "INV")),
            (r"OUTP (ON|OFF)", lambda state: setattr(self, "output", state == "ON")),
            (r"\*TRG", self._fire),
        )

    def _set(self, name: str, value: str, low: float, high: float) -> None:
        """Take a new level or time, unless it is out of range or would put the low level at or above the high one, or the width at or past the period."""
        previous = getattr(self, name)
        setattr(self, name, float(value))
        if not low <= float(value) <= high or self.low_v >= self.high_v or self.width_s >= self.period_s:
            setattr(self, name, previous)
            self.fail(OUT_OF_RANGE, self.command)

    def _fire(self) -> None:
        rest_v, peak_v = (self.high_v, self.low_v) if self.inverted else (self.low_v, self.high_v)
        if not self.output or len(self.armed) < len(self.SETTINGS) or rest_v != 0.0:
            self.fail(SETTINGS_CONFLICT, self.command)
            return
        self.bench.apply_pulse(peak_v, self.width_s)


class SwitchMatrix(Instrument):
    """A crosspoint matrix: channel ``SBLL`` joins bus ``B`` to line ``LL`` of the module in slot ``S``."""

    def __init__(self, bench):
        super().__init__(bench, "Agilent Technologies,34980A,EMULATOR,1.0")
        self.closed: set[tuple[int, int]] = set()
        self.commands += (
            (r"ROUT:CLOS \(@(\d{4}(?:,\d{4})*)\)", self._close),
            (r"ROUT:OPEN:ALL", self.closed.clear),
        )

    def _close(self, channels: str) -> None:
        parsed = [(int(text[0]), int(text[1]), int(text[2:])) for text in channels.split(",")]
        if any(slot != SLOT or not 1 <= bus <= 4 or not 1 <= line <= 99 for slot, bus, line in parsed):
            self.fail((-224, "Illegal parameter value"), self.command)
            return
        self.closed.update((bus, line) for _, bus, line in parsed)


class BenchEmulator:
    """The three emulated instruments of one bench and the simulated array they share."""

    def __init__(self, *, rows: int = 8, cols: int = 8, profile: str = "C4D1", seed: int = 0, host: str = "127.0.0.1",
                 smu_family: str = "keysight-b2900", sneak_paths: bool | None = None):
        self.simulator = SimulatorDriver(profile, rows=rows, cols=cols, arrays=1, seed=seed)
        self.rows, self.cols = rows, cols
        #: Whether floating lines conduct (a passive array); False models selector devices. By default
        #: the array is passive where the SMU can sense at the column (two channels), else it has selectors.
        self.sneak_paths = sneak_paths
        self.first_col_line = FIRST_ROW_LINE + rows
        self.lock = threading.Lock()
        #: Roles ("smu", "pulse", "switch") whose instruments run commands but never reply, for timeout tests.
        self.muted: set[str] = set()
        #: Number of commands received, and the latest ones as (role, command).
        self.command_count = 0
        self.received: deque[tuple[str, str]] = deque(maxlen=RECENT_COMMANDS)
        if smu_family not in SMU_EMULATORS:
            raise ConfigError(f"SMU family {smu_family!r} has no emulator: use one of {', '.join(SMU_EMULATORS)}")
        self.smu_family = smu_family
        self.instruments = {"smu": SMU_EMULATORS[smu_family](self), "pulse": PulseGenerator(self), "switch": SwitchMatrix(self)}
        if self.sneak_paths is None:
            self.sneak_paths = len(self.instruments["smu"].output) > 1
        for role, instrument in self.instruments.items():
            instrument.role = role
        self._servers = {role: _serve(self, role, host) for role in self.instruments}

    def resource(self, role: str) -> str:
        host, port = self._servers[role].server_address[:2]
        return f"TCPIP0::{host}::{port}::SOCKET"

    def _line_buses(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the bus that each row and each column line is joined to, 0 for none.

        Raises:
            CimError: a line is joined to two buses, which shorts their sources.
        """
        row_bus, col_bus = np.zeros(self.rows, dtype=int), np.zeros(self.cols, dtype=int)
        for bus, line in sorted(self.instruments["switch"].closed):
            if FIRST_ROW_LINE <= line < FIRST_ROW_LINE + self.rows:
                owners, index = row_bus, line - FIRST_ROW_LINE
            elif self.first_col_line <= line < self.first_col_line + self.cols:
                owners, index = col_bus, line - self.first_col_line
            else:
                continue
            if owners[index]:
                raise CimError(f"matrix line {line} joins buses {owners[index]} and {bus}, a short between their sources")
            owners[index] = bus
        return row_bus, col_bus

    def _bus_voltages(self) -> dict[int, float]:
        """Return the voltage of each bus that a source drives. A bus whose source is off floats and is left out."""
        smu, pulse = self.instruments["smu"], self.instruments["pulse"]
        voltages = {GROUND_BUS: 0.0}
        for channel, bus in CHANNEL_BUS.items():
            if smu.output.get(channel):
                voltages[bus] = smu.voltage_v[channel]
        if pulse.output:
            voltages[PULSE_BUS] = 0.0
        return voltages

    def channel_current_a(self, channel: int) -> float:
        """Return the current that SMU ``channel`` sources into the array, sneak paths included where lines float."""
        buses = self._bus_voltages()
        row_bus, col_bus = self._line_buses()
        row_v = np.array([buses.get(bus, np.nan) for bus in row_bus])
        col_v = np.array([buses.get(bus, np.nan) for bus in col_bus])
        largest_v = float(np.nanmax(np.abs(np.concatenate([row_v, col_v, [0.0]]))))
        if largest_v > READ_VOLTAGE_MAX_V:
            raise CimError(f"{largest_v} V on the array would disturb its cells")
        rows, cols = np.meshgrid(np.arange(self.rows), np.arange(self.cols), indexing="ij")
        conductance_s = self.simulator.read(rows, cols, read_voltage_v=largest_v or 0.1)
        if not self.sneak_paths:
            # Selector devices: cells on a floating line carry no current.
            conductance_s = conductance_s * ~np.isnan(row_v)[:, None] * ~np.isnan(col_v)[None, :]
        row_a, col_a = line_currents(conductance_s, row_v, col_v)
        bus = CHANNEL_BUS[channel]
        return float(row_a[row_bus == bus].sum() + col_a[col_bus == bus].sum())

    def apply_pulse(self, amplitude_v: float, width_s: float) -> None:
        """Apply one pulse to every cell routed between the pulse bus and ground."""
        row_bus, col_bus = self._line_buses()
        rows, cols = np.meshgrid(np.flatnonzero(row_bus == PULSE_BUS), np.flatnonzero(col_bus == GROUND_BUS), indexing="ij")
        if rows.size and amplitude_v != 0:
            if abs(amplitude_v) > PULSE_AMPLITUDE_MAX_V or not PULSE_WIDTH_MIN_S <= width_s <= PULSE_WIDTH_MAX_S:
                raise CimError(f"a {amplitude_v} V, {width_s} s pulse is beyond what the cells take")
            self.simulator.pulse(rows.ravel(), cols.ravel(), amplitude_v, width_s)

    def handle(self, role: str, line: str) -> str | None:
        with self.lock:
            self.command_count += 1
            self.received.append((role, line))
            try:
                return self.instruments[role].handle(line)
            except CimError as exc:
                self.instruments[role].fail((-200, f"Execution error: {exc}"), line)
                return NOT_A_NUMBER if line.endswith("?") else None

    def bench_file(self, path: str | Path, *, timeout_s: float = 5.0, library: str = "@py") -> Path:
        """Write a bench file that points the VISA backend at these instruments; return its path."""
        info = self.simulator.info()
        # With two SMU channels, the bench reads with unselected lines grounded, which shuts out sneak paths.
        grounded = len(self.instruments["smu"].output) > 1
        bench = {
            "array": {"rows": self.rows, "cols": self.cols, "conductance_min_s": float(f"{info.conductance_min_s:.6g}"),
                      "conductance_max_s": float(f"{info.conductance_max_s:.6g}"), "read_voltage_max_v": READ_VOLTAGE_MAX_V,
                      "default_read_voltage_v": info.default_read_voltage_v, "pulse_amplitude_max_v": PULSE_AMPLITUDE_MAX_V,
                      "pulse_width_min_s": PULSE_WIDTH_MIN_S, "pulse_width_max_s": PULSE_WIDTH_MAX_S,
                      "compliance_max_a": self.compliance_a(info.conductance_max_s)},
            "visa": {"library": library, "timeout_s": timeout_s},
            "smu": {"resource": self.resource("smu"), "family": self.smu_family, "channel": 1,
                    "sense_channel": 2 if grounded else 1},
            "pulse": {"resource": self.resource("pulse"), "family": "keysight-33500b"},
            "switch": {"resource": self.resource("switch"), "family": "keysight-34980a", "slot": SLOT,
                       "first_row_line": FIRST_ROW_LINE, "first_col_line": self.first_col_line,
                       "smu_bus": SMU_BUS, "pulse_bus": PULSE_BUS, "ground_bus": GROUND_BUS, "sense_bus": SENSE_BUS,
                       "unselected": "ground" if grounded else "float"},
        }
        path = Path(path)
        text = tomli_w.dumps(bench)
        atomic_write(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
        return path

    def compliance_a(self, conductance_max_s: float) -> float:
        """Return a compliance current that a read of a whole row at the largest read voltage stays below."""
        row_a = self.cols * conductance_max_s * READ_VOLTAGE_MAX_V
        return float(f"{min(COMPLIANCE_MAX_A, max(1e-2, 2 * row_a)):.3g}")

    def start(self) -> "BenchEmulator":
        for server in self._servers.values():
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"bench-{server.role}", daemon=True)
            thread.start()
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _Handler(socketserver.BaseRequestHandler):
    """One client of one instrument. Like a LAN instrument's raw socket, each instrument takes one client at a time."""

    def handle(self) -> None:
        server = self.server
        # A client that has just closed may not have been noticed yet, so wait a little for it.
        if not server.free.acquire(timeout=HANDOVER_S):
            logger.warning("emulated %s: a second client at %s was turned away, because one is connected", server.role,
                           self.client_address)
            return
        try:
            self._serve_lines()
        except OSError as exc:
            logger.info("emulated %s: client %s left (%s)", server.role, self.client_address, exc)
        finally:
            server.free.release()

    def _serve_lines(self) -> None:
        bench, role = self.server.bench, self.server.role
        pending = b""
        while chunk := self.request.recv(4096):
            # Acknowledge at once. A host that writes a command without a reply and then a query
            # would otherwise wait for the delayed acknowledgement (40 ms on Linux) before its
            # query leaves, because of Nagle's algorithm.
            if hasattr(socket, "TCP_QUICKACK"):
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > MAX_LINE_BYTES:
                logger.warning("emulated %s: a command line from %s passed %d bytes; closing the connection", role,
                               self.client_address, MAX_LINE_BYTES)
                return
            for raw in lines:
                line = raw.decode("ascii", errors="replace").strip()
                reply = bench.handle(role, line) if line else None
                if reply is not None and role not in bench.muted:
                    self.request.sendall(reply.encode("ascii") + b"\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _serve(bench: BenchEmulator, role: str, host: str) -> _Server:
    server = _Server((host, 0), _Handler)
    server.bench, server.role = bench, role
    server.free = threading.Lock()
    return server
