"""The hardware boundary: the :class:`ArrayDriver` interface that every backend implements.

Public methods check every request against the backend's limits and then call a private method that
the backend implements. Nothing outside the limits reaches a backend: a bad request raises
:class:`~cim_runtime.errors.LimitError` and is never clipped. Cells are addressed by ``array`` (index of
the crossbar array in the system), ``rows`` and ``cols``, as integer arrays of equal shape. A scalar
``array`` applies to every cell.
"""

from __future__ import annotations

import abc
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from cim_runtime.errors import ConfigError, LimitError

logger = logging.getLogger(__name__)

#: Capability names a backend may report in :attr:`ArrayInfo.capabilities`.
CAPABILITIES = ("batched_pulse", "analog_mvm", "onboard_program")


@dataclass(frozen=True)
class ArrayInfo:
    """Geometry and limits of a crossbar system.

    The conductance window is the range that write-verify targets may use: every cell can reach it
    from both directions. Saturating pulses can leave a cell slightly outside it.
    """

    #: Rows per array (inputs, driven by read voltages).
    rows: int
    #: Columns per array (outputs, where currents are measured).
    cols: int
    #: Number of arrays in the system.
    arrays: int
    #: Bottom of the programmable conductance window, in siemens.
    conductance_min_s: float
    #: Top of the programmable conductance window, in siemens.
    conductance_max_s: float
    #: Largest read voltage magnitude, in volts; reads above it could disturb cells.
    read_voltage_max_v: float
    #: Largest pulse amplitude magnitude, in volts.
    pulse_amplitude_max_v: float
    #: Minimum pulse width, in seconds.
    pulse_width_min_s: float
    #: Maximum pulse width, in seconds.
    pulse_width_max_s: float
    #: Largest compliance current the source can be set to, in amperes.
    compliance_max_a: float
    #: Read voltage used when a caller does not name one, in volts.
    default_read_voltage_v: float = 0.1
    #: Features this backend supports, from :data:`CAPABILITIES`.
    capabilities: frozenset[str] = field(default_factory=frozenset)
    #: Board or instrument identity, for logs and reports.
    identity: str = ""

    @property
    def window_s(self) -> float:
        """Width of the conductance window, in siemens."""
        return self.conductance_max_s - self.conductance_min_s


def _as_index(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "iu":
        raise ConfigError(f"{name} must be integer cell indices, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class ArrayDriver(abc.ABC):
    """Interface to one crossbar system (one or more arrays of memristor cells).

    Use it as a context manager, or call :meth:`close`; closing twice is harmless.
    """

    def __init__(self) -> None:
        self._closed = False

    # Public, checked API. Backends implement the underscored methods below.

    @abc.abstractmethod
    def info(self) -> ArrayInfo:
        """Return the geometry, limits and capabilities of the system."""

    def read(self, rows, cols, *, array=0, read_voltage_v: float | None = None) -> np.ndarray:
        """Read the conductance of many cells, in siemens, with the same shape as ``rows``.

        Raises:
            LimitError: an address or the read voltage is outside the system's limits.
        """
        array, rows, cols = self._check_cells(array, rows, cols)
        voltage = self._check_read_voltage(read_voltage_v)
        return self._read(array, rows, cols, voltage)

    def read_row(self, row: int, *, array: int = 0, read_voltage_v: float | None = None) -> np.ndarray:
        """Read every cell of one row, in siemens."""
        cols = np.arange(self.info().cols)
        return self.read(np.full_like(cols, row), cols, array=array, read_voltage_v=read_voltage_v)

    def read_array(self, array: int = 0, *, read_voltage_v: float | None = None) -> np.ndarray:
        """Read every cell of one array, in siemens, as a ``(rows, cols)`` matrix."""
        info = self.info()
        rows, cols = np.meshgrid(np.arange(info.rows), np.arange(info.cols), indexing="ij")
        return self.read(rows, cols, array=array, read_voltage_v=read_voltage_v)

    def pulse(self, rows, cols, amplitude_v, width_s, *, array=0, compliance_a: float | None = None) -> None:
        """Apply one pulse to each addressed cell.

        Args:
            rows, cols: cell addresses, integer arrays of equal shape.
            amplitude_v: pulse amplitude per cell (or one for all), in volts; positive potentiates,
                negative depresses, and zero is invalid.
            width_s: pulse width per cell (or one for all), in seconds.
            array: array index per cell, or one for all.
            compliance_a: current limit of the source, in amperes; the backend maximum if omitted.

        Raises:
            LimitError: an amplitude, width, compliance or address is outside the limits.
        """
        array, rows, cols = self._check_cells(array, rows, cols)
        amplitude_v = self._check_amplitude(amplitude_v, rows.shape)
        width_s = self._check_width(width_s, rows.shape)
        self._check_compliance(compliance_a)
        self._pulse(array, rows, cols, amplitude_v, width_s)

    def pulse_read(self, rows, cols, amplitude_v, width_s, *, array=0, read_voltage_v: float | None = None) -> np.ndarray:
        """Pulse the cells, then read them back; returns conductances in siemens."""
        self.pulse(rows, cols, amplitude_v, width_s, array=array)
        return self.read(rows, cols, array=array, read_voltage_v=read_voltage_v)

    def mvm(self, voltages_v, *, array: int = 0) -> np.ndarray:
        """Apply read voltages to the rows and return the column currents, in amperes.

        Args:
            voltages_v: ``(rows,)`` or ``(batch, rows)`` read voltages in volts.

        Returns:
            ``(cols,)`` or ``(batch, cols)`` column currents in amperes.

        Note:
            Compliance limits the source during pulses; the measurable range of column currents is not
            modelled yet, so large currents come back unclipped.
        """
        if self._closed:
            raise ConfigError(f"{type(self).__name__} is closed; open a new driver")
        info = self.info()
        voltages = np.asarray(voltages_v, dtype=np.float64)
        if voltages.shape[-1:] != (info.rows,) or voltages.ndim > 2:
            raise ConfigError(f"voltages_v must have shape ({info.rows},) or (batch, {info.rows}), got {voltages.shape}")
        self._check_range("read voltage", voltages, -info.read_voltage_max_v, info.read_voltage_max_v)
        index = _as_index(array, "array")
        if index.ndim:
            raise ConfigError(f"array must be one index for mvm, got shape {index.shape}")
        self._check_array_index(index)
        return self._mvm(int(index), voltages)

    def wait_s(self, duration_s: float) -> None:
        """Let ``duration_s`` seconds pass (retention measurements); hardware backends sleep."""
        self._check_wait(duration_s)
        time.sleep(duration_s)

    def device_model(self):
        """Return the nominal device model of the cells (a :class:`~cim_runtime.device.DeviceConfig`), if known.

        The adaptive write-verify scheme predicts pulses from it. Hardware backends return None unless
        a fitted device file was given to them.
        """
        return None

    def save_checkpoint(self, generation: int) -> None:
        """Make the arrays' present state outlive this process, labelled ``generation``.

        A programming session calls it after each step it journals. Real arrays keep their state by
        themselves, so hardware backends do nothing here.
        """

    def restore_checkpoint(self, generation: int) -> None:
        """Return the arrays to the state saved as ``generation``, before a resumed session goes on.

        Hardware backends do nothing: their arrays still hold what was programmed, and the step that
        was cut short is verified and finished from where its cells are.
        """

    def close(self) -> None:
        """Release the hardware; calling it again does nothing."""
        if not self._closed:
            self._closed = True
            self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # Backend hooks.

    @abc.abstractmethod
    def _read(self, array: np.ndarray, rows: np.ndarray, cols: np.ndarray, read_voltage_v: float) -> np.ndarray: ...

    @abc.abstractmethod
    def _pulse(self, array: np.ndarray, rows: np.ndarray, cols: np.ndarray, amplitude_v: np.ndarray, width_s: np.ndarray) -> None: ...

    @abc.abstractmethod
    def _mvm(self, array: int, voltages_v: np.ndarray) -> np.ndarray: ...

    def _close(self) -> None:
        """Release backend resources."""

    # Checks.

    def _where(self) -> str:
        info = self.info()
        return info.identity or type(self).__name__

    def _check_range(self, name: str, values: np.ndarray, low: float, high: float) -> None:
        bad = ~((values >= low) & (values <= high))
        if np.any(bad):
            value = float(np.asarray(values)[bad].flat[0])
            raise LimitError.out_of_range(name, value, low, high, self._where())

    def _check_array_index(self, array: np.ndarray) -> None:
        self._check_range("array", array, 0, self.info().arrays - 1)

    def _check_cells(self, array, rows, cols) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._closed:
            raise ConfigError(f"{type(self).__name__} is closed; open a new driver")
        info = self.info()
        rows = _as_index(rows, "rows")
        cols = _as_index(cols, "cols")
        if rows.shape != cols.shape:
            raise ConfigError(f"rows and cols must have the same shape, got {rows.shape} and {cols.shape}")
        array = np.broadcast_to(_as_index(array, "array"), rows.shape)
        self._check_range("row", rows, 0, info.rows - 1)
        self._check_range("col", cols, 0, info.cols - 1)
        self._check_array_index(array)
        return array, rows, cols

    def _check_read_voltage(self, read_voltage_v: float | None) -> float:
        info = self.info()
        voltage = info.default_read_voltage_v if read_voltage_v is None else float(read_voltage_v)
        if not 0 < voltage <= info.read_voltage_max_v:
            raise LimitError(
                f"read_voltage_v={voltage:g} is invalid: must be above 0 and at most {info.read_voltage_max_v:g} ({self._where()})"
            )
        return voltage

    def _check_amplitude(self, amplitude_v, shape) -> np.ndarray:
        amplitude = np.broadcast_to(np.asarray(amplitude_v, dtype=np.float64), shape)
        limit = self.info().pulse_amplitude_max_v
        self._check_range("amplitude_v", amplitude, -limit, limit)
        if np.any(amplitude == 0):
            raise LimitError("amplitude_v=0 is invalid: its sign selects potentiation (+) or depression (-)")
        return amplitude

    def _check_width(self, width_s, shape) -> np.ndarray:
        width = np.broadcast_to(np.asarray(width_s, dtype=np.float64), shape)
        info = self.info()
        self._check_range("width_s", width, info.pulse_width_min_s, info.pulse_width_max_s)
        return width

    def _check_wait(self, duration_s: float) -> None:
        if not (math.isfinite(duration_s) and duration_s >= 0):
            raise ConfigError(f"duration_s={duration_s} is invalid: must be a finite number of seconds, at least 0")

    def _check_compliance(self, compliance_a: float | None) -> None:
        if compliance_a is None:
            return
        limit = self.info().compliance_max_a
        if not 0 < compliance_a <= limit:
            raise LimitError(f"compliance_a={compliance_a:g} is invalid: must be above 0 and at most {limit:g} ({self._where()})")
