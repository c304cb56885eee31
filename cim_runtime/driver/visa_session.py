"""One VISA instrument session: SCPI writes and queries, the error queue, and pyvisa errors turned into ours.

This is the only module that touches pyvisa's errors. Timeouts are given in seconds everywhere in
cim-runtime and converted to pyvisa's milliseconds here, once, when the session opens.
"""

from __future__ import annotations

import logging
import threading
import weakref

import pyvisa
from pyvisa import constants

from cim_runtime.driver.visa_bench import resource_key
from cim_runtime.driver.visa_commands import CLEAR_STATUS, IDENTIFY, NEXT_ERROR
from cim_runtime.errors import ConfigError, DeviceReportedError, DeviceTimeoutError, ProtocolError, TransportError

logger = logging.getLogger(__name__)

#: The fix for a lost link, in error messages.
RECONNECT_HINT = "Check that the instrument is on and connected, then open the driver again"

#: Errors read from one instrument's queue before giving up on emptying it.
MAX_QUEUED_ERRORS = 32

#: Resources open in this process, by :func:`resource_key`. A second session to the same instrument
#: would interleave its commands with those of the first, so opening one twice is an error.
_open_resources: set[str] = set()
_open_lock = threading.Lock()


def open_manager(library: str) -> pyvisa.ResourceManager:
    """Open pyvisa's resource manager for ``library`` ("@py", "FILE.yaml@sim", or "" for the system VISA)."""
    try:
        return pyvisa.ResourceManager(library)
    except (ValueError, OSError) as exc:
        # pyvisa-sim puts a whole traceback into its message, sometimes with escaped line breaks.
        # Its last line names the problem.
        lines = [line.strip() for line in str(exc).replace("\\n", "\n").splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__
        raise ConfigError(f"cannot load the VISA library {library!r}: {reason}. Set library in [visa] of the bench file "
                          "to '@py' (pyvisa-py) or to 'FILE.yaml@sim' (pyvisa-sim)") from exc


class InstrumentSession:
    """A locked SCPI session to one instrument, named by its ``role`` on the bench (SMU, pulse generator, switch matrix)."""

    def __init__(self, manager: pyvisa.ResourceManager, resource: str, role: str, timeout_s: float):
        self.resource = resource
        self.role = role
        self.timeout_s = timeout_s
        #: The deadline in pyvisa's unit, whole milliseconds.
        self._timeout_ms = round(timeout_s * 1000)
        self._last_command = ""
        self._key = resource_key(resource)
        with _open_lock:
            if self._key in _open_resources:
                raise ConfigError(f"the {role} at {resource} is already open in this process: close the other driver first")
            _open_resources.add(self._key)
        # A session dropped without close() frees its resource when it is garbage collected.
        self._release = weakref.finalize(self, _release_resource, self._key)
        try:
            self._session = manager.open_resource(resource, read_termination="\n", write_termination="\n",
                                                  timeout=self._timeout_ms)
        except (pyvisa.errors.VisaIOError, ValueError, OSError) as exc:
            self._release()
            raise TransportError(f"cannot open the {role} at {resource}: {exc}. Check that it is on and reachable, "
                                 "and its resource string in the bench file") from exc
        self._lock_exclusively()

    def _lock_exclusively(self) -> None:
        """Take VISA's exclusive lock where the session supports one (pyvisa-py's raw TCP sockets do not)."""
        try:
            self._session.lock_excl(timeout=self._timeout_ms)
        except (pyvisa.errors.VisaIOError, NotImplementedError, AttributeError) as exc:
            logger.debug("the %s at %s offers no exclusive lock (%s); relying on the in-process lock", self.role, self.resource, exc)

    def _where(self, command: str) -> str:
        return f"the {self.role} at {self.resource}, command {command!r}"

    def _call(self, action, command: str):
        self._last_command = command
        try:
            return action(command)
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code == constants.StatusCode.error_timeout:
                raise DeviceTimeoutError(f"no reply from {self._where(command)} within {self.timeout_s:g} s: check the "
                                         "instrument and its cable, and that no other program is connected to it, or raise timeout_s "
                                         "in [visa] of the bench file") from exc
            raise TransportError(f"VISA error from {self._where(command)}: {exc}. {RECONNECT_HINT}") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise TransportError(f"link to {self._where(command)} failed: {exc}. {RECONNECT_HINT}") from exc

    def write(self, command: str) -> None:
        logger.debug("%s <- %s", self.role, command)
        self._call(self._session.write, command)

    def write_checked(self, command: str) -> None:
        """Send a command, then read the error queue, so that an error names this very command."""
        self.write(command)
        self.raise_queued_errors()

    def query(self, command: str) -> str:
        reply = self._call(self._session.query, command).strip()
        logger.debug("%s <- %s -> %s", self.role, command, reply)
        return reply

    def query_float(self, command: str) -> float:
        """Query a number; a reply that is not one is a protocol error."""
        reply = self.query(command)
        try:
            return float(reply.split(",")[0])
        except ValueError:
            raise ProtocolError(f"{self._where(command)} replied {reply!r}, not a number") from None

    def identify(self, expected: str, family: str) -> str:
        """Clear the status, query ``*IDN?`` and check that the reply names ``expected``."""
        self.write(CLEAR_STATUS)
        identity = self.query(IDENTIFY)
        if expected not in identity:
            raise ConfigError(f"the {self.role} at {self.resource} identifies as {identity!r}, which is not a {family}: "
                              "fix its family or its resource in the bench file")
        return identity

    def raise_queued_errors(self) -> None:
        """Read the instrument's error queue; raise the first error it holds."""
        errors, last_command = [], self._last_command
        for _ in range(MAX_QUEUED_ERRORS):
            reply = self.query(NEXT_ERROR)
            code_text, _, message = reply.partition(",")
            try:
                code = int(code_text)
            except ValueError:
                raise ProtocolError(f"{self._where(NEXT_ERROR)} replied {reply!r}, not 'code,message'") from None
            if code == 0:
                break
            errors.append((code, message.strip().strip('"')))
        if errors:
            code, message = errors[0]
            more = f" and {len(errors) - 1} more" if len(errors) > 1 else ""
            raise DeviceReportedError(code, f"{message}{more} (the {self.role} at {self.resource}, by {last_command!r} or before)")

    def close(self) -> None:
        try:
            self._session.close()
        except (pyvisa.errors.VisaIOError, OSError) as exc:
            logger.warning("closing the %s at %s failed: %s", self.role, self.resource, exc)
        finally:
            self._release()


def _release_resource(key: str) -> None:
    with _open_lock:
        _open_resources.discard(key)
