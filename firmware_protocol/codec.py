"""Frame codec of the board protocol: header, CRC-16/CCITT-FALSE and COBS framing.

A frame on the wire is ``COBS(header + payload + crc) + 0x00``. The header is six little-endian bytes:
protocol version (u8), message type (u8), sequence number (u16) and payload length (u16). The CRC is
CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR) over header and
payload, appended little-endian. SPEC.md in this package is the full definition.
"""

from __future__ import annotations

import binascii
import logging
import struct
from dataclasses import dataclass

from cobs import cobs

from cim_runtime.errors import ProtocolError

logger = logging.getLogger(__name__)

#: Protocol version this codec writes into every header.
PROTOCOL_VERSION = 1
#: Frame delimiter; COBS removes every zero byte from the encoded frame.
DELIMITER = b"\x00"
HEADER = struct.Struct("<BBHH")
CRC = struct.Struct("<H")
#: Largest payload the 16-bit length field can describe, in bytes.
MAX_PAYLOAD = 0xFFFF
#: Longest encoded frame (without its delimiter): COBS adds one byte per 254 bytes, plus one.
MAX_ENCODED = HEADER.size + MAX_PAYLOAD + CRC.size + (HEADER.size + MAX_PAYLOAD + CRC.size) // 254 + 1


def crc16_ccitt_false(data: bytes) -> int:
    """Compute CRC-16/CCITT-FALSE of ``data``; the check value of ``b"123456789"`` is 0x29B1.

    ``binascii.crc_hqx`` implements the same polynomial without reflection, so seeding it with 0xFFFF
    gives this CRC at C speed.
    """
    return binascii.crc_hqx(data, 0xFFFF)


class FrameError(ProtocolError):
    """A received frame is malformed: bad COBS, too short, wrong length field or CRC mismatch."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        #: Short machine-readable cause: ``cobs``, ``short``, ``length``, ``crc`` or ``oversize``.
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    version: int
    message_type: int
    seq: int
    payload: bytes


def encode_frame(message_type: int, seq: int, payload: bytes = b"", *, version: int = PROTOCOL_VERSION) -> bytes:
    """Build the wire bytes of one frame, trailing delimiter included.

    Raises:
        ProtocolError: the payload is longer than :data:`MAX_PAYLOAD` or a header field is out of range.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes is too long: the limit is {MAX_PAYLOAD} bytes")
    if not (0 <= message_type <= 0xFF and 0 <= seq <= 0xFFFF and 0 <= version <= 0xFF):
        raise ProtocolError(f"header field is invalid: version={version} and type={message_type} must be 0 to 255, seq={seq} 0 to 65535")
    body = HEADER.pack(version, message_type, seq, len(payload)) + payload
    return cobs.encode(body + CRC.pack(crc16_ccitt_false(body))) + DELIMITER


def decode_frame(encoded: bytes) -> Frame:
    """Decode one frame from its COBS bytes, without the delimiter.

    Raises:
        FrameError: the bytes are not a valid frame; ``reason`` names the check that failed.
    """
    if len(encoded) > MAX_ENCODED:
        raise FrameError("oversize", f"frame of {len(encoded)} encoded bytes exceeds the limit of {MAX_ENCODED}")
    try:
        raw = cobs.decode(encoded)
    except cobs.DecodeError as exc:
        raise FrameError("cobs", f"invalid COBS encoding: {exc}") from None
    if len(raw) < HEADER.size + CRC.size:
        raise FrameError("short", f"frame of {len(raw)} bytes is shorter than header and CRC ({HEADER.size + CRC.size} bytes)")
    body, (received_crc,) = raw[:-CRC.size], CRC.unpack(raw[-CRC.size:])
    computed_crc = crc16_ccitt_false(body)
    if received_crc != computed_crc:
        raise FrameError("crc", f"CRC mismatch: frame carries 0x{received_crc:04X}, computed 0x{computed_crc:04X}")
    version, message_type, seq, length = HEADER.unpack_from(body)
    if length != len(body) - HEADER.size:
        raise FrameError("length", f"length field is {length} bytes but the frame carries {len(body) - HEADER.size} payload bytes")
    return Frame(version, message_type, seq, bytes(body[HEADER.size:]))


class FrameReader:
    """Split a byte stream into frames at each delimiter.

    :meth:`feed` never raises on bad input. A malformed frame is counted and skipped, and decoding
    resumes at the next delimiter. A damaged byte thus costs the frame it sits in, or two frames where
    it hits a delimiter. A run of bytes longer than any valid frame is dropped without being stored,
    which bounds memory.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._overflowed = False
        #: Malformed frames seen so far, by :attr:`FrameError.reason`.
        self.errors: dict[str, int] = {}

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Consume ``data`` and return every frame it completes, in order, with a FrameError for each bad one."""
        out: list[Frame | FrameError] = []
        start = 0
        while True:
            end = data.find(DELIMITER, start)
            if end < 0:
                self._append(data[start:])
                return out
            self._append(data[start:end])
            item = self._finish_frame()
            if item is not None:
                out.append(item)
            start = end + 1

    def reset(self) -> None:
        """Drop any partial frame (after a reconnect, for example)."""
        self._buffer.clear()
        self._overflowed = False

    def _append(self, chunk: bytes) -> None:
        if self._overflowed:
            return
        if len(self._buffer) + len(chunk) > MAX_ENCODED:
            self._buffer.clear()
            self._overflowed = True
            return
        self._buffer += chunk

    def _finish_frame(self) -> Frame | FrameError | None:
        encoded, overflowed = bytes(self._buffer), self._overflowed
        self.reset()
        if overflowed:
            error = FrameError("oversize", f"dropped a run of more than {MAX_ENCODED} bytes without a delimiter")
        elif not encoded:
            return None  # Back-to-back delimiters: senders may put one before each frame.
        else:
            try:
                return decode_frame(encoded)
            except FrameError as exc:
                error = exc
        self.errors[error.reason] = self.errors.get(error.reason, 0) + 1
        logger.debug("skipped a malformed frame: %s", error)
        return error
