"""Serial backend: a memristor test board that speaks the firmware protocol (firmware_protocol/SPEC.md).

URL grammar (quote it in a shell, because ``&`` ends a command there):

* ``serial:///dev/ttyACM0?baudrate=921600`` opens a serial port (a USB board or a pty of the emulator).
* ``socket://127.0.0.1:5555`` opens a TCP connection (the emulator's ``--tcp`` mode).
* ``spy:///dev/ttyACM0?file=dump.txt`` opens a serial port through pyserial's ``spy://`` wrapper, which
  writes a hex dump of all traffic. Its own options ``file``, ``color``, ``raw`` and ``all`` pass through.

Options of every form:

* ``baudrate``: line rate of a serial port, default 921600.
* ``timeout_s``: wait for a reply frame, in seconds, default 1.
* ``retries``: retransmissions in a row without a command completing, default 8.
* ``reconnect_s``: how long to try to reopen the port after a disconnect, in seconds, default 10.
* ``frame_bytes``: largest payload per frame in each direction, the board's maximum if omitted. Use a
  small value, such as 96, on a noisy link.
* ``link_bytes_per_s``: link rate, which lengthens deadlines for long frames; baudrate / 10 if omitted.
"""

from __future__ import annotations

import itertools
import logging
import time
from urllib.parse import urlencode, urlsplit

import numpy as np
from tenacity import Retrying, retry_if_exception, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_fixed

from cim_runtime.driver.base import ArrayDriver, ArrayInfo
from cim_runtime.driver.serial_link import FrameLink
from cim_runtime.errors import ConfigError, DeviceReportedError, DeviceTimeoutError, ProtocolError, TransportError
from firmware_protocol.codec import MAX_PAYLOAD, PROTOCOL_VERSION, Frame, FrameError, encode_frame
from firmware_protocol.messages import (
    CAPABILITY_BITS, SCHEME_CODES, BatchHeader, DoneHeader, ErrorCode, ErrorReply, ExecuteHeader, Hello, HelloReply,
    MessageType, MvmParams, Operation, ProgramParams, ProgramSummary, PulseParams, PulseReadParams, ReadParams, ResultHeader, operations,
    parse_records, spans_cover,
)

logger = logging.getLogger(__name__)

DEFAULT_BAUDRATE = 921600
#: Options of serial://, socket:// and spy:// URLs that this driver reads; spy:// also passes its own.
URL_OPTIONS = {"baudrate", "timeout_s", "retries", "reconnect_s", "frame_bytes", "link_bytes_per_s"}
SPY_OPTIONS = {"file", "color", "raw", "all"}
#: Re-uploads of a batch that the board lost to a reset, before giving up.
BATCH_ATTEMPTS = 3
#: Commands the host keeps outstanding at once. It stays below the board's reply cache of 16 commands,
#: so a retransmitted command always finds its reply there.
WINDOW = 8
#: Cells per on-board PROGRAM run; several runs let targets go up while results come down.
PROGRAM_GROUP_CELLS = 2048


class BoardArgumentError(DeviceReportedError, ConfigError):
    """The board rejected a request's arguments (a repeated cell, a value outside its limits)."""


class BoardChangedError(TransportError):
    """After a reconnect, another board or a power-cycled one replied; whether the last command ran is unknown."""


def _is_retryable(error: BaseException) -> bool:
    return isinstance(error, (TransportError, _Retransmit)) and not isinstance(error, (BoardChangedError, LinkGoneError))


class LinkGoneError(TransportError):
    """The link was lost and did not come back within the reconnect window."""


class _Retransmit(ProtocolError):
    """The command must be sent again: the board sent a NAK, or reply frames went missing."""


class _BatchLost(ProtocolError):
    """The board lost the staged batch (it was reset); upload it again."""


class _Reply:
    """Collects the reply frames of one command across retransmissions."""

    def __init__(self, kind: MessageType, result_bytes: int = 0):
        self.kind = kind
        self.data = bytearray(result_bytes)
        self._spans: list[tuple[int, int]] = []
        self.payload: bytes | None = None
        #: True once the board acknowledged a long operation (PROGRAM) and started running it.
        self.started = False

    def accept(self, frame: Frame) -> bool:
        """Take one frame that echoes the command's sequence number; return True when the reply is complete."""
        if frame.message_type == MessageType.ACK and self.kind == MessageType.DONE:
            self.started = True
            return False
        if frame.message_type == MessageType.RESULT and self.kind == MessageType.DONE:
            header, chunk = ResultHeader.unpack_prefix(frame.payload)
            end = header.byte_offset + len(chunk)
            if end > len(self.data):
                raise ProtocolError(f"RESULT bytes {header.byte_offset}..{end} lie beyond the expected {len(self.data)} bytes")
            self.data[header.byte_offset:end] = chunk
            self._spans.append((header.byte_offset, end))
            return False
        if frame.message_type != self.kind:
            raise ProtocolError(f"expected a {self.kind.name} reply, got message type 0x{frame.message_type:02X}")
        if self.kind == MessageType.DONE:
            header, summary = DoneHeader.unpack_prefix(frame.payload)
            if header.result_bytes != len(self.data):
                raise ProtocolError(f"DONE reports {header.result_bytes} result bytes, the host expected {len(self.data)}")
            if not spans_cover(self._spans, len(self.data)):
                raise _Retransmit("RESULT frames are missing")
            self.payload = summary
        else:
            self.payload = frame.payload
        return True

class _Command:
    """One command frame and the reply it collects."""

    def __init__(self, kind: MessageType, seq: int, payload: bytes, reply: _Reply, *, transfer_s: float,
                 barrier: bool = False, run_wait_s: float = 0.0):
        self.kind = kind
        self.seq = seq
        self.frame = encode_frame(kind, seq, payload)
        self.reply = reply
        #: Link time of the command and its reply, in seconds.
        self.transfer_s = transfer_s
        #: Send only when every earlier command is complete (EXECUTE must follow all of its BATCH frames).
        self.barrier = barrier
        #: How long the board may run after acknowledging the command, in seconds.
        self.run_wait_s = run_wait_s
        self.complete = False


def _raise_board_error(frame: Frame) -> None:
    header, detail = ErrorReply.unpack_prefix(frame.payload)
    text = detail.decode("utf-8", errors="replace")
    code = header.code
    if code in (ErrorCode.BATCH_UNKNOWN, ErrorCode.BATCH_INCOMPLETE):
        raise _BatchLost(text)
    if code in (ErrorCode.LIMIT, ErrorCode.INVALID_ARGUMENT):
        raise BoardArgumentError(code, text)
    try:
        name = ErrorCode(code).name
    except ValueError:
        name = "unknown code"
    raise DeviceReportedError(code, f"{name}: {text}")


class SerialDriver(ArrayDriver):
    """Driver of a board on a serial link, with retransmission, resynchronisation and reconnection.

    Every command carries a sequence number. Replies with another number are stale and dropped. A
    command that times out, draws a NAK or loses reply frames is sent again with the same number, up to
    ``retries`` times. The board replies to a repeated command from its reply cache, so no pulse is applied
    twice. After a disconnect the driver reopens the port, repeats the handshake, checks that the same
    board came back with its state, and continues the command in progress.
    """

    def __init__(self, port_url: str, *, baudrate: int = DEFAULT_BAUDRATE, timeout_s: float = 1.0, retries: int = 8,
                 reconnect_s: float = 10.0, frame_bytes: int | None = None, link_bytes_per_s: float | None = None):
        super().__init__()
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s={timeout_s} is invalid: must be above 0 seconds")
        if retries < 0 or reconnect_s < 0:
            raise ConfigError(f"retries={retries} and reconnect_s={reconnect_s} are invalid: each must be at least 0")
        if frame_bytes is not None and not 64 <= frame_bytes <= MAX_PAYLOAD:
            raise ConfigError(f"frame_bytes={frame_bytes} is invalid: must be between 64 and {MAX_PAYLOAD} inclusive")
        self.timeout_s = timeout_s
        self.retries = retries
        self.reconnect_s = reconnect_s
        self.link_bytes_per_s = link_bytes_per_s or baudrate / 10
        self._link = FrameLink(port_url, baudrate)
        self._seq = itertools.count(1)
        self._batch_ids = itertools.count(1)
        self._frame_bytes_requested = frame_bytes or MAX_PAYLOAD
        self._frame_bytes = self._frame_bytes_requested
        self._link.open()
        try:
            self.hello = self._handshake()
        except BaseException:
            self._link.close()
            raise
        self._frame_bytes = min(self._frame_bytes_requested, self.hello.max_payload)
        self._operations = operations(self.hello.rows, self.hello.cols)
        self._info = self._make_info(self.hello)
        logger.info("opened board %s: %d arrays of %d x %d", self._info.identity, self.hello.arrays, self.hello.rows, self.hello.cols)

    # Public API beyond ArrayDriver.

    def info(self) -> ArrayInfo:
        return self._info

    @property
    def counters(self) -> dict[str, int]:
        """Traffic and recovery counts: bytes, bad frames, NAKs, stale replies, retransmissions, reconnects."""
        return dict(self._link.counters)

    def program(self, targets, config=None, *, group_cells: int = PROGRAM_GROUP_CELLS):
        """Run write-verify on the board itself and return a ``WriteVerifyResult``.

        Only the targets and the per-cell results cross the link. The board runs write-verify on groups of
        ``group_cells`` cells (fewer where its batch memory is smaller), and the host uploads the next
        group while the results of the last one come back. Pass ``group_cells=len(targets)`` for one
        run, whose outcome then equals that of host-side write-verify on the same board. The board
        uses its own pulse law for the adaptive scheme.

        Raises:
            ConfigError: the board lacks the ``onboard_program`` capability or ``config`` does not fit the protocol.
        """
        from cim_runtime.programming import WriteVerifyConfig
        from cim_runtime.programming.write_verify import WriteVerifyResult

        config = config or WriteVerifyConfig()
        if "onboard_program" not in self._info.capabilities:
            raise ConfigError(f"board {self._info.identity} cannot program on board; use cim_runtime.programming.write_verify")
        if not 0 <= config.max_pulses <= 0xFFFF:
            raise ConfigError(f"max_pulses={config.max_pulses} is invalid for on-board programming: must be at most 65535")
        settings = {name: getattr(config, name) for name in ProgramParams.__dataclass_fields__}
        settings.update(scheme=SCHEME_CODES[config.scheme], read_voltage_v=config.read_voltage_v or 0.0)
        operation = self._operations[MessageType.PROGRAM]
        records = np.empty(len(targets), dtype=operation.record)
        for name, values in (("array", targets.array), ("row", targets.row), ("col", targets.col), ("target_s", targets.target_s)):
            records[name] = values
        started = time.monotonic()
        results, summaries = self._run_operation(operation, ProgramParams(**settings), records, run_wait_s=config.max_time_s,
                                                 group_records=group_cells)
        parsed = [ProgramSummary.unpack(summary) for summary in summaries]
        return WriteVerifyResult(
            targets, results["measured_s"].astype(np.float64), results["pulses"].astype(np.int32),
            results["in_tolerance"].astype(bool), parsed[0].tolerance_s if parsed else 0.0,
            time.monotonic() - started, max((item.rounds for item in parsed), default=0),
        )

    # ArrayDriver hooks.

    def _read(self, array, rows, cols, read_voltage_v):
        operation = self._operations[MessageType.READ]
        results, _ = self._run_operation(operation, ReadParams(read_voltage_v), self._cells(operation, array, rows, cols))
        return results["conductance_s"].astype(np.float64).reshape(rows.shape)

    def _pulse(self, array, rows, cols, amplitude_v, width_s):
        operation = self._operations[MessageType.PULSE]
        records = self._cells(operation, array, rows, cols)
        records["amplitude_v"] = amplitude_v.ravel()
        records["width_s"] = width_s.ravel()
        self._run_operation(operation, PulseParams(0.0), records)

    def pulse_read(self, rows, cols, amplitude_v, width_s, *, array=0, read_voltage_v: float | None = None) -> np.ndarray:
        """Pulse the cells and read them back in one exchange; returns conductances in siemens."""
        array, rows, cols = self._check_cells(array, rows, cols)
        amplitude_v = self._check_amplitude(amplitude_v, rows.shape)
        width_s = self._check_width(width_s, rows.shape)
        voltage = self._check_read_voltage(read_voltage_v)
        operation = self._operations[MessageType.PULSE_READ]
        records = self._cells(operation, array, rows, cols)
        records["amplitude_v"] = amplitude_v.ravel()
        records["width_s"] = width_s.ravel()
        results, _ = self._run_operation(operation, PulseReadParams(0.0, voltage), records)
        return results["conductance_s"].astype(np.float64).reshape(rows.shape)

    def _mvm(self, array, voltages_v):
        operation = self._operations[MessageType.MVM]
        batch = voltages_v.reshape(-1, self.hello.rows)
        records = np.empty(len(batch), dtype=operation.record)
        records["voltage_v"] = batch
        results, _ = self._run_operation(operation, MvmParams(array), records)
        currents = results["current_a"].astype(np.float64)
        return currents.reshape(voltages_v.shape[:-1] + (self.hello.cols,))

    def _close(self) -> None:
        self._link.close()

    # Operations: one frame when they fit, otherwise BATCH frames and EXECUTE.

    @staticmethod
    def _cells(operation: Operation, array, rows, cols) -> np.ndarray:
        records = np.empty(rows.size, dtype=operation.record)
        records["array"] = array.ravel()
        records["row"] = rows.ravel()
        records["col"] = cols.ravel()
        return records

    def _run_operation(self, operation: Operation, params, records: np.ndarray, *, run_wait_s: float = 0.0,
                       group_records: int | None = None):
        """Run ``operation`` on ``records``; return the result records and the DONE summaries, one per run.

        Records that exceed the board's batch memory, or ``group_records``, run in several groups.
        """
        per_run = max(1, self.hello.max_batch_bytes // max(1, operation.record.itemsize))
        if group_records is not None:
            per_run = min(per_run, group_records)
        groups = [records[start:start + per_run] for start in range(0, max(1, len(records)), per_run)]
        plans: dict[int, list[_Command]] = {}
        pending = list(range(len(groups)))
        for attempt in range(1, BATCH_ATTEMPTS + 1):
            for group in pending:
                plans[group] = self._plan(operation, params, groups[group], run_wait_s)
            try:
                self._exchange([command for group in pending for command in plans[group]])
                break
            except _BatchLost as exc:
                pending = [group for group in pending if not plans[group][-1].complete]
                logger.warning("board %s lost a staged batch (%s); uploading %d group(s) again, attempt %d of %d",
                               self._info.identity, exc, len(pending), attempt + 1, BATCH_ATTEMPTS)
        else:
            raise ProtocolError(f"board {self._info.identity} lost staged batches {BATCH_ATTEMPTS} times; check its power and reset line")
        done = [plans[group][-1].reply for group in range(len(groups))]
        results = [parse_records(bytes(reply.data), operation.result) for reply in done]
        return np.concatenate(results), [bytes(reply.payload) for reply in done]

    def _plan(self, operation: Operation, params, records: np.ndarray, run_wait_s: float) -> list[_Command]:
        """Build the commands of one run: the operation in one frame, or BATCH frames and EXECUTE."""
        record_bytes = records.tobytes()
        result_bytes = len(records) * operation.result.itemsize
        reply = _Reply(MessageType.DONE, result_bytes)
        result_s = result_bytes / self.link_bytes_per_s
        single = params.pack() + record_bytes
        if len(single) <= self._frame_bytes:
            return [self._new_command(operation.message_type, single, reply, result_s, run_wait_s=run_wait_s)]
        batch_id = next(self._batch_ids) & 0xFFFF
        step = self._frame_bytes - BatchHeader.LAYOUT.size
        commands = [self._new_command(MessageType.BATCH, BatchHeader(batch_id, offset).pack() + record_bytes[offset:offset + step],
                                      _Reply(MessageType.ACK), 0.0)
                    for offset in range(0, len(record_bytes), step)]
        execute = ExecuteHeader(batch_id, operation.message_type, len(record_bytes)).pack() + params.pack()
        commands.append(self._new_command(MessageType.EXECUTE, execute, reply, result_s, barrier=True, run_wait_s=run_wait_s))
        return commands

    def _new_command(self, kind: MessageType, payload: bytes, reply: _Reply, reply_s: float, **options) -> _Command:
        transfer_s = (len(payload) + 16) / self.link_bytes_per_s + reply_s
        return _Command(kind, next(self._seq) & 0xFFFF, payload, reply, transfer_s=transfer_s, **options)

    # Sending commands, with retransmission.

    def _exchange(self, commands: list[_Command]) -> None:
        """Send ``commands`` in order, up to :data:`WINDOW` at a time, and collect every reply.

        After a timeout, a NAK, missing RESULT frames or a lost link, every command without a complete
        reply is sent again with its own sequence number, and the board answers those it already ran
        from its reply cache. The exchange fails after ``retries`` retransmissions in a row without a
        command completing.
        """
        failures = 0

        def give_up(state) -> bool:
            nonlocal failures
            failures += 1
            return failures > self.retries

        def made_progress() -> None:
            nonlocal failures
            failures = 0

        retrying = Retrying(stop=give_up, retry=retry_if_exception(_is_retryable), reraise=True,
                            before_sleep=lambda state: self._note_retry(state, failures))
        for attempt in retrying:
            with attempt:
                if not self._link.is_open:
                    self._reconnect()
                self._pump([command for command in commands if not command.complete], made_progress)

    def _note_retry(self, state, failures: int) -> None:
        error = state.outcome.exception()
        self._link.counters["retransmissions"] += 1
        if isinstance(error, DeviceTimeoutError):
            self._link.counters["timeouts"] += 1
        elif isinstance(error, TransportError):
            self._link.close()
        logger.warning("%s; retransmitting the commands without a complete reply (retry %d in a row, at most %d)",
                       error, failures, self.retries)

    def _pump(self, commands: list[_Command], made_progress) -> None:
        frame_wait_s = self.timeout_s + (self._frame_bytes + 16) / self.link_bytes_per_s
        outstanding: dict[int, _Command] = {}
        position = 0
        deadline = 0.0
        while position < len(commands) or outstanding:
            while position < len(commands) and len(outstanding) < WINDOW and not (commands[position].barrier and outstanding):
                command = commands[position]
                self._link.send(command.frame)
                outstanding[command.seq] = command
                position += 1
                pending_s = sum(item.transfer_s for item in outstanding.values())
                deadline = max(deadline, time.monotonic() + self.timeout_s + pending_s)
            item = self._link.receive(deadline)
            if isinstance(item, FrameError) or item.message_type == MessageType.NAK:
                if not isinstance(item, FrameError):
                    self._link.counters["naks"] += 1
                    if len(outstanding) == 1 and position == len(commands):
                        raise _Retransmit("the board sent a NAK")
                    # A NAK does not name the damaged command. The oldest one without a reply is the likeliest,
                    # and if it arrived intact the board replies from its cache. Resending it out of order is
                    # safe, because an EXECUTE waits until every earlier command is done.
                    self._link.send(next(iter(outstanding.values())).frame)
                    self._link.counters["retransmissions"] += 1
                # A damaged frame may have been the last reply: collect what else arrives, then send the rest again.
                deadline = min(deadline, time.monotonic() + frame_wait_s)
                continue
            command = outstanding.get(item.seq)
            if command is None:
                self._link.counters["stale_replies"] += 1
                logger.debug("dropped a stale reply: type 0x%02X seq %d", item.message_type, item.seq)
                continue
            if item.message_type == MessageType.ERROR:
                _raise_board_error(item)
            if command.reply.accept(item):
                command.complete = True
                del outstanding[item.seq]
                made_progress()
            run_wait_s = command.run_wait_s if command.reply.started and not command.complete else 0.0
            deadline = max(deadline, time.monotonic() + frame_wait_s + run_wait_s)

    # Handshake and reconnection.

    def _handshake(self) -> HelloReply:
        command = self._new_command(MessageType.HELLO, Hello(PROTOCOL_VERSION, self._frame_bytes_requested).pack(),
                                    _Reply(MessageType.HELLO_REPLY), HelloReply.LAYOUT.size / self.link_bytes_per_s)
        for attempt in Retrying(stop=stop_after_attempt(self.retries + 1), retry=retry_if_exception_type((DeviceTimeoutError, _Retransmit)),
                                reraise=True):
            with attempt:
                self._pump([command], lambda: None)
        hello = HelloReply.unpack(command.reply.payload)
        if hello.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"the board speaks protocol version {hello.protocol_version}, this host {PROTOCOL_VERSION}; "
                                "update the firmware or cim-runtime")
        return hello

    def _reconnect(self) -> None:
        """Reopen the port and check that the same board came back with its state."""
        self._link.counters["reconnects"] += 1
        logger.warning("link to %s lost; reconnecting for up to %g s", self._link.port_url, self.reconnect_s)
        # The window bounds the wall-clock time, however long each failed open or handshake takes.
        retrying = Retrying(stop=stop_after_delay(self.reconnect_s), wait=wait_fixed(0.1),
                            retry=retry_if_exception_type(TransportError), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    self._link.close()
                    self._link.open()
                    hello = self._handshake()
        except TransportError as exc:
            raise LinkGoneError(f"the link to {self._link.port_url} was lost and did not come back within {self.reconnect_s:g} s "
                                f"({exc}); check that the board or emulator still runs, then start again (cim-run program "
                                "--resume continues a programming run)") from None
        if (hello.board_id, hello.boot_id) != (self.hello.board_id, self.hello.boot_id):
            self._link.close()
            raise BoardChangedError(f"a different board, or the same board after a power cycle, replied on {self._link.port_url} "
                                 f"(boot id {hello.boot_id:#x}, was {self.hello.boot_id:#x}); whether the last command ran is "
                                 "unknown, so reopen the driver and read the cells back")
        logger.warning("reconnected to %s", self._info.identity)

    def _make_info(self, hello: HelloReply) -> ArrayInfo:
        board = hello.board_id.rstrip(b"\0").decode("ascii", errors="replace")
        return ArrayInfo(
            rows=hello.rows, cols=hello.cols, arrays=hello.arrays,
            conductance_min_s=hello.conductance_min_s, conductance_max_s=hello.conductance_max_s,
            read_voltage_max_v=hello.read_voltage_max_v, pulse_amplitude_max_v=hello.pulse_amplitude_max_v,
            pulse_width_min_s=hello.pulse_width_min_s, pulse_width_max_s=hello.pulse_width_max_s,
            compliance_max_a=hello.compliance_max_a, default_read_voltage_v=hello.default_read_voltage_v,
            capabilities=frozenset(name for name, bit in CAPABILITY_BITS.items() if hello.capabilities & bit),
            identity=f"serial:{board}:fw{hello.firmware_major}.{hello.firmware_minor}.{hello.firmware_patch}",
        )


def _float_option(options: dict[str, str], name: str, url: str) -> float | None:
    if name not in options:
        return None
    try:
        return float(options[name])
    except ValueError:
        raise ConfigError(f"{name}={options[name]!r} in {url!r} is not a number") from None


def open_serial(url: str, options: dict[str, str]) -> SerialDriver:
    """Open a ``serial://``, ``socket://`` or ``spy://`` backend URL (see the module docstring)."""
    parts = urlsplit(url)
    allowed = URL_OPTIONS | (SPY_OPTIONS if parts.scheme == "spy" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)} in {url!r}: {parts.scheme}:// takes {', '.join(sorted(allowed))}")
    if parts.scheme == "serial":
        if not parts.path or parts.netloc:
            raise ConfigError(f"backend URL {url!r} is invalid: write serial:///dev/ttyACM0 (three slashes, then the device path)")
        port_url = parts.path
    elif parts.scheme == "socket":
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None or not 1 <= port <= 65535:
            raise ConfigError(f"backend URL {url!r} is invalid: write socket://HOST:PORT with a port from 1 to 65535, "
                              "for example socket://127.0.0.1:5555")
        port_url = f"socket://{parts.netloc}"
    else:
        if not (parts.netloc + parts.path).strip("/"):
            raise ConfigError(f"backend URL {url!r} is invalid: write spy:///dev/ttyACM0?file=dump.txt (three slashes, then the device path)")
        spy = urlencode({name: value for name, value in options.items() if name in SPY_OPTIONS})
        port_url = f"spy://{parts.netloc}{parts.path}" + (f"?{spy}" if spy else "")
    numbers = {name: _float_option(options, name, url) for name in URL_OPTIONS}
    kwargs = {name: value for name, value in numbers.items() if value is not None}
    for name in ("baudrate", "retries", "frame_bytes"):
        if name in kwargs:
            if kwargs[name] != int(kwargs[name]):
                raise ConfigError(f"{name}={options[name]!r} in {url!r} must be a whole number")
            kwargs[name] = int(kwargs[name])
    return SerialDriver(port_url, **kwargs)
