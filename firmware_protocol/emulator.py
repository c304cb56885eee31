"""Board emulator: the firmware of firmware.py served over a pseudo-terminal or a loopback TCP socket.

The link can be paced to a byte rate: a UART at 921,600 baud with 8N1 framing carries 92,160 bytes per
second. The emulator can drop, corrupt, duplicate and delay bytes in both directions. It can also
reset the board in the middle of a batch, and drop the link and bring it back. The TCP server binds
to 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cim_runtime.errors import ConfigError
from firmware_protocol.codec import DELIMITER, Frame, FrameReader
from firmware_protocol.firmware import BoardFirmware
from firmware_protocol.messages import MessageType

logger = logging.getLogger(__name__)

#: Bytes written to the link per paced write; small enough that the host sees a steady stream.
WRITE_CHUNK_BYTES = 1024
#: How long a blocked read waits before checking for a stop request, in seconds.
POLL_S = 0.05


@dataclass(frozen=True)
class LinkFaults:
    """Faults the emulator injects. Byte rates apply to each byte in each direction independently."""

    #: Fraction of bytes dropped, 0 to 1.
    drop_rate: float = 0.0
    #: Fraction of bytes replaced by a different random value, 0 to 1.
    corrupt_rate: float = 0.0
    #: Fraction of bytes sent twice, 0 to 1.
    duplicate_rate: float = 0.0
    #: Fraction of writes held back by ``delay_s`` before they go out, 0 to 1.
    delay_rate: float = 0.0
    #: Hold time of a delayed write, in seconds.
    delay_s: float = 0.0
    #: Reset the board (losing staged batches) when the n-th BATCH frame arrives; 0 never.
    reset_at_batch: int = 0
    #: Board start-up time after a reset, in seconds.
    reset_s: float = 0.05
    #: Drop the link after executing the n-th received frame, before replying; 0 never.
    disconnect_at_frame: int = 0
    #: How long the board stays away after a disconnect, in seconds.
    disconnected_s: float = 0.5
    #: Seed of the fault draws.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_rate", "corrupt_rate", "duplicate_rate", "delay_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"{name}={value} is invalid: must be between 0 and 1 inclusive")
        for name in ("delay_s", "reset_s", "disconnected_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} is invalid: must be at least 0 seconds")
        if self.reset_at_batch < 0 or self.disconnect_at_frame < 0:
            raise ConfigError("reset_at_batch and disconnect_at_frame must be at least 0 (0 disables them)")

    @property
    def corrupts_bytes(self) -> bool:
        return bool(self.drop_rate or self.corrupt_rate or self.duplicate_rate)


class ByteFaults:
    """Applies the byte-level faults of :class:`LinkFaults` to a stream, and counts what it did."""

    def __init__(self, faults: LinkFaults, stream_seed: int):
        self.faults = faults
        self._rng = np.random.default_rng([faults.seed, stream_seed])
        self.counts = {"dropped": 0, "corrupted": 0, "duplicated": 0, "delayed": 0}

    def apply(self, data: bytes) -> bytes:
        faults = self.faults
        if not data or not faults.corrupts_bytes:
            return data
        values = np.frombuffer(data, dtype=np.uint8).copy()
        corrupt = self._rng.random(values.size) < faults.corrupt_rate
        values[corrupt] ^= self._rng.integers(1, 256, int(corrupt.sum()), dtype=np.uint8)
        copies = np.ones(values.size, dtype=np.int64)
        copies[self._rng.random(values.size) < faults.duplicate_rate] = 2
        copies[self._rng.random(values.size) < faults.drop_rate] = 0
        self.counts["corrupted"] += int(corrupt.sum())
        self.counts["duplicated"] += int((copies == 2).sum())
        self.counts["dropped"] += int((copies == 0).sum())
        return np.repeat(values, copies).tobytes()

    def hold(self) -> None:
        """Sleep ``delay_s`` for the fraction ``delay_rate`` of writes."""
        if self.faults.delay_rate and self._rng.random() < self.faults.delay_rate:
            self.counts["delayed"] += 1
            time.sleep(self.faults.delay_s)


class Pacer:
    """Spaces transfers so that they never exceed ``bytes_per_s``; None means no limit."""

    def __init__(self, bytes_per_s: float | None):
        if bytes_per_s is not None and bytes_per_s <= 0:
            raise ConfigError(f"link rate {bytes_per_s} B/s is invalid: must be above 0")
        self.bytes_per_s = bytes_per_s
        self._free_at = 0.0

    def wait(self, size: int) -> None:
        """Block until ``size`` more bytes would have crossed the link."""
        if self.bytes_per_s is None:
            return
        now = time.monotonic()
        self._free_at = max(self._free_at, now) + size / self.bytes_per_s
        if self._free_at > now:
            time.sleep(self._free_at - now)


class _LinkDropped(Exception):
    """The emulated board drops the link (fault injection) or the peer closed it."""


class BoardEmulator:
    """Runs a :class:`BoardFirmware` over a byte link with pacing and fault injection.

    Args:
        firmware: the board behaviour.
        faults: what to inject; none by default.
        link_bytes_per_s: link rate in bytes per second, in each direction; unlimited if None.
    """

    def __init__(self, firmware: BoardFirmware, faults: LinkFaults = LinkFaults(), link_bytes_per_s: float | None = None):
        self.firmware = firmware
        self.faults = faults
        self.to_board = ByteFaults(faults, 1)
        self.to_host = ByteFaults(faults, 2)
        self._rx_pacer = Pacer(link_bytes_per_s)
        self._tx_pacer = Pacer(link_bytes_per_s)
        self._reader = FrameReader()
        self._frames = 0
        self._batches = 0
        self.stop_event = threading.Event()

    def serve_link(self, receive, send) -> None:
        """Answer frames until the peer closes the link, a disconnect fault fires or :attr:`stop_event` is set.

        A writer thread sends the replies, paced, while this loop keeps receiving, so the link carries
        both directions at once as a UART does.

        Args:
            receive: ``receive() -> bytes``; returns b"" when nothing arrived within a short poll and raises
                EOFError when the peer closed the link.
            send: ``send(data)`` writes bytes to the peer.

        Raises:
            _LinkDropped: a disconnect fault fired; the caller takes the link down and brings it back.
        """
        self._reader.reset()
        outbox: queue.Queue[bytes | None] = queue.Queue()
        dropped = threading.Event()
        writer = threading.Thread(target=self._write_replies, args=(outbox, send, dropped), name="board-emulator-tx", daemon=True)
        writer.start()
        outbox.put(DELIMITER)
        try:
            while not self.stop_event.is_set() and writer.is_alive():
                try:
                    data = receive()
                except EOFError:
                    return
                if not data:
                    continue
                self._rx_pacer.wait(len(data))
                for item in self._reader.feed(self.to_board.apply(data)):
                    self._answer(item, outbox)
        except _LinkDropped:
            dropped.set()  # Bytes still queued are lost with the link.
            raise
        finally:
            outbox.put(None)
            writer.join(timeout=5)

    def _answer(self, item, outbox: queue.Queue) -> None:
        if isinstance(item, Frame):
            self._frames += 1
            if item.message_type == MessageType.BATCH:
                self._batches += 1
                if self._batches == self.faults.reset_at_batch:
                    self.firmware.warm_reset()
                    self._reader.reset()
                    time.sleep(self.faults.reset_s)
                    return
        replies = self.firmware.handle(item, outbox.put)
        if isinstance(item, Frame) and self._frames == self.faults.disconnect_at_frame:
            logger.warning("emulator: dropping the link after frame %d (seq %d), before its reply", self._frames, item.seq)
            raise _LinkDropped()
        for reply in replies:
            outbox.put(reply)

    def _write_replies(self, outbox: queue.Queue, send, dropped: threading.Event) -> None:
        while (data := outbox.get()) is not None:
            if dropped.is_set():
                continue
            data = self.to_host.apply(data)
            self.to_host.hold()
            try:
                for start in range(0, len(data), WRITE_CHUNK_BYTES):
                    chunk = data[start:start + WRITE_CHUNK_BYTES]
                    self._tx_pacer.wait(len(chunk))
                    send(chunk)
            except OSError as exc:
                logger.info("emulator: write to the host failed (%s); the link is closing", exc)
                return


class _BoardServer:
    """Start and stop of a server that runs ``serve_forever`` in a daemon thread."""

    emulator: BoardEmulator
    _thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        raise NotImplementedError

    def start(self):
        """Serve in a daemon thread and return self."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"board-emulator-{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait up to 5 s for the thread to end."""
        self.emulator.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class TcpBoardServer(_BoardServer):
    """Serves one host at a time on ``127.0.0.1:port`` (port 0 picks a free one)."""

    def __init__(self, emulator: BoardEmulator, port: int = 0):
        self.emulator = emulator
        self._listener = self._listen(port)
        self.port = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        listener.settimeout(POLL_S)
        return listener

    def serve_forever(self) -> None:
        """Accept and serve hosts until :meth:`stop`."""
        logger.info("emulator: listening on %s", self.url)
        while not self.emulator.stop_event.is_set():
            try:
                connection, peer = self._listener.accept()
            except TimeoutError:
                continue
            logger.info("emulator: host connected from %s:%d", *peer)
            try:
                self._serve(connection)
            except _LinkDropped:
                self._listener.close()
                time.sleep(self.emulator.faults.disconnected_s)
                self._listener = self._listen(self.port)
                logger.warning("emulator: link back on %s", self.url)
            finally:
                connection.close()
        self._listener.close()

    def _serve(self, connection: socket.socket) -> None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(POLL_S)

        def receive() -> bytes:
            try:
                data = connection.recv(65536)
            except TimeoutError:
                return b""
            except ConnectionError:
                raise EOFError from None
            if not data:
                raise EOFError
            return data

        self.emulator.serve_link(receive, connection.sendall)


class PtyBoardServer(_BoardServer):
    """Serves the board on a pseudo-terminal, as a USB serial board appears to the host.

    Args:
        link_path: a symbolic link made to point at the current pty slave. Hosts should open it, because a
            disconnect fault replaces the pty and the slave's name changes.
    """

    def __init__(self, emulator: BoardEmulator, link_path: str | os.PathLike | None = None):
        self.emulator = emulator
        self.link_path = Path(link_path) if link_path is not None else None
        self._master, self._slave, self.slave_path = self._open_pty()

    @property
    def url(self) -> str:
        return f"serial://{self.link_path or self.slave_path}"

    def _open_pty(self) -> tuple[int, int, str]:
        master, slave = os.openpty()
        tty.setraw(slave)
        path = os.ttyname(slave)
        if self.link_path is not None:
            temporary = self.link_path.with_name(self.link_path.name + ".new")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(path)
            temporary.replace(self.link_path)
        # The emulator keeps its own slave descriptor open, so the master never sees a hang-up when the
        # host closes and reopens the port.
        return master, slave, path

    def serve_forever(self) -> None:
        """Serve until :meth:`stop`."""
        logger.info("emulator: serving on %s", self.url)
        while not self.emulator.stop_event.is_set():
            try:
                self.emulator.serve_link(self._receive, self._send)
            except _LinkDropped:
                os.close(self._master)
                os.close(self._slave)
                time.sleep(self.emulator.faults.disconnected_s)
                self._master, self._slave, self.slave_path = self._open_pty()
                logger.warning("emulator: link back on %s (%s)", self.url, self.slave_path)
        os.close(self._master)
        os.close(self._slave)

    def _receive(self) -> bytes:
        ready, _, _ = select.select([self._master], [], [], POLL_S)
        return os.read(self._master, 65536) if ready else b""

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _, writable, _ = select.select([], [self._master], [], POLL_S)
            if writable:
                view = view[os.write(self._master, view):]
            elif self.emulator.stop_event.is_set():
                return


def start_emulator(simulator, *, transport: str = "tcp", faults: LinkFaults = LinkFaults(), link_bytes_per_s: float | None = None,
                   max_payload: int = 16384, link_path: str | os.PathLike | None = None) -> TcpBoardServer | PtyBoardServer:
    """Serve a board backed by ``simulator`` in a daemon thread; call ``stop()`` on the result when done.

    Args:
        transport: ``tcp`` (a free port on 127.0.0.1) or ``pty``.
    """
    emulator = BoardEmulator(BoardFirmware(simulator, max_payload=max_payload), faults, link_bytes_per_s)
    if transport == "tcp":
        return TcpBoardServer(emulator).start()
    if transport == "pty":
        return PtyBoardServer(emulator, link_path).start()
    raise ConfigError(f"transport={transport!r} is invalid: use 'tcp' or 'pty'")
