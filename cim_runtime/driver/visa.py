"""VISA backend: a crossbar on a probe station, wired through a switch matrix to an SMU and a pulse generator.

URL grammar: ``visa://?bench=PATH`` names a bench file (:mod:`cim_runtime.driver.visa_bench`) that
lists the instruments, their command families and the array's wiring and limits.

How each operation runs, one cell or one row at a time:

* **read**: with the SMU at 0 V, the switch connects the cell's row to the SMU bus and its column to
  the ground bus; the SMU then forces the read voltage, measures the current and returns to 0 V.
  The conductance is current over voltage. A reading at the compliance current is an error.
* **pulse**: cells on one row that get the same amplitude and width share one pulse: the row goes
  to the pulse bus and their columns to the ground bus, and the generator fires once. A negative
  amplitude inverts the pulse.
* **mvm**: not offered. One SMU channel forces one voltage, so a bench cannot apply a vector of
  read voltages; use readback mode or a backend with the ``analog_mvm`` capability.

Every request is checked against the bench file's limits before any command goes out. Each batch
of operations ends with a read of every instrument's error queue.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from cim_runtime.driver.base import ArrayDriver, ArrayInfo
from cim_runtime.driver.visa_bench import BenchConfig, load_bench
from cim_runtime.driver.visa_commands import PULSE_FAMILIES, SMU_FAMILIES, SWITCH_FAMILIES, WAIT_COMPLETE
from cim_runtime.driver.visa_session import InstrumentSession, open_manager
from cim_runtime.errors import CimError, ConfigError

logger = logging.getLogger(__name__)

#: Share of the compliance current at which the SMU is asked whether it was limiting.
COMPLIANCE_SHARE = 0.999


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
        self._pulse_setting: tuple | None = None
        manager = open_manager(bench.visa.library)
        try:
            self._smu = self._open(manager, bench.smu.resource, "SMU")
            self._pulser = self._open(manager, bench.pulse.resource, "pulse generator")
            self._switch = self._open(manager, bench.switch.resource, "switch matrix")
            identities = [self._smu.identify(self._smu_commands.identity, bench.smu.family),
                          self._pulser.identify(self._pulse_commands.identity, bench.pulse.family),
                          self._switch.identify(self._switch_commands.identity, bench.switch.family)]
            self._configure()
        except BaseException:
            self._close_sessions()
            raise
        limits = bench.array
        self._info = ArrayInfo(
            rows=limits.rows, cols=limits.cols, arrays=1,
            conductance_min_s=limits.conductance_min_s, conductance_max_s=limits.conductance_max_s,
            read_voltage_max_v=limits.read_voltage_max_v, pulse_amplitude_max_v=limits.pulse_amplitude_max_v,
            pulse_width_min_s=limits.pulse_width_min_s, pulse_width_max_s=limits.pulse_width_max_s,
            compliance_max_a=limits.compliance_max_a, default_read_voltage_v=limits.default_read_voltage_v,
            capabilities=frozenset(), identity=" | ".join(identities),
        )

    def _open(self, manager, resource: str, role: str) -> InstrumentSession:
        session = InstrumentSession(manager, resource, role, self.bench.visa.timeout_s)
        self._sessions.append(session)
        return session

    def info(self) -> ArrayInfo:
        return self._info

    # Instrument set-up and routing.

    def _configure(self) -> None:
        """Put every instrument into the state the operations expect: SMU at 0 V with output on, pulses armed, switches open."""
        smu, channel = self._smu_commands, self.bench.smu.channel
        for command in smu.setup:
            self._smu.write(command.format(channel=channel))
        self._smu.write(smu.compliance.format(channel=channel, compliance_a=self.bench.array.compliance_max_a))
        self._smu.write(smu.source_voltage.format(channel=channel, voltage_v=0.0))
        self._smu.write(smu.output_on.format(channel=channel))
        for command in self._pulse_commands.setup:
            self._pulser.write(command)
        self._pulser.write(self._pulse_commands.output_on)
        for command in self._switch_commands.setup:
            self._switch.write(command)
        self._switch.write(self._switch_commands.open_all)
        self._raise_queued_errors()

    def _raise_queued_errors(self) -> None:
        for session in self._sessions:
            session.raise_queued_errors()

    def _channel(self, bus: int, line: int) -> str:
        return self._switch_commands.channel.format(slot=self.bench.switch.slot, bus=bus, line=line)

    def _route(self, bus_rows: int, rows, cols) -> None:
        """Connect ``rows`` to bus ``bus_rows`` and ``cols`` to the ground bus, every other line open; wait for the relays."""
        switch = self.bench.switch
        channels = [self._channel(bus_rows, switch.first_row_line + int(row)) for row in rows]
        channels += [self._channel(switch.ground_bus, switch.first_col_line + int(col)) for col in cols]
        self._switch.write(self._switch_commands.open_all)
        self._switch.write(self._switch_commands.close.format(channels=",".join(channels)))
        self._switch.query(WAIT_COMPLETE)

    # Operations.

    def _read(self, array, rows, cols, read_voltage_v):
        smu, channel = self._smu_commands, self.bench.smu.channel
        compliance_a = self.bench.array.compliance_max_a
        conductance_s = np.empty(rows.shape, dtype=np.float64)
        # NOTE: one cell per measurement, with the SMU at 0 V while the relays move.
        for index, (row, col) in enumerate(zip(rows.ravel(), cols.ravel())):
            self._route(self.bench.switch.smu_bus, [row], [col])
            self._smu.write(smu.source_voltage.format(channel=channel, voltage_v=read_voltage_v))
            current_a = self._smu.query_float(smu.measure_current.format(channel=channel))
            self._smu.write(smu.source_voltage.format(channel=channel, voltage_v=0.0))
            if abs(current_a) >= COMPLIANCE_SHARE * compliance_a and self._smu.query_float(smu.in_compliance.format(channel=channel)):
                raise ComplianceReachedError(
                    f"reading row {row}, column {col} at {read_voltage_v:g} V reached the compliance of {compliance_a:g} A: "
                    "the cell conducts more than the bench file's compliance_max_a allows; read at a lower voltage")
            conductance_s.flat[index] = current_a / read_voltage_v
        self._switch.write(self._switch_commands.open_all)
        self._raise_queued_errors()
        return conductance_s

    def _pulse(self, array, rows, cols, amplitude_v, width_s):
        flat = rows.ravel() * self._info.cols + cols.ravel()
        if np.unique(flat).size != flat.size:
            raise ConfigError("a pulse call addresses a cell twice: give each cell once per call")
        groups: dict[tuple, list[int]] = defaultdict(list)
        for row, col, amplitude, width in zip(rows.ravel(), cols.ravel(), amplitude_v.ravel(), width_s.ravel()):
            groups[(int(row), float(amplitude), float(width))].append(int(col))
        for (row, amplitude, width), group_cols in groups.items():
            self._set_pulse(amplitude, width)
            self._route(self.bench.switch.pulse_bus, [row], group_cols)
            self._pulser.write(self._pulse_commands.trigger)
            self._pulser.query(WAIT_COMPLETE)
        self._switch.write(self._switch_commands.open_all)
        self._raise_queued_errors()

    def _set_pulse(self, amplitude_v: float, width_s: float) -> None:
        """Send the pulse height, polarity and width, skipping what the generator already holds."""
        commands = self._pulse_commands
        if self._pulse_setting == (amplitude_v, width_s):
            return
        polarity = commands.polarity_normal if amplitude_v > 0 else commands.polarity_inverted
        self._pulser.write(commands.amplitude.format(amplitude_v=abs(amplitude_v)))
        self._pulser.write(commands.width.format(width_s=width_s))
        self._pulser.write(polarity)
        self._pulse_setting = (amplitude_v, width_s)

    def _mvm(self, array, voltages_v):
        raise ConfigError("the VISA bench forces one read voltage from one SMU channel and cannot apply a vector of them: "
                          "run inference in readback mode, or use a backend with the analog_mvm capability")

    # Shutdown.

    def _close(self) -> None:
        """Leave the bench safe (SMU at 0 V and off, pulses off, switches open), then end the sessions."""
        smu, channel = self._smu_commands, self.bench.smu.channel
        steps = ((self._smu, smu.source_voltage.format(channel=channel, voltage_v=0.0)),
                 (self._smu, smu.output_off.format(channel=channel)),
                 (self._pulser, self._pulse_commands.output_off),
                 (self._switch, self._switch_commands.open_all))
        for session, command in steps:
            try:
                session.write(command)
            except CimError as exc:
                logger.warning("could not leave the bench safe: %s", exc)
        for session in self._sessions:
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
    unknown = sorted(set(options) - {"bench"})
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {url!r}: visa:// takes bench=PATH")
    if not options.get("bench"):
        raise ConfigError(f"{url!r} names no bench file: use visa://?bench=PATH (see docs/visa.md)")
    return VisaDriver(load_bench(options["bench"]))
