"""The bench file of the VISA backend: which instruments, how the array is wired to them, and its limits.

A bench file is TOML with five tables; every key is checked and unknown keys are errors::

    [array]                       # the crossbar under test and the limits the backend enforces
    rows = 8
    cols = 8
    conductance_min_s = 2.0e-5
    conductance_max_s = 1.2e-4
    read_voltage_max_v = 0.3
    default_read_voltage_v = 0.1
    pulse_amplitude_max_v = 3.0
    pulse_width_min_s = 1.0e-6
    pulse_width_max_s = 1.0e-2
    compliance_max_a = 1.0e-3

    [visa]
    library = "@py"               # pyvisa-py; "FILE.yaml@sim" for pyvisa-sim; "" for the system VISA
    timeout_s = 5.0               # deadline of every instrument reply

    [smu]                         # forces the read voltage on one row; measures there or at the column
    resource = "TCPIP0::127.0.0.1::5025::SOCKET"
    family = "keysight-b2900"
    channel = 1

    [pulse]                       # fires programming pulses into one row
    resource = "TCPIP0::127.0.0.1::5026::SOCKET"
    family = "keysight-33500b"

    [switch]                      # routes each array line to one instrument bus
    resource = "TCPIP0::127.0.0.1::5027::SOCKET"
    family = "keysight-34980a"
    slot = 1
    first_row_line = 1            # matrix line of array row 0; rows take the lines that follow
    first_col_line = 9            # matrix line of array column 0
    smu_bus = 1
    pulse_bus = 2
    ground_bus = 3
    unselected = "ground"         # or "float"; see below
    sense_bus = 4                 # with "ground": the bus of the SMU's sense channel

With ``unselected = "ground"`` a read grounds every line but the cell's own, and a second SMU
channel (``[smu] sense_channel``, default 2) keeps the cell's column at 0 V and measures its
current, so sneak paths through other cells add nothing. With ``"float"`` (the default, for
one-channel SMUs) the other lines are left open, which suits arrays with selector devices.

``first_col_line`` is required. A relative pyvisa-sim file in ``library`` is found beside the bench
file. The limits in ``[array]`` are those of the device under test. They must also lie within what the
instrument families can do (``visa_commands``), which the loader checks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from pyvisa.rname import InvalidResourceName, parse_resource_name, to_canonical_name

from cim_runtime.driver.visa_commands import PULSE_FAMILIES, SMU_FAMILIES, SWITCH_FAMILIES, family
from cim_runtime.errors import ConfigError
from cim_runtime.files import read_toml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayLimits:
    """The ``[array]`` table: geometry of the array under test and the limits of every request.

    The names and units are those of :class:`~cim_runtime.driver.base.ArrayInfo`, which documents them.
    """

    rows: int
    cols: int
    conductance_min_s: float
    conductance_max_s: float
    read_voltage_max_v: float
    pulse_amplitude_max_v: float
    pulse_width_min_s: float
    pulse_width_max_s: float
    compliance_max_a: float
    default_read_voltage_v: float = 0.1


@dataclass(frozen=True)
class VisaSettings:
    """The ``[visa]`` table."""

    library: str = "@py"
    timeout_s: float = 5.0


@dataclass(frozen=True)
class SmuSettings:
    resource: str
    family: str
    channel: int = 1
    #: Channel that keeps the read column at 0 V and measures its current, with ``unselected = "ground"``.
    sense_channel: int = 2


@dataclass(frozen=True)
class PulseSettings:
    resource: str
    family: str


@dataclass(frozen=True)
class SwitchSettings:
    resource: str
    family: str
    first_col_line: int
    slot: int = 1
    first_row_line: int = 1
    smu_bus: int = 1
    pulse_bus: int = 2
    ground_bus: int = 3
    #: Bus of the SMU's sense channel, with ``unselected = "ground"``.
    sense_bus: int = 4
    #: What the lines of other cells do during a read: ``float`` (open), or ``ground`` (tied to the
    #: ground bus, with the current measured at the read column by the sense channel).
    unselected: str = "float"

    @property
    def grounded(self) -> bool:
        """Whether reads ground the unselected lines and sense at the column."""
        return self.unselected == "ground"


#: Read schemes of ``[switch] unselected``.
UNSELECTED_LINES = ("float", "ground")


@dataclass(frozen=True)
class BenchConfig:
    """A whole bench file, checked."""

    array: ArrayLimits
    visa: VisaSettings
    smu: SmuSettings
    pulse: PulseSettings
    switch: SwitchSettings
    #: Where the file was read from, for messages.
    source: str = "bench"

    def __post_init__(self) -> None:
        _check_array(self.array, self.source)
        _check_instruments(self, self.source)


def _table(raw: dict, name: str, kind, source: str):
    """Build the dataclass ``kind`` from table ``name``, with unknown, missing and mistyped keys as errors."""
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] in {source} must be a table")
    known = {item.name: item for item in fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in [{name}] of {source}: valid keys are {', '.join(known)}")
    for key, value in values.items():
        expected_type = known[key].type
        if expected_type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r} in [{name}] of {source} must be an integer")
        if expected_type == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
            raise ConfigError(f"{key}={value!r} in [{name}] of {source} must be a finite number")
        if expected_type == "str" and not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} in [{name}] of {source} must be a string")
    try:
        return kind(**values)
    except TypeError:
        missing = [item.name for item in fields(kind) if item.name not in values and item.default is MISSING and item.default_factory is MISSING]
        raise ConfigError(f"[{name}] of {source} lacks {', '.join(missing)}") from None


def _positive(source: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{name}={value!r} in {source} is invalid: must be above 0")


def _check_array(array: ArrayLimits, source: str) -> None:
    _positive(source, rows=array.rows, cols=array.cols, conductance_min_s=array.conductance_min_s,
              read_voltage_max_v=array.read_voltage_max_v, pulse_amplitude_max_v=array.pulse_amplitude_max_v,
              pulse_width_min_s=array.pulse_width_min_s, compliance_max_a=array.compliance_max_a)
    if not array.conductance_max_s > array.conductance_min_s:
        raise ConfigError(f"conductance_max_s={array.conductance_max_s!r} in {source} must be above conductance_min_s={array.conductance_min_s!r}")
    if not array.pulse_width_max_s >= array.pulse_width_min_s:
        raise ConfigError(f"pulse_width_max_s={array.pulse_width_max_s!r} in {source} must be at least pulse_width_min_s={array.pulse_width_min_s!r}")
    if not 0 < array.default_read_voltage_v <= array.read_voltage_max_v:
        raise ConfigError(f"default_read_voltage_v={array.default_read_voltage_v!r} in {source} must be above 0 and at most "
                          f"read_voltage_max_v={array.read_voltage_max_v!r}")


#: Shortest and longest reply deadline, in seconds. pyvisa counts whole milliseconds.
TIMEOUT_RANGE_S = (1e-3, 3600.0)


def _check_instruments(bench: BenchConfig, source: str) -> None:
    _check_resources(bench, source)
    _check_instrument_limits(bench, source)
    _check_wiring(bench, source)
    low, high = TIMEOUT_RANGE_S
    if not low <= bench.visa.timeout_s <= high:
        raise ConfigError(f"timeout_s={bench.visa.timeout_s!r} in [visa] of {source} is invalid: must be between {low:g} and {high:g} s")
    array = bench.array
    # With grounded unselected lines, the force channel feeds every cell of the row.
    cells = array.cols if bench.switch.grounded else 1
    largest_a = cells * array.conductance_max_s * array.default_read_voltage_v
    if largest_a > array.compliance_max_a:
        logger.warning("in %s, %d cell(s) at conductance_max_s read at default_read_voltage_v pass %g A, above compliance_max_a=%g A: "
                       "such reads will stop at the compliance", source, cells, largest_a, array.compliance_max_a)


def _check_resources(bench: BenchConfig, source: str) -> None:
    """Check that each resource is a VISA resource name and that no two roles share one."""
    seen: dict[str, str] = {}
    for name in ("smu", "pulse", "switch"):
        resource = getattr(bench, name).resource
        try:
            parse_resource_name(resource)
        except InvalidResourceName:
            raise ConfigError(f"resource={resource!r} in [{name}] of {source} is not a VISA resource name: use one such as "
                              "'TCPIP0::192.168.1.20::5025::SOCKET', 'TCPIP0::HOST::inst0::INSTR' or 'GPIB0::23::INSTR'") from None
        key = resource_key(resource)
        if key in seen:
            raise ConfigError(f"[{seen[key]}] and [{name}] in {source} name the same resource {resource!r}: give each instrument its own")
        seen[key] = name


def resource_key(resource: str) -> str:
    """Return a resource name in one spelling (``TCPIP::h::5025::SOCKET`` and ``TCPIP0::h::5025::SOCKET`` agree)."""
    try:
        return to_canonical_name(resource).upper()
    except InvalidResourceName:
        return resource.upper()


def _check_instrument_limits(bench: BenchConfig, source: str) -> None:
    """Check the SMU channel and that the array's limits lie within what the instrument families can do."""
    smu = family(SMU_FAMILIES, bench.smu.family, "SMU")
    pulse = family(PULSE_FAMILIES, bench.pulse.family, "pulse generator")
    array = bench.array
    if not 1 <= bench.smu.channel <= smu.channels:
        raise ConfigError(f"channel={bench.smu.channel} in [smu] of {source} is invalid: a {bench.smu.family} has channels 1 to {smu.channels}")
    if bench.switch.grounded and (not 1 <= bench.smu.sense_channel <= smu.channels or bench.smu.sense_channel == bench.smu.channel):
        raise ConfigError(f"sense_channel={bench.smu.sense_channel} in [smu] of {source} is invalid: unselected = \"ground\" needs a "
                          f"second channel of the {bench.smu.family} (channels 1 to {smu.channels}, other than channel="
                          f"{bench.smu.channel}); use unselected = \"float\" with a one-channel SMU")
    for name, value, limit, instrument in (
            ("read_voltage_max_v", array.read_voltage_max_v, smu.voltage_max_v, bench.smu.family),
            ("compliance_max_a", array.compliance_max_a, smu.current_max_a, bench.smu.family),
            ("pulse_amplitude_max_v", array.pulse_amplitude_max_v, pulse.amplitude_max_v, bench.pulse.family),
            ("pulse_width_max_s", array.pulse_width_max_s, pulse.width_max_s, bench.pulse.family)):
        if value > limit:
            raise ConfigError(f"{name}={value!r} in {source} is beyond what a {instrument} can do ({limit:g}): lower it")
    if array.pulse_width_min_s < pulse.width_min_s:
        raise ConfigError(f"pulse_width_min_s={array.pulse_width_min_s!r} in {source} is below the {bench.pulse.family}'s "
                          f"shortest pulse ({pulse.width_min_s:g} s): raise it")


def _check_wiring(bench: BenchConfig, source: str) -> None:
    """Check the slot, the buses and that rows and columns take separate lines that the matrix has."""
    matrix = family(SWITCH_FAMILIES, bench.switch.family, "switch matrix")
    array, switch = bench.array, bench.switch
    if not 1 <= switch.slot <= matrix.max_slot:
        raise ConfigError(f"slot={switch.slot} in [switch] of {source} is invalid: a {switch.family} has slots 1 to {matrix.max_slot}")
    if switch.unselected not in UNSELECTED_LINES:
        raise ConfigError(f"unselected={switch.unselected!r} in [switch] of {source} is invalid: use \"float\" or \"ground\"")
    names = ("smu_bus", "pulse_bus", "ground_bus") + (("sense_bus",) if switch.grounded else ())
    buses = tuple(getattr(switch, name) for name in names)
    if len(set(buses)) != len(buses) or not all(1 <= bus <= matrix.max_bus for bus in buses):
        raise ConfigError(f"{', '.join(names)} in {source} must be different buses from 1 to {matrix.max_bus}, got {buses}")
    rows = range(switch.first_row_line, switch.first_row_line + array.rows)
    cols = range(switch.first_col_line, switch.first_col_line + array.cols)
    for name, lines in (("rows", rows), ("columns", cols)):
        if lines.start < 1 or lines.stop - 1 > matrix.max_line:
            raise ConfigError(f"the array's {name} would use matrix lines {lines.start} to {lines.stop - 1} in {source}: lines run "
                              f"from 1 to {matrix.max_line}, so change first_row_line or first_col_line")
    if set(rows) & set(cols):
        raise ConfigError(f"rows (lines {rows.start} to {rows.stop - 1}) and columns (lines {cols.start} to {cols.stop - 1}) "
                          f"overlap on the matrix in {source}: set first_col_line to {rows.stop} or above")


def bench_from_dict(raw: dict, source: str = "bench") -> BenchConfig:
    """Check a parsed bench file and return it."""
    unknown = sorted(set(raw) - {"array", "visa", "smu", "pulse", "switch"})
    if unknown:
        raise ConfigError(f"unknown table(s) {', '.join(unknown)} in {source}: a bench file has array, visa, smu, pulse and switch")
    for name in ("array", "smu", "pulse", "switch"):
        if name not in raw:
            raise ConfigError(f"{source} lacks its [{name}] table")
    return BenchConfig(
        array=_table(raw, "array", ArrayLimits, source), visa=_table(raw, "visa", VisaSettings, source),
        smu=_table(raw, "smu", SmuSettings, source), pulse=_table(raw, "pulse", PulseSettings, source),
        switch=_table(raw, "switch", SwitchSettings, source), source=source,
    )


def load_bench(path: str | Path) -> BenchConfig:
    """Read and check a bench file.

    A relative pyvisa-sim file in ``library`` ("sim.yaml@sim") is taken from the bench file's folder.

    Raises:
        DataError: the file is missing or not valid TOML.
        ConfigError: a table or key is missing, unknown or out of range.
    """
    raw = read_toml(path, "bench file")
    visa = raw.get("visa")
    if isinstance(visa, dict) and isinstance(visa.get("library"), str):
        yaml_file, marker, backend = visa["library"].rpartition("@")
        if marker and backend == "sim" and yaml_file and not Path(yaml_file).is_absolute():
            visa["library"] = f"{Path(path).parent / yaml_file}@sim"
    return bench_from_dict(raw, str(path))
