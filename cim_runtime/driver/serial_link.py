"""Frame transport of the serial driver: a pyserial port, framing, deadlines and traffic counters.

Every read has a deadline; the port itself polls in short slices so no call blocks longer than its
deadline plus one slice.
"""

from __future__ import annotations

import collections
import logging
import select
import time

import serial

from cim_runtime.errors import DeviceTimeoutError, TransportError
from firmware_protocol.codec import DELIMITER, Frame, FrameError, FrameReader

logger = logging.getLogger(__name__)
traffic_logger = logging.getLogger(__name__ + ".traffic")

#: Maximum wait for input per poll, in seconds.
POLL_S = 0.05
#: Most bytes taken from the port per read.
READ_BYTES = 1 << 16
#: Maximum time a single write may block, in seconds.
WRITE_TIMEOUT_S = 10.0


class FrameLink:
    """One open port that sends and receives frames.

    Args:
        port_url: what :func:`serial.serial_for_url` opens: a device path, ``socket://HOST:PORT`` or ``spy://PATH``.
        baudrate: line rate for real serial ports; sockets ignore it.
    """

    def __init__(self, port_url: str, baudrate: int):
        self.port_url = port_url
        self.baudrate = baudrate
        self._port: serial.SerialBase | None = None
        self._reader = FrameReader()
        self._pending: collections.deque[Frame | FrameError] = collections.deque()
        #: Bytes sent and received, frames rejected, for logs and benchmarks.
        self.counters = collections.Counter()

    def open(self) -> None:
        """Open the port for exclusive use.

        Raises:
            TransportError: the port does not exist, is busy or refuses the connection.
        """
        try:
            # timeout=0 makes read() return what has arrived; _read_some waits with select() instead,
            # because pyserial's socket:// in_waiting reports at most 1 byte.
            self._port = serial.serial_for_url(self.port_url, baudrate=self.baudrate, timeout=0,
                                               write_timeout=WRITE_TIMEOUT_S, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"opening {self.port_url} failed: {_plain(exc)}; check the port name, that the board or emulator is "
                                 "running, and that no other program uses the port") from exc
        self.discard_input()
        logger.info("opened %s at %d baud", self.port_url, self.baudrate)

    def close(self) -> None:
        if self._port is not None:
            port, self._port = self._port, None
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                logger.warning("closing %s failed: %s", self.port_url, exc)
            logger.info("closed %s", self.port_url)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def send(self, frame: bytes) -> None:
        """Write one encoded frame, preceded by a delimiter that flushes any line noise at the board."""
        if self._port is None:
            raise TransportError(f"{self.port_url} is not open")
        data = DELIMITER + frame
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"write to {self.port_url} failed: {exc}") from exc
        self.counters["bytes_sent"] += len(data)
        traffic_logger.debug("%s TX %s", self.port_url, frame.hex(" "))

    def discard_input(self) -> None:
        """Drop any partial frame and unread frames (after a reconnect)."""
        self._reader.reset()
        self._pending.clear()

    def receive(self, deadline: float) -> Frame | FrameError:
        """Return the next received frame, or the error for a malformed one.

        Raises:
            DeviceTimeoutError: ``deadline`` (a :func:`time.monotonic` value) passed first.
            TransportError: the port failed or the peer disconnected.
        """
        while not self._pending:
            if time.monotonic() >= deadline:
                raise DeviceTimeoutError(f"no reply from {self.port_url} before the deadline")
            self._pending.extend(self._reader.feed(self._read_some(min(POLL_S, deadline - time.monotonic()))))
        item = self._pending.popleft()
        if isinstance(item, FrameError):
            self.counters["bad_frames"] += 1
        else:
            traffic_logger.debug("%s RX type 0x%02X seq %d, %d payload bytes", self.port_url, item.message_type, item.seq, len(item.payload))
        return item

    def _read_some(self, wait_s: float) -> bytes:
        if self._port is None:
            raise TransportError(f"{self.port_url} is not open")
        try:
            ready, _, _ = select.select([self._port.fileno()], [], [], max(0.0, wait_s))
            data = self._port.read(READ_BYTES) if ready else b""
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"read from {self.port_url} failed: {exc}") from exc
        self.counters["bytes_received"] += len(data)
        return data


def _plain(error: Exception) -> str:
    """Return pyserial's message without the Python details it sometimes carries."""
    text = str(error)
    if "not supported between instances" in text or "debug|info|warning|error" in text:
        return "the address is not HOST:PORT with a port from 1 to 65535"
    return text
