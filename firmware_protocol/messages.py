"""Message types and payload layouts of the board protocol (SPEC.md in this package).

Fixed fields are packed with :mod:`struct`. The per-cell records of an operation may number in the
millions, so they are numpy structured arrays with little-endian fields, which pack without a Python loop.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import astuple, dataclass

import numpy as np

from cim_runtime.errors import ProtocolError


class MessageType(enum.IntEnum):
    """Message type byte of the header. Host commands are below 0x80, board replies at 0x80 and above."""

    HELLO = 0x01
    READ = 0x10
    PULSE = 0x11
    PULSE_READ = 0x12
    MVM = 0x13
    PROGRAM = 0x14
    BATCH = 0x20
    EXECUTE = 0x21
    ABORT = 0x22
    ACK = 0x80
    HELLO_REPLY = 0x81
    RESULT = 0x82
    DONE = 0x83
    ERROR = 0x8E
    NAK = 0x8F


class ErrorCode(enum.IntEnum):
    """Code of an ERROR reply."""

    UNKNOWN_TYPE = 1
    BAD_PAYLOAD = 2
    UNSUPPORTED_VERSION = 3
    LIMIT = 4
    INVALID_ARGUMENT = 5
    BATCH_UNKNOWN = 6
    BATCH_INCOMPLETE = 7
    BATCH_TOO_LARGE = 8
    ABORTED = 9
    INTERNAL = 10


class NakReason(enum.IntEnum):
    """Reason byte of a NAK: why the board could not read a frame."""

    CRC = 1
    COBS = 2
    SHORT = 3
    LENGTH = 4
    OVERSIZE = 5


#: Capability bits of HELLO_REPLY and the :data:`cim_runtime.driver.base.CAPABILITIES` name of each.
CAPABILITY_BITS = {"batched_pulse": 0x01, "analog_mvm": 0x02, "onboard_program": 0x04}

#: Write-verify scheme codes in PROGRAM; the names are those of cim_runtime.programming.schemes.
SCHEME_CODES = {"fixed": 0, "amplitude-ramp": 1, "width-ramp": 2, "adaptive": 3}


class _Packed:
    """Mixin for frozen dataclasses that map one-to-one onto a :class:`struct.Struct` named ``LAYOUT``."""

    LAYOUT: struct.Struct

    def pack(self) -> bytes:
        return self.LAYOUT.pack(*astuple(self))

    @classmethod
    def unpack(cls, payload: bytes):
        """Parse a payload of exactly ``LAYOUT.size`` bytes.

        Raises:
            ProtocolError: the payload has the wrong length.
        """
        if len(payload) != cls.LAYOUT.size:
            raise ProtocolError(f"{cls.__name__} payload must be {cls.LAYOUT.size} bytes, got {len(payload)}")
        return cls(*cls.LAYOUT.unpack(payload))

    @classmethod
    def unpack_prefix(cls, payload: bytes):
        """Parse the first ``LAYOUT.size`` bytes and return ``(message, rest)``."""
        if len(payload) < cls.LAYOUT.size:
            raise ProtocolError(f"{cls.__name__} needs at least {cls.LAYOUT.size} payload bytes, got {len(payload)}")
        return cls(*cls.LAYOUT.unpack_from(payload)), payload[cls.LAYOUT.size:]


@dataclass(frozen=True)
class Hello(_Packed):
    """HELLO payload (host to board)."""

    LAYOUT = struct.Struct("<BH")
    protocol_version: int
    #: Largest payload the board may put in one reply frame, in bytes.
    max_reply_payload: int


@dataclass(frozen=True)
class HelloReply(_Packed):
    """HELLO_REPLY payload: identity, geometry and limits of the board."""

    LAYOUT = struct.Struct("<BBBB16sIHHHHHIdddddddd")
    protocol_version: int
    firmware_major: int
    firmware_minor: int
    firmware_patch: int
    #: Board serial number, ASCII, padded with zero bytes.
    board_id: bytes
    #: Random number drawn at power-up; a change means the board lost its state.
    boot_id: int
    rows: int
    cols: int
    arrays: int
    #: OR of :data:`CAPABILITY_BITS`.
    capabilities: int
    #: Largest payload the board accepts in one frame, in bytes.
    max_payload: int
    #: Largest staged operation (sum of BATCH bytes) the board accepts, in bytes.
    max_batch_bytes: int
    conductance_min_s: float
    conductance_max_s: float
    read_voltage_max_v: float
    default_read_voltage_v: float
    pulse_amplitude_max_v: float
    pulse_width_min_s: float
    pulse_width_max_s: float
    compliance_max_a: float


@dataclass(frozen=True)
class BatchHeader(_Packed):
    """Start of a BATCH payload; the staged bytes follow it."""

    LAYOUT = struct.Struct("<HI")
    batch_id: int
    #: Position of these bytes in the staged operation, in bytes.
    byte_offset: int


@dataclass(frozen=True)
class ExecuteHeader(_Packed):
    """Start of an EXECUTE payload; the operation's parameters follow it."""

    LAYOUT = struct.Struct("<HBI")
    batch_id: int
    #: Message type of the staged operation (READ, PULSE, PULSE_READ, MVM or PROGRAM).
    operation: int
    #: Length of the staged records, in bytes.
    total_bytes: int


@dataclass(frozen=True)
class ResultHeader(_Packed):
    """Start of a RESULT payload; result bytes follow it."""

    LAYOUT = struct.Struct("<I")
    byte_offset: int


@dataclass(frozen=True)
class DoneHeader(_Packed):
    """Start of a DONE payload; the operation's summary follows it."""

    LAYOUT = struct.Struct("<I")
    #: Length of all RESULT bytes of the operation, in bytes.
    result_bytes: int


@dataclass(frozen=True)
class ErrorReply(_Packed):
    """Start of an ERROR payload; a UTF-8 explanation follows it."""

    LAYOUT = struct.Struct("<H")
    code: int


@dataclass(frozen=True)
class Nak(_Packed):
    """NAK payload."""

    LAYOUT = struct.Struct("<B")
    reason: int


@dataclass(frozen=True)
class ReadParams(_Packed):
    LAYOUT = struct.Struct("<d")
    read_voltage_v: float


@dataclass(frozen=True)
class PulseParams(_Packed):
    LAYOUT = struct.Struct("<d")
    #: Current limit of the source, in amperes; 0 selects the board maximum.
    compliance_a: float


@dataclass(frozen=True)
class PulseReadParams(_Packed):
    LAYOUT = struct.Struct("<dd")
    compliance_a: float
    read_voltage_v: float


@dataclass(frozen=True)
class MvmParams(_Packed):
    LAYOUT = struct.Struct("<H")
    array: int


@dataclass(frozen=True)
class ProgramParams(_Packed):
    """PROGRAM parameters: the fields of ``WriteVerifyConfig``, in its units, plus the scheme code."""

    LAYOUT = struct.Struct("<dddddddHddBddddd")
    tolerance_rel: float
    start_amplitude_v: float
    min_amplitude_v: float
    reversal_shrink: float
    amplitude_step_v: float
    max_amplitude_v: float
    width_s: float
    max_pulses: int
    max_time_s: float
    #: Verify read voltage, in volts; 0 selects the board default.
    read_voltage_v: float
    scheme: int
    width_ramp_factor: float
    max_width_s: float
    adaptive_aim: float
    adaptive_levels: float
    adaptive_reversal_shrink: float


@dataclass(frozen=True)
class ProgramSummary(_Packed):
    """Summary that follows the DONE header of a PROGRAM."""

    LAYOUT = struct.Struct("<Idd")
    rounds: int
    elapsed_s: float
    tolerance_s: float


_CELL = [("array", "<u2"), ("row", "<u2"), ("col", "<u2")]
_CONDUCTANCE = np.dtype([("conductance_s", "<f8")])


@dataclass(frozen=True)
class Operation:
    """Layout of one array operation: its parameters, input records and result records."""

    message_type: MessageType
    params: type[_Packed]
    record: np.dtype
    result: np.dtype
    summary: type[_Packed] | None


def operations(rows: int, cols: int) -> dict[MessageType, Operation]:
    """Return the operation layouts for an array of ``rows`` x ``cols`` (MVM records depend on both)."""
    pulse_record = np.dtype(_CELL + [("amplitude_v", "<f8"), ("width_s", "<f8")])
    return {
        MessageType.READ: Operation(MessageType.READ, ReadParams, np.dtype(_CELL), _CONDUCTANCE, None),
        MessageType.PULSE: Operation(MessageType.PULSE, PulseParams, pulse_record, np.dtype([]), None),
        MessageType.PULSE_READ: Operation(MessageType.PULSE_READ, PulseReadParams, pulse_record, _CONDUCTANCE, None),
        MessageType.MVM: Operation(MessageType.MVM, MvmParams, np.dtype([("voltage_v", "<f8", (rows,))]),
                                   np.dtype([("current_a", "<f8", (cols,))]), None),
        MessageType.PROGRAM: Operation(MessageType.PROGRAM, ProgramParams, np.dtype(_CELL + [("target_s", "<f8")]),
                                       np.dtype([("measured_s", "<f8"), ("pulses", "<u2"), ("in_tolerance", "u1")]),
                                       ProgramSummary),
    }


def spans_cover(spans: list[tuple[int, int]], total: int) -> bool:
    """Tell whether the byte ranges ``[start, end)`` cover ``[0, total)``; ranges may repeat or overlap."""
    covered = 0
    for start, end in sorted(spans):
        if start > covered:
            return False
        covered = max(covered, end)
    return covered >= total


def parse_records(data: bytes, dtype: np.dtype) -> np.ndarray:
    """View ``data`` as an array of ``dtype`` records.

    Raises:
        ProtocolError: the length is not a whole number of records.
    """
    if dtype.itemsize == 0:
        if data:
            raise ProtocolError(f"expected no record bytes, got {len(data)}")
        return np.zeros(0, dtype)
    if len(data) % dtype.itemsize:
        raise ProtocolError(f"{len(data)} bytes is not a whole number of {dtype.itemsize}-byte records")
    return np.frombuffer(data, dtype=dtype)
