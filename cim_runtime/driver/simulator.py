"""Simulated crossbar system: many arrays of table-driven memristor cells, vectorized with numpy.

URL grammar: ``sim://?profile=C4D1&rows=256&cols=256&arrays=64&seed=0``. Every option may be left
out; unknown options are errors.

* ``profile``: a measured preset (C1D1, C4D1, C1D8, Identical_spikes, Non_spikes_1, Non_spikes_2),
  ``ideal`` (linear, no variation, no noise) or the path of a device TOML file. Default C4D1.
* ``rows``, ``cols``: cells per array, 1 to 4096. Default 256 x 256.
* ``arrays``: arrays in the system, 1 to 1024. Default 64.
* ``seed``: seed of every random draw (fabrication spread, pulse noise, read noise). Default 0.
* ``state``: a folder for checkpoints of the arrays (see :mod:`cim_runtime.driver.sim_checkpoint`), so
  that a programming run resumed in a new process finds the arrays as it left them. Default none.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cim_runtime.device import DEFAULT_PROFILE, CellPopulation, DeviceConfig, make_profile
from cim_runtime.driver import sim_checkpoint
from cim_runtime.driver.base import ArrayDriver, ArrayInfo
from cim_runtime.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Limits the simulator enforces, chosen to resemble a benchtop pulse source.
READ_VOLTAGE_MAX_V = 0.3
PULSE_AMPLITUDE_MAX_V = 3.0
PULSE_WIDTH_MIN_S = 10e-9
PULSE_WIDTH_MAX_S = 10e-3
COMPLIANCE_MAX_A = 0.1
MAX_SIDE = 4096
MAX_ARRAYS = 1024


class SimulatorDriver(ArrayDriver):
    """A seeded simulation of ``arrays`` crossbars of ``rows`` x ``cols`` cells.

    The simulator keeps a virtual clock: each pulse call advances it by the longest pulse width and
    :meth:`wait_s` by the given time, so drift depends on simulated, not wall-clock, time.
    """

    def __init__(
        self,
        profile: str | DeviceConfig = DEFAULT_PROFILE,
        *,
        rows: int = 256,
        cols: int = 256,
        arrays: int = 64,
        seed: int = 0,
        state: str | Path | None = None,
    ):
        super().__init__()
        for name, value, high in (("rows", rows, MAX_SIDE), ("cols", cols, MAX_SIDE), ("arrays", arrays, MAX_ARRAYS)):
            if not 1 <= value <= high:
                raise ConfigError(f"{name}={value} is invalid: must be between 1 and {high} inclusive (sim://)")
        if not 0 <= seed < 2**63:
            raise ConfigError(f"seed={seed} is invalid: must be a whole number from 0 to 2**63 - 1")
        self.profile = make_profile(profile) if isinstance(profile, str) else profile
        self._shape = (arrays, rows, cols)
        self.cells = CellPopulation(self.profile, arrays * rows * cols, np.random.default_rng(seed))
        self._now_s = 0.0
        self._slot: np.ndarray | None = None
        self._state_folder = Path(state) if state is not None else None
        #: Arrays pulsed since the last checkpoint, and the file generation of every array saved so far.
        self._dirty: set[int] = set()
        self._saved_arrays: dict[int, int] = {}
        window_min_s, window_max_s = self.cells.window_s()
        self._info = ArrayInfo(
            rows=rows,
            cols=cols,
            arrays=arrays,
            conductance_min_s=window_min_s,
            conductance_max_s=window_max_s,
            read_voltage_max_v=READ_VOLTAGE_MAX_V,
            pulse_amplitude_max_v=PULSE_AMPLITUDE_MAX_V,
            pulse_width_min_s=PULSE_WIDTH_MIN_S,
            pulse_width_max_s=PULSE_WIDTH_MAX_S,
            compliance_max_a=COMPLIANCE_MAX_A,
            capabilities=frozenset({"batched_pulse", "analog_mvm"}),
            identity=f"sim:{self.profile.name}:{arrays}x{rows}x{cols}:seed={seed}",
        )
        logger.info("opened simulator %s", self._info.identity)

    def info(self) -> ArrayInfo:
        return self._info

    @property
    def now_s(self) -> float:
        """Virtual time since the simulator was opened, in seconds."""
        return self._now_s

    def wait_s(self, duration_s: float) -> None:
        """Advance the virtual clock without sleeping."""
        self._check_wait(duration_s)
        self._now_s += float(duration_s)

    def device_model(self) -> DeviceConfig:
        """Return the profile the simulated cells were drawn from, without their individual spread."""
        return self.profile

    def true_conductance_s(self, array: int = 0) -> np.ndarray:
        """Return the noiseless conductance of one array, drift included; a simulator-only view."""
        return self._array_conductance(array)

    def _flat(self, array, rows, cols) -> np.ndarray:
        return np.ravel_multi_index((array.ravel(), rows.ravel(), cols.ravel()), self._shape)

    def _has_duplicates(self, flat: np.ndarray) -> bool:
        """Tell whether a flat index repeats, in linear time: later writes to a slot overwrite earlier ones."""
        if self._slot is None:
            self._slot = np.empty(self.cells.count, dtype=np.int32 if self.cells.count < 2**31 else np.int64)
        order = np.arange(flat.size, dtype=self._slot.dtype)
        self._slot[flat] = order
        return bool(np.any(self._slot[flat] != order))

    def _array_conductance(self, array: int) -> np.ndarray:
        size = self._shape[1] * self._shape[2]
        index = np.arange(array * size, (array + 1) * size)
        return self.cells.conductance_at(index, self._now_s).reshape(self._shape[1:])

    def _read(self, array, rows, cols, read_voltage_v):
        return self.cells.read(self._flat(array, rows, cols), self._now_s).reshape(rows.shape)

    def _pulse(self, array, rows, cols, amplitude_v, width_s):
        flat = self._flat(array, rows, cols)
        if self._has_duplicates(flat):
            raise ConfigError("a cell is addressed twice in one pulse call; send one pulse per cell per call")
        self.cells.pulse(flat, amplitude_v.ravel(), width_s.ravel(), self._now_s)
        self._dirty.update(np.unique(array).tolist())
        if width_s.size:
            self._now_s += float(width_s.max())

    def _mvm(self, array, voltages_v):
        conductance = self._array_conductance(array)
        currents = voltages_v @ conductance
        sigma = self.profile.variation.read_sigma_rel
        if sigma > 0:
            # Independent Gaussian noise per cell sums, per column, to one Gaussian whose variance is
            # (v**2) @ (sigma * G)**2, so it is drawn once per output instead of once per cell.
            std = np.sqrt((voltages_v**2) @ (sigma * conductance) ** 2)
            currents = currents + std * self.cells.draw_normal(currents.shape)
        return currents

    def _array_slice(self, array: int) -> slice:
        size = self._shape[1] * self._shape[2]
        return slice(array * size, (array + 1) * size)

    def save_checkpoint(self, generation: int) -> None:
        """Write the arrays pulsed since the last checkpoint, the clock and the generator to the state folder."""
        if self._state_folder is None:
            return
        states = {array: self.cells.state_of(self._array_slice(array)) for array in sorted(self._dirty)}
        meta = {"identity": self._info.identity, "now_s": self._now_s, "rng": self.cells.rng_state}
        self._saved_arrays = sim_checkpoint.save(self._state_folder, generation, meta, states, self._saved_arrays)
        self._dirty.clear()

    def restore_checkpoint(self, generation: int) -> None:
        """Load checkpoint ``generation`` into a simulator that has not been pulsed since it was opened."""
        if generation == 0:
            return
        if self._state_folder is None:
            raise ConfigError("the simulator was opened without a state folder, so the arrays of the interrupted run are gone; "
                              "open it as sim://?state=FOLDER, or start the run again without --resume")
        if self._dirty or self._saved_arrays:
            raise ConfigError("restore_checkpoint needs a freshly opened simulator")
        meta, states = sim_checkpoint.load(self._state_folder, generation)
        if meta.get("identity") != self._info.identity:
            raise DataError(f"simulator checkpoint in {self._state_folder} belongs to {meta.get('identity')!r}, "
                            f"not to {self._info.identity!r}; open the simulator with the same profile, geometry and seed")
        try:
            for array, state in states.items():
                self.cells.restore_state(self._array_slice(array), state)
            self.cells.rng_state = meta["rng"]
            self._now_s = float(meta["now_s"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"simulator checkpoint {generation} in {self._state_folder} does not fit this simulator ({exc})") from None
        self._saved_arrays = {int(array): int(saved) for array, saved in meta["arrays"].items()}

    def _close(self) -> None:
        logger.info("closed simulator %s", self._info.identity)
