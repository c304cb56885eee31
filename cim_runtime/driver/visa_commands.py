"""SCPI command sets of the bench instruments that the VISA backend drives, one small table per family.

A bench has three instruments: a source-measure unit (SMU), a pulse generator and a switch
matrix. Each family below lists the exact command strings the backend sends, with ``str.format``
fields for the values. Adding an instrument family means adding a table here, not
code in the driver. Numbers are written with ``{:.6g}`` so that 1e-4 s goes out as ``0.0001``.

NOTE: the command strings and instrument limits follow the manufacturers' programming manuals as
the authors know them. No real instrument has run them yet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SmuCommands:
    """Commands of an SMU whose channels force a voltage and measure the current they source (or sink)."""

    #: Text the ``*IDN?`` reply must contain.
    identity: str
    #: Number of channels; the bench file's ``channel`` counts from 1.
    channels: int
    #: Commands sent once to the channel when the bench opens (``{channel}``).
    setup: tuple[str, ...]
    #: Set the source voltage of a channel (``{channel}``, ``{voltage_v}``).
    source_voltage: str
    #: Set the current compliance of a channel (``{channel}``, ``{compliance_a}``).
    compliance: str
    #: Turn a channel's output on or off (``{channel}``).
    output_on: str
    output_off: str
    #: Query one current measurement of a channel, in amperes (``{channel}``).
    measure_current: str
    #: Query whether the last measurement of a channel hit its compliance. The reply is 1 or 0 (``{channel}``).
    in_compliance: str
    #: Largest source voltage and current of the instrument, in volts and amperes.
    voltage_max_v: float
    current_max_a: float
    note: str = ""


@dataclass(frozen=True)
class PulseCommands:
    """Commands of a pulse generator that fires one rectangular pulse per trigger.

    A positive pulse rests at 0 V (the low level) and rises to the high level. A negative pulse
    sets the high level to 0 V and the low level to minus the amplitude, and inverts the output,
    so that it rests at 0 V and falls to the low level.
    """

    identity: str
    #: Commands sent once when the bench opens: output load, pulse shape, single-pulse burst, bus trigger.
    setup: tuple[str, ...]
    #: Set the high and low levels (``{voltage_v}``).
    high: str
    low: str
    #: Set the pulse width and the pulse period (``{width_s}``, ``{period_s}``).
    width: str
    period: str
    #: Select positive (``normal``) or negative (``inverted``) pulses.
    polarity_normal: str
    polarity_inverted: str
    output_on: str
    output_off: str
    #: Fire one pulse.
    trigger: str
    #: Largest pulse height, and shortest and longest pulse, of the instrument (into a high impedance).
    amplitude_max_v: float
    width_min_s: float
    width_max_s: float
    note: str = ""


@dataclass(frozen=True)
class SwitchCommands:
    """Commands of a switch matrix that connects the array's lines to instrument buses."""

    identity: str
    setup: tuple[str, ...]
    #: Close a list of crosspoints (``{channels}``: the channel names joined by commas).
    close: str
    #: Open every crosspoint.
    open_all: str
    #: Channel name of one crosspoint (``{slot}``, ``{bus}``, ``{line}``). Bus and line count from 1.
    channel: str
    #: Largest slot, bus and line number that the channel names can carry.
    max_slot: int
    max_bus: int
    max_line: int
    note: str = ""


#: Commands every SCPI instrument understands (IEEE 488.2).
IDENTIFY = "*IDN?"
CLEAR_STATUS = "*CLS"
WAIT_COMPLETE = "*OPC?"
NEXT_ERROR = "SYST:ERR?"

SMU_FAMILIES: dict[str, SmuCommands] = {
    "keysight-b2900": SmuCommands(
        identity="B29",
        channels=2,
        setup=(":SOUR{channel}:FUNC:MODE VOLT", ":SENS{channel}:FUNC \"CURR\"", ":SENS{channel}:CURR:NPLC 0.1"),
        source_voltage=":SOUR{channel}:VOLT {voltage_v:.6g}",
        compliance=":SENS{channel}:CURR:PROT {compliance_a:.6g}",
        output_on=":OUTP{channel} ON",
        output_off=":OUTP{channel} OFF",
        measure_current=":MEAS:CURR? (@{channel})",
        in_compliance=":SENS{channel}:CURR:PROT:TRIP?",
        voltage_max_v=21.0,
        current_max_a=1.0,
        note="DC limits of the 21 V source range, because the backend never selects a higher range",
    ),
    "keithley-2400": SmuCommands(
        identity="MODEL 24",
        channels=1,
        # Readings then carry the current alone, not voltage, current, resistance, time and status.
        setup=(":SOUR:FUNC VOLT", ":SENS:FUNC \"CURR\"", ":SENS:CURR:NPLC 0.1", ":FORM:ELEM CURR"),
        source_voltage=":SOUR:VOLT:LEV {voltage_v:.6g}",
        compliance=":SENS:CURR:PROT {compliance_a:.6g}",
        output_on=":OUTP ON",
        output_off=":OUTP OFF",
        measure_current=":MEAS:CURR?",
        in_compliance=":SENS:CURR:PROT:TRIP?",
        voltage_max_v=21.0,
        current_max_a=1.0,
        note="limits of the 20 V source range of a Model 2400; other 2400-series models differ",
    ),
}

PULSE_FAMILIES: dict[str, PulseCommands] = {
    "keysight-33500b": PulseCommands(
        identity="335",
        # The high-impedance load setting makes the set levels those at the open output, which a
        # memristor cell nearly is. At the default 50 ohm setting, the cell would see up to twice the level.
        setup=("OUTP:LOAD INF", "FUNC PULS", "BURS:MODE TRIG", "BURS:NCYC 1", "BURS:STAT ON", "TRIG:SOUR BUS"),
        high="VOLT:HIGH {voltage_v:.6g}",
        low="VOLT:LOW {voltage_v:.6g}",
        width="FUNC:PULS:WIDT {width_s:.6g}",
        period="FUNC:PULS:PER {period_s:.6g}",
        polarity_normal="OUTP:POL NORM",
        polarity_inverted="OUTP:POL INV",
        output_on="OUTP ON",
        output_off="OUTP OFF",
        trigger="*TRG",
        amplitude_max_v=10.0,
        width_min_s=16e-9,
        width_max_s=1e3,
    ),
}

SWITCH_FAMILIES: dict[str, SwitchCommands] = {
    "keysight-34980a": SwitchCommands(
        identity="34980A",
        setup=(),
        close="ROUT:CLOS (@{channels})",
        open_all="ROUT:OPEN:ALL",
        channel="{slot}{bus}{line:02d}",
        max_slot=8,
        max_bus=4,
        max_line=99,
        note="the matrix module in the slot sets the real bus and line counts",
    ),
}


def family(tables: dict, name: str, kind: str):
    """Return the command table ``name`` from ``tables``, or raise naming the known families."""
    from cim_runtime.errors import ConfigError

    if name not in tables:
        raise ConfigError(f"{kind} family {name!r} is unknown: use one of {', '.join(sorted(tables))}")
    return tables[name]
