"""VISA backend: a crossbar on a probe station, wired through a switch matrix to an SMU and a pulse generator.

URL grammar: ``visa://?bench=PATH`` names a bench file (:mod:`cim_runtime.driver.visa_bench`) that
lists the instruments, their command families and the array's wiring and limits. Write a ``+`` in
the path as ``%2B``, because a URL query reads ``+`` as a space.

How each operation runs, one cell or one row at a time:

* **read**: with the SMU at 0 V, the switch connects the cell's row to the SMU bus. The SMU then
  forces the read voltage, measures the current and returns to 0 V; the conductance is current over
  voltage. With ``unselected = "float"`` the cell's column goes to the ground bus, every other line
  floats, and the force channel measures. In a passive array, current then also flows through sneak
  paths of other cells. With ``unselected = "ground"`` the column goes to the sense bus, which a
  second SMU channel keeps at 0 V while it measures. Every other line is grounded, so no other cell
  adds to the column's current. A reading at the compliance current is an error.
* **pulse**: cells on one row that get the same amplitude and width share one pulse. With every
  crosspoint open, the generator takes the pulse's levels and width. Then the row goes to the pulse
  bus and the cells' columns to the ground bus, and the generator fires once.
* **mvm**: not offered. One SMU channel forces one voltage, so a bench cannot apply a vector of
  read voltages. Use readback mode or a backend with the ``analog_mvm`` capability.

Every request is checked against the bench file's limits before any command goes out. Each batch
of operations ends with a read of every instrument's error queue. When an instrument times out or
the link fails, the driver sets the bench safe as far as it can and closes itself.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from cim_runtime.driver.base import ArrayDriver, ArrayInfo
from cim_runtime.driver.visa_bench import BenchConfig, load_bench
from cim_runtime.driver.visa_commands import PULSE_FAMILIES, SMU_FAMILIES, SWITCH_FAMILIES, WAIT_COMPLETE
from cim_runtime.driver.visa_session import InstrumentSession, open_manager
from cim_runtime.errors import CimError, ConfigError, DataError, ProtocolError, TransportError

logger = logging.getLogger(__name__)

#: Share of the compliance current at which the SMU is asked whether it was limiting.
COMPLIANCE_SHARE = 0.999
#: Share of conductance_min_s below which a batch of at least OPEN_CIRCUIT_CELLS reads looks like an
#: open circuit (one broken cell can read so, a whole batch points to the wiring).
OPEN_CIRCUIT_SHARE = 0.01
OPEN_CIRCUIT_CELLS = 4
#: Pulse period as a multiple of the width, so that the single pulse of a burst fits in its period.
PERIOD_PER_WIDTH = 2.0


class ComplianceReachedError(CimError):
    """A read hit the SMU's compliance current, so the cell conducts more than the bench can measure."""


class VisaDriver(ArrayDriver):
    """One crossbar array measured with bench instruments through pyvisa."""

    def __init__(self, bench: BenchConfig):
        super().__init__()
        self.bench = bench
        self._smu_commands = SMU_FAMILIES[bench.smu.family]
        self._pulse_commands = PULSE_FAMILIES[bench.pulse.family]
        self._switch_commands = SWITCH_FAMILIES[bench.switch.family]
        self._sessions: list[InstrumentSession] = []
        #: (amplitude_v, width_s) the generator holds, or None where unknown.
        self._pulse_setting: tuple[float, float] | None = None
        #: Whether closing waits until each instrument confirms its safe state.
        self._confirm_close = True

        manager = open_manager(bench.visa.library)
        try:
            self._smu = self._open(manager, bench.smu.resource, "SMU")
            self._pulser = self._open(manager, bench.pulse.resource, "pulse generator")
            self._switch = self._open(manager, bench.switch.resource, "switch matrix")
            identities = [self._smu.identify(self._smu_commands.identity, bench.smu.family),
                          self._pulser.identify(self._pulse_commands.identity, bench.pulse.family),
                          self._switch.identify(self._switch_commands.identity, bench.switch.family)]
            try:
                self._configure()
            except BaseException:
                # Configuration may have turned outputs on before it failed.
                self._make_safe(output_off=True)
                raise
        except BaseException:
            self._close_sessions()
            raise

        # The [array] table has the names of ArrayInfo's fields.
        self._info = ArrayInfo(arrays=1, capabilities=frozenset(), identity=" | ".join(identities), **asdict(bench.array))

    def _open(self, manager, resource: str, role: str) -> InstrumentSession:
        session = InstrumentSession(manager, resource, role, self.bench.visa.timeout_s)
        self._sessions.append(session)
        return session

    def info(self) -> ArrayInfo:
        return self._info

    def _where(self) -> str:
        return f"bench file {self.bench.source}"

    def pulse(self, rows, cols, amplitude_v, width_s, *, array=0, compliance_a: float | None = None) -> None:
        """Apply one pulse to each addressed cell (see :meth:`ArrayDriver.pulse`); ``compliance_a`` is not supported."""
        if compliance_a is not None:
            raise ConfigError(f"compliance_a={compliance_a:g} cannot be applied: the bench's pulse generator has no current "
                              "limit, so leave compliance_a out and limit the current in the circuit (with a series resistor, for example)")
        super().pulse(rows, cols, amplitude_v, width_s, array=array)

    # Instrument set-up and routing.

    def _configure(self) -> None:
        """Open every crosspoint, then set the SMU to 0 V with its output on and arm the pulse generator.

        Each command is followed by a read of its instrument's error queue, so that an error names it.
        """
        for command in self._switch_commands.setup + (self._switch_commands.open_all,):
            self._switch.write_checked(command)
        smu = self._smu_commands
        for channel in self._smu_channels():
            commands = [command.format(channel=channel) for command in smu.setup]
            commands += [smu.compliance.format(channel=channel, compliance_a=self.bench.array.compliance_max_a),
                         smu.source_voltage.format(channel=channel, voltage_v=0.0), smu.output_on.format(channel=channel)]
            for command in commands:
                self._smu.write_checked(command)
        for command in self._pulse_commands.setup:
            self._pulser.write_checked(command)
        # Known levels before the output turns on. Between triggers the output rests at 0 V.
        self._set_pulse(self.bench.array.pulse_amplitude_max_v / 2, self.bench.array.pulse_width_min_s)
        self._pulser.write_checked(self._pulse_commands.output_on)

    def _smu_channels(self) -> list[int]:
        """Return the SMU channels in use: the force channel, and the sense channel when reads ground the other lines."""
        return [self.bench.smu.channel] + ([self.bench.smu.sense_channel] if self.bench.switch.grounded else [])

    def _raise_queued_errors(self) -> None:
        for session in self._sessions:
            session.raise_queued_errors()

    def _channel(self, bus: int, line: int) -> str:
        return self._switch_commands.channel.format(slot=self.bench.switch.slot, bus=bus, line=line)

    def _open_switches(self) -> None:
        """Open every crosspoint and wait until the relays have moved."""
        self._switch.write(self._switch_commands.open_all)
        self._switch.query(WAIT_COMPLETE)

    def _connect(self, channels: list[str]) -> None:
        """Close exactly the crosspoints ``channels``, every other one open, and wait for the relays."""
        self._switch.write(self._switch_commands.open_all)
        self._switch.write(self._switch_commands.close.format(channels=",".join(channels)))
        self._switch.query(WAIT_COMPLETE)

    def _route(self, bus_rows: int, rows, cols) -> None:
        """Connect ``rows`` to bus ``bus_rows`` and ``cols`` to the ground bus, every other line open; wait for the relays."""
        switch = self.bench.switch
        channels = [self._channel(bus_rows, switch.first_row_line + int(row)) for row in rows]
        channels += [self._channel(switch.ground_bus, switch.first_col_line + int(col)) for col in cols]
        self._connect(channels)

    # Operations.

    def _read(self, array, rows, cols, read_voltage_v):
        conductance_s = self._guarded(self._read_cells, rows, cols, read_voltage_v)
        if conductance_s.size >= OPEN_CIRCUIT_CELLS and np.all(np.abs(conductance_s) < OPEN_CIRCUIT_SHARE * self._info.conductance_min_s):
            logger.warning("the %d cells of one read all measured below %g S, like an open circuit: check the wiring in %s (first_row_line, "
                           "first_col_line and the buses)", conductance_s.size, OPEN_CIRCUIT_SHARE * self._info.conductance_min_s,
                           self.bench.source)
        return conductance_s

    def _read_cells(self, rows, cols, read_voltage_v) -> np.ndarray:
        smu, channel = self._smu_commands, self.bench.smu.channel
        grounded = self.bench.switch.grounded
        # The sense channel sinks the cell's current, so its reading has the opposite sign.
        measured, sign = (self.bench.smu.sense_channel, -1.0) if grounded else (channel, 1.0)
        conductance_s = np.empty(rows.shape, dtype=np.float64)
        for index, (row, col) in enumerate(zip(rows.ravel(), cols.ravel())):
            # NOTE: one cell per measurement, with the SMU at 0 V while the relays move.
            self._route_read(int(row), int(col))
            self._smu.write(smu.source_voltage.format(channel=channel, voltage_v=read_voltage_v))
            current_a = self._smu.query_float(smu.measure_current.format(channel=measured))
            if grounded:
                # The force channel feeds every cell of the row. Its compliance could hold the voltage
                # down and spoil the reading, so that channel is measured too.
                force_a = self._smu.query_float(smu.measure_current.format(channel=channel))
                self._check_read_compliance(channel, force_a, row, col, read_voltage_v)
            self._smu.write(smu.source_voltage.format(channel=channel, voltage_v=0.0))
            self._check_read_compliance(measured, current_a, row, col, read_voltage_v)
            conductance_s.flat[index] = sign * current_a / read_voltage_v
        self._switch.write(self._switch_commands.open_all)
        self._raise_queued_errors()
        return conductance_s

    def _route_read(self, row: int, col: int) -> None:
        """Route one cell for a read, with the other lines floating or grounded as set in the bench file."""
        switch = self.bench.switch
        if not switch.grounded:
            self._route(switch.smu_bus, [row], [col])
            return
        channels = [self._channel(switch.smu_bus, switch.first_row_line + row), self._channel(switch.sense_bus, switch.first_col_line + col)]
        channels += [self._channel(switch.ground_bus, switch.first_row_line + other) for other in range(self._info.rows) if other != row]
        channels += [self._channel(switch.ground_bus, switch.first_col_line + other) for other in range(self._info.cols) if other != col]
        self._connect(channels)

    def _check_read_compliance(self, channel: int, current_a: float, row, col, read_voltage_v: float) -> None:
        """Raise if the reading ``current_a`` of ``channel`` is at the compliance and the SMU reports that it was limiting."""
        compliance_a = self.bench.array.compliance_max_a
        if abs(current_a) < COMPLIANCE_SHARE * compliance_a:
            return
        if self._smu.query_float(self._smu_commands.in_compliance.format(channel=channel)):
            raise ComplianceReachedError(
                f"reading row {row}, column {col} at {read_voltage_v:g} V reached the compliance of {compliance_a:g} A on SMU "
                f"channel {channel}: the cells conduct more than the bench file's compliance_max_a allows, so read at a lower voltage")

    def _pulse(self, array, rows, cols, amplitude_v, width_s):
        flat = rows.ravel() * self._info.cols + cols.ravel()
        if np.unique(flat).size != flat.size:
            raise ConfigError("a pulse call addresses a cell twice: give each cell once per call")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for row, col, amplitude, width in zip(rows.ravel(), cols.ravel(), amplitude_v.ravel(), width_s.ravel()):
            groups[(int(row), float(amplitude), float(width))].append(int(col))
        self._guarded(self._pulse_groups, groups)

    def _pulse_groups(self, groups: dict[tuple, list[int]]) -> None:
        for (row, amplitude, width), group_cols in groups.items():
            if self._pulse_setting != (amplitude, width):
                self._open_switches()
                self._set_pulse(amplitude, width)
            self._route(self.bench.switch.pulse_bus, [row], group_cols)
            self._pulser.write(self._pulse_commands.trigger)
            self._pulser.query(WAIT_COMPLETE)
        self._switch.write(self._switch_commands.open_all)
        self._raise_queued_errors()

    def _set_pulse(self, amplitude_v: float, width_s: float) -> None:
        """Set the levels, polarity, width and period of the next pulse, and check that the generator took them.

        The high level stays above the low level and the width below the period at every step. So
        the levels go out in an order set by the sign, and the period is first made long enough for
        any width.
        """
        commands = self._pulse_commands
        self._pulse_setting = None
        if amplitude_v > 0:
            levels = [commands.high.format(voltage_v=amplitude_v), commands.low.format(voltage_v=0.0), commands.polarity_normal]
        else:
            levels = [commands.low.format(voltage_v=amplitude_v), commands.high.format(voltage_v=0.0), commands.polarity_inverted]
        longest_period_s = PERIOD_PER_WIDTH * self.bench.array.pulse_width_max_s
        timing = [commands.period.format(period_s=longest_period_s), commands.width.format(width_s=width_s),
                  commands.period.format(period_s=PERIOD_PER_WIDTH * width_s)]
        for command in levels + timing:
            self._pulser.write(command)
        self._pulser.raise_queued_errors()
        self._pulse_setting = (amplitude_v, width_s)

    def _guarded(self, operation, *args):
        """Run ``operation``. On an instrument error, forget the pulse setting and set the bench safe.

        After a lost link, a timeout or an interrupt (Ctrl-C), replies may be out of step with the
        commands, so the driver also closes itself, without waiting for confirmations.
        """
        try:
            return operation(*args)
        except (TransportError, ProtocolError) as exc:
            logger.error("the bench failed (%s); setting it safe and closing the driver", exc)
            self._abandon()
            raise type(exc)(f"{exc}. The driver has closed itself and left the bench as safe as it could") from exc
        except CimError:
            self._pulse_setting = None
            self._make_safe()
            raise
        except BaseException:
            logger.warning("interrupted; setting the bench safe and closing the driver")
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Set the bench safe without waiting for replies, then close the driver."""
        self._pulse_setting = None
        self._confirm_close = False
        self.close()

    def _mvm(self, array, voltages_v):
        raise ConfigError("the VISA bench forces one read voltage from one SMU channel and cannot apply a vector of them: "
                          "run inference in readback mode, or use a backend with the analog_mvm capability")

    # Shutdown.

    def _make_safe(self, output_off: bool = False) -> None:
        """Set the SMU to 0 V, open every crosspoint and, with ``output_off``, turn every output off; log what fails."""
        smu, channel = self._smu_commands, self.bench.smu.channel
        steps = [(self._smu, smu.source_voltage.format(channel=channel, voltage_v=0.0)),
                 (self._switch, self._switch_commands.open_all)]
        if output_off:
            steps += [(self._smu, smu.output_off.format(channel=number)) for number in self._smu_channels()]
            steps += [(self._pulser, self._pulse_commands.output_off)]
        for session, command in steps:
            try:
                session.write(command)
            except CimError as exc:
                logger.warning("could not leave the bench safe: %s", exc)

    def _close(self) -> None:
        """Leave the bench safe (SMU at 0 V and off, pulses off, switches open), then end the sessions."""
        self._make_safe(output_off=True)
        for session in self._sessions if self._confirm_close else ():
            try:
                session.query(WAIT_COMPLETE)
            except CimError as exc:
                logger.warning("the %s did not confirm its safe state: %s", session.role, exc)
        self._close_sessions()

    def _close_sessions(self) -> None:
        for session in self._sessions:
            session.close()
        self._sessions.clear()


def open_visa(url: str, options: dict[str, str]) -> VisaDriver:
    """Open ``visa://?bench=PATH``."""
    parts = urlsplit(url)
    if parts.netloc or parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"backend URL {url!r} is invalid: visa:// takes its bench file as an option only, as in 'visa://?bench=bench.toml'")
    unknown = sorted(set(options) - {"bench"})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {url!r}: visa:// takes bench=PATH")
    if not options.get("bench"):
        raise ConfigError(f"{url!r} names no bench file: use visa://?bench=PATH (see docs/visa.md)")
    path = Path(options["bench"])
    if not path.exists() and " " in str(path) and "+" in url:
        raise DataError(f"bench file {path} not found: a URL query reads + as a space, so write + in the path as %2B")
    return VisaDriver(load_bench(path))
