"""The board's firmware behaviour in Python, backed by the simulator.

:class:`BoardFirmware` turns each received frame into the reply frames the board sends. It is
transport-free: emulator.py feeds it bytes from a pseudo-terminal or a TCP socket. Every command is
answered once and its reply frames are kept in a cache keyed by sequence number, so a retransmitted
command is answered from the cache and never executed twice.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import random

import numpy as np

from cim_runtime.driver.simulator import SimulatorDriver
from cim_runtime.errors import CimError, ConfigError, LimitError, ProtocolError
from firmware_protocol.codec import PROTOCOL_VERSION, Frame, FrameError, encode_frame
from firmware_protocol.messages import (
    CAPABILITY_BITS, SCHEME_CODES, BatchHeader, DoneHeader, ErrorCode, ErrorReply, ExecuteHeader, Hello, HelloReply,
    MessageType, Nak, NakReason, ProgramSummary, ResultHeader, operations, parse_records, spans_cover,
)

logger = logging.getLogger(__name__)

FIRMWARE_VERSION = (1, 0, 0)
#: Commands whose replies the cache keeps; the host keeps at most 8 commands outstanding.
REPLY_CACHE_SIZE = 16
#: Batches staged at once, so that the host can upload the next batch while the last one runs.
STAGED_BATCHES = 4
_NAK_REASONS = {"crc": NakReason.CRC, "cobs": NakReason.COBS, "short": NakReason.SHORT,
                "length": NakReason.LENGTH, "oversize": NakReason.OVERSIZE}
_SCHEME_NAMES = {code: name for name, code in SCHEME_CODES.items()}


class CountingSimulator(SimulatorDriver):
    """Simulator that counts every pulse it applies, so tests can prove none was applied twice."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Pulses applied so far, one per cell per pulse.
        self.pulses_applied = 0

    def _pulse(self, array, rows, cols, amplitude_v, width_s):
        super()._pulse(array, rows, cols, amplitude_v, width_s)
        self.pulses_applied += rows.size


class BoardError(Exception):
    """A command failed on the board; it becomes an ERROR reply with ``code``."""

    def __init__(self, code: ErrorCode, text: str):
        super().__init__(text)
        self.code = code


class _Staging:
    """Bytes of one operation sent in BATCH frames, placed by offset so a repeated chunk does no harm."""

    def __init__(self, batch_id: int, limit: int):
        self.batch_id = batch_id
        self.limit = limit
        self.data = bytearray()
        self.spans: list[tuple[int, int]] = []

    def put(self, offset: int, chunk: bytes) -> None:
        end = offset + len(chunk)
        if end > self.limit:
            raise BoardError(ErrorCode.BATCH_TOO_LARGE, f"batch of {end} bytes exceeds max_batch_bytes={self.limit}")
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = chunk
        self.spans.append((offset, end))


class BoardFirmware:
    """Protocol state machine of one board.

    Args:
        simulator: the arrays behind the board.
        board_id: serial number reported in HELLO_REPLY, at most 16 ASCII characters.
        max_payload: largest payload the board accepts in a frame, in bytes.
        max_batch_bytes: largest staged operation, in bytes.
    """

    def __init__(self, simulator: SimulatorDriver, *, board_id: str = "CIM-EMU-0001", max_payload: int = 16384,
                 max_batch_bytes: int = 64 * 2**20):
        self.simulator = simulator
        self.board_id = board_id
        self.max_payload = max_payload
        self.max_batch_bytes = max_batch_bytes
        self.boot_id = random.SystemRandom().getrandbits(32)
        info = simulator.info()
        self._operations = operations(info.rows, info.cols)
        # The cache survives a warm reset, as retained RAM on a board would.
        self._cache: collections.OrderedDict[int, tuple[bytes, list[bytes]]] = collections.OrderedDict()
        self._staging: collections.OrderedDict[int, _Staging] = collections.OrderedDict()
        self._reply_payload = 256
        self._send_early = None
        self._sent_early: bytes | None = None
        #: Commands executed, cache hits, malformed frames, errors and resets, for logs and tests.
        self.counters = collections.Counter()

    def warm_reset(self) -> None:
        """Model a watchdog reset: staged batches are lost, the reply cache and the arrays are kept."""
        self._staging.clear()
        self.counters["resets"] += 1
        logger.warning("board %s: warm reset, staged batch dropped", self.board_id)

    def handle(self, item: Frame | FrameError, send_early=None) -> list[bytes]:
        """Return the encoded reply frames for one received frame (or a NAK for a malformed one).

        Args:
            send_early: ``send_early(frame)`` puts a frame on the link at once; PROGRAM uses it for the ACK
                it sends before running. The returned list leaves out a frame sent early, and the reply cache
                keeps it.
        """
        self._send_early = send_early
        self._sent_early = None
        if isinstance(item, FrameError):
            self.counters["bad_frames"] += 1
            return [encode_frame(MessageType.NAK, 0xFFFF, Nak(_NAK_REASONS[item.reason]).pack())]
        digest = hashlib.blake2b(bytes([item.message_type]) + item.payload, digest_size=16).digest()
        cached = self._cache.get(item.seq)
        if cached is not None and cached[0] == digest:
            self.counters["cache_hits"] += 1
            logger.info("board %s: seq %d repeated, resending %d cached reply frames", self.board_id, item.seq, len(cached[1]))
            return cached[1]
        replies = self._execute(item)
        self._cache[item.seq] = (digest, replies)
        self._cache.move_to_end(item.seq)
        while len(self._cache) > REPLY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return [reply for reply in replies if reply is not self._sent_early]

    def _execute(self, frame: Frame) -> list[bytes]:
        self.counters["commands"] += 1
        try:
            if frame.version != PROTOCOL_VERSION:
                raise BoardError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {frame.version} is not supported; use {PROTOCOL_VERSION}")
            return self._dispatch(frame)
        except BoardError as exc:
            return [self._error(frame.seq, exc.code, str(exc))]
        except LimitError as exc:
            return [self._error(frame.seq, ErrorCode.LIMIT, str(exc))]
        except (ConfigError, ProtocolError) as exc:
            return [self._error(frame.seq, ErrorCode.INVALID_ARGUMENT, str(exc))]
        except CimError as exc:
            logger.exception("board %s: command type 0x%02X failed", self.board_id, frame.message_type)
            return [self._error(frame.seq, ErrorCode.INTERNAL, str(exc))]

    def _dispatch(self, frame: Frame) -> list[bytes]:
        kind = frame.message_type
        if kind == MessageType.HELLO:
            return [self._hello(frame)]
        if kind == MessageType.BATCH:
            header, data = BatchHeader.unpack_prefix(frame.payload)
            if header.batch_id not in self._staging:
                self._staging[header.batch_id] = _Staging(header.batch_id, self.max_batch_bytes)
                while len(self._staging) > STAGED_BATCHES:
                    self._staging.popitem(last=False)
            self._staging[header.batch_id].put(header.byte_offset, data)
            return [encode_frame(MessageType.ACK, frame.seq)]
        if kind == MessageType.EXECUTE:
            header, params = ExecuteHeader.unpack_prefix(frame.payload)
            staging = self._staging.pop(header.batch_id, None)
            if staging is None:
                raise BoardError(ErrorCode.BATCH_UNKNOWN, f"batch {header.batch_id} is not staged; send its BATCH frames again")
            if not spans_cover(staging.spans, header.total_bytes) or len(staging.data) != header.total_bytes:
                raise BoardError(ErrorCode.BATCH_INCOMPLETE, f"batch {header.batch_id} lacks bytes of its {header.total_bytes}; send it again")
            return self._run(frame.seq, header.operation, params, bytes(staging.data))
        if kind == MessageType.ABORT:
            self._staging.clear()
            return [encode_frame(MessageType.ACK, frame.seq)]
        if kind in self._operations:
            operation = self._operations[MessageType(kind)]
            size = operation.params.LAYOUT.size
            return self._run(frame.seq, kind, frame.payload[:size], frame.payload[size:])
        raise BoardError(ErrorCode.UNKNOWN_TYPE, f"message type 0x{kind:02X} is not a command")

    def _hello(self, frame: Frame) -> bytes:
        hello = Hello.unpack(frame.payload)
        if hello.protocol_version != PROTOCOL_VERSION:
            raise BoardError(ErrorCode.UNSUPPORTED_VERSION, f"protocol version {hello.protocol_version} is not supported; use {PROTOCOL_VERSION}")
        self._reply_payload = max(64, min(hello.max_reply_payload, self.max_payload))
        info = self.simulator.info()
        capabilities = sum(bit for name, bit in CAPABILITY_BITS.items() if name in info.capabilities or name == "onboard_program")
        reply = HelloReply(
            PROTOCOL_VERSION, *FIRMWARE_VERSION, self.board_id.encode("ascii")[:16], self.boot_id,
            info.rows, info.cols, info.arrays, capabilities, self.max_payload, self.max_batch_bytes,
            info.conductance_min_s, info.conductance_max_s, info.read_voltage_max_v, info.default_read_voltage_v,
            info.pulse_amplitude_max_v, info.pulse_width_min_s, info.pulse_width_max_s, info.compliance_max_a,
        )
        return encode_frame(MessageType.HELLO_REPLY, frame.seq, reply.pack())

    def _run(self, seq: int, kind: int, params_bytes: bytes, record_bytes: bytes) -> list[bytes]:
        if kind not in self._operations:
            raise BoardError(ErrorCode.UNKNOWN_TYPE, f"operation 0x{kind:02X} cannot be executed")
        operation = self._operations[MessageType(kind)]
        params = operation.params.unpack(params_bytes)
        records = parse_records(record_bytes, operation.record)
        # PROGRAM can run for seconds: an ACK first tells the host that it started.
        accepted = [encode_frame(MessageType.ACK, seq)] if kind == MessageType.PROGRAM else []
        if accepted and self._send_early is not None:
            self._send_early(accepted[0])
            self._sent_early = accepted[0]
        columns, summary = self._apply(operation.message_type, params, records)
        results = np.empty(len(records), dtype=operation.result)
        for name, values in columns.items():
            results[name] = values
        result_bytes = results.tobytes()
        step = self._reply_payload - ResultHeader.LAYOUT.size
        frames = accepted + [encode_frame(MessageType.RESULT, seq, ResultHeader(offset).pack() + result_bytes[offset:offset + step])
                  for offset in range(0, len(result_bytes), step)]
        frames.append(encode_frame(MessageType.DONE, seq, DoneHeader(len(result_bytes)).pack() + summary))
        return frames

    def _apply(self, kind: MessageType, params, records: np.ndarray) -> tuple[dict[str, np.ndarray], bytes]:
        """Run one operation on the simulator; return its result fields by name and the DONE summary bytes."""
        sim = self.simulator
        cells = {"rows": records["row"], "cols": records["col"], "array": records["array"]} if kind != MessageType.MVM else {}
        if kind == MessageType.READ:
            return {"conductance_s": sim.read(**cells, read_voltage_v=params.read_voltage_v)}, b""
        if kind in (MessageType.PULSE, MessageType.PULSE_READ):
            compliance_a = params.compliance_a or None
            sim.pulse(amplitude_v=records["amplitude_v"], width_s=records["width_s"], compliance_a=compliance_a, **cells)
            if kind == MessageType.PULSE:
                return {}, b""
            return {"conductance_s": sim.read(**cells, read_voltage_v=params.read_voltage_v)}, b""
        if kind == MessageType.MVM:
            return {"current_a": sim.mvm(records["voltage_v"], array=params.array)}, b""
        return self._program(params, records)

    def _program(self, params, records: np.ndarray) -> tuple[dict[str, np.ndarray], bytes]:
        # Imported here: the programming package pulls in the mapping code, which plain I/O does not need.
        from cim_runtime.mapping import CellTargets
        from cim_runtime.programming import WriteVerifyConfig, write_verify

        if params.scheme not in _SCHEME_NAMES:
            raise BoardError(ErrorCode.INVALID_ARGUMENT, f"scheme code {params.scheme} is unknown; use one of {sorted(_SCHEME_NAMES)}")
        settings = {name: getattr(params, name) for name in params.__dataclass_fields__}
        settings["scheme"] = _SCHEME_NAMES[params.scheme]
        settings["read_voltage_v"] = settings["read_voltage_v"] or None
        config = WriteVerifyConfig(**settings)
        targets = CellTargets(*(np.ascontiguousarray(records[name], dtype=np.int32) for name in ("array", "row", "col")),
                              np.ascontiguousarray(records["target_s"], dtype=np.float64))
        result = write_verify(self.simulator, targets, config, progress=False)
        columns = {"measured_s": result.measured_s, "pulses": result.pulses, "in_tolerance": result.in_tolerance}
        return columns, ProgramSummary(result.rounds, result.elapsed_s, result.tolerance_s).pack()

    def _error(self, seq: int, code: ErrorCode, text: str) -> bytes:
        self.counters["errors"] += 1
        logger.info("board %s: seq %d failed with %s: %s", self.board_id, seq, code.name, text)
        detail = text.encode("utf-8")[: self._reply_payload - ErrorReply.LAYOUT.size]
        return encode_frame(MessageType.ERROR, seq, ErrorReply(code).pack() + detail)
