"""State and physics of a population of memristor cells, vectorized over flat cell indices.

The simulator keeps one :class:`CellPopulation` for all cells of all its arrays. Per-cell state:
conductance, step factor, range (when it varies from cell to cell), stuck flag, time of the last pulse
(for drift) and switching cycles (for wear-out). Optional state is allocated only when the device
configuration enables it, so an ideal population costs two numbers per cell.
"""

from __future__ import annotations

import math

import numpy as np

from cim_runtime.device.config import DeviceConfig

NOT_STUCK, STUCK_AT_MIN, STUCK_AT_MAX = 0, 1, 2


class CellPopulation:
    """``count`` cells drawn from one :class:`DeviceConfig` with one random generator."""

    def __init__(self, config: DeviceConfig, count: int, rng: np.random.Generator):
        self.config = config
        self.count = count
        self._rng = rng
        response, variation = config.response, config.variation
        width = response.window_s

        self.range_min_s = self._spread(response.conductance_min_s, variation.conductance_min_sigma_dtod * width)
        self.range_max_s = self._spread(response.conductance_max_s, variation.conductance_max_sigma_dtod * width)
        if np.any(np.asarray(self.range_max_s) <= np.asarray(self.range_min_s)):
            self.range_max_s = np.maximum(self.range_max_s, np.asarray(self.range_min_s) + 1e-3 * width)
        self.direction = None
        self.window_state = None
        wanders = variation.window_min_sigma_ctoc > 0 or variation.window_max_sigma_ctoc > 0
        nu_ctoc = variation.nonlinearity_up_sigma_ctoc + variation.nonlinearity_down_sigma_ctoc if response.kind == "exponential" else 0.0
        if variation.range_sigma_ctoc > 0 or wanders or nu_ctoc > 0:
            # Each reversal redraws the range around the cell's own range, so keep that as the base.
            self._base_range_s = (np.broadcast_to(self.range_min_s, (count,)).copy(), np.broadcast_to(self.range_max_s, (count,)).copy())
            self.direction = np.zeros(count, dtype=np.int8)
            # The range state is a standard normal variable per cell that starts from its stationary distribution.
            self.window_state = rng.standard_normal(count) if wanders else np.zeros(count)
            low_shift, high_shift = self._window_shift_s(self.window_state)
            # A conductance cannot fall below 0, so neither can a shifted range bottom.
            self.range_min_s = np.maximum(self._base_range_s[0] + low_shift, 0.0)
            self.range_max_s = np.maximum(self._base_range_s[1] + high_shift, self.range_min_s + 1e-3 * width)

        nu_sigma = variation.nonlinearity_sigma_dtod if response.kind == "exponential" else 0.0
        self.curve = response.build(
            nu_up=self._spread(response.nonlinearity_up, nu_sigma) if nu_sigma else None,
            nu_down=self._spread(response.nonlinearity_down, nu_sigma) if nu_sigma else None,
        )
        self._per_cell_nu = nu_sigma > 0 or nu_ctoc > 0
        self._base_nu = None
        if nu_ctoc > 0:
            # Each reversal redraws the factor of the new direction around the cell's own factor.
            # NOTE: a checkpoint does not save these per-ramp factors, so a restored cell keeps the ones drawn last.
            self._base_nu = (np.broadcast_to(self.curve.nu_up, (count,)).copy(), np.broadcast_to(self.curve.nu_down, (count,)).copy())
            self.curve.nu_up, self.curve.nu_down = self._base_nu[0].copy(), self._base_nu[1].copy()

        self.threshold_shift_v = None
        if variation.threshold_sigma_dtod_v > 0:
            self.threshold_shift_v = (variation.threshold_sigma_dtod_v * rng.standard_normal(count)).astype(np.float32)
        sigma = variation.step_sigma_dtod
        self.step_factor = np.exp(sigma * rng.standard_normal(count) - sigma**2 / 2).astype(np.float32)

        low, _ = self.curve.reachable()
        start = low + np.abs(rng.standard_normal(count)) * variation.initial_spread_rel
        self.conductance_s = self._denormalize(np.minimum(start, 1.0), slice(None))

        self.stuck = None
        self._draw_stuck(variation)
        self.drift_nu = self._spread_array(variation.drift_nu_mean, variation.drift_nu_sigma_dtod, np.float32) if (
            variation.drift_nu_mean or variation.drift_nu_sigma_dtod) else None
        self.last_pulse_s = np.zeros(count) if self.drift_nu is not None else None
        self.endurance_limit = None
        if math.isfinite(variation.endurance_cycles):
            noise = variation.endurance_sigma_dtod * rng.standard_normal(count)
            self.endurance_limit = (variation.endurance_cycles * np.exp(noise)).astype(np.float32)
            self.cycles = np.zeros(count, dtype=np.int32)
            self.last_direction = np.zeros(count, dtype=np.int8)

    # Saved state.

    #: Per-cell attributes that pulses change; a checkpoint saves these and nothing drawn at creation.
    MUTABLE_STATE = ("conductance_s", "range_min_s", "range_max_s", "direction", "window_state", "last_pulse_s", "cycles",
                     "last_direction", "stuck")

    def state_of(self, index: slice) -> dict[str, np.ndarray]:
        """Copy the mutable per-cell state of the cells in ``index``."""
        return {name: np.array(value[index]) for name in self.MUTABLE_STATE
                if isinstance(value := getattr(self, name, None), np.ndarray) and value.shape == (self.count,)}

    def restore_state(self, index: slice, state: dict[str, np.ndarray]) -> None:
        """Put back state from :meth:`state_of`; attributes missing from ``state`` stay as they are."""
        for name, saved in state.items():
            if name not in self.MUTABLE_STATE:
                continue
            if name == "stuck" and self.stuck is None:
                self.stuck = np.zeros(self.count, dtype=np.int8)
            current = getattr(self, name, None)
            if not isinstance(current, np.ndarray) or current.shape != (self.count,) or current[index].shape != saved.shape:
                raise ValueError(f"saved {name} does not fit this simulator")
            current[index] = saved

    @property
    def rng_state(self) -> dict:
        return self._rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state

    # Draws.

    def _spread(self, mean: float, sigma: float):
        """Return ``mean`` as a scalar, or one normal draw per cell where ``sigma`` is above 0."""
        if sigma <= 0:
            return mean
        return mean + sigma * self._rng.standard_normal(self.count)

    def _spread_array(self, mean: float, sigma: float, dtype) -> np.ndarray:
        return np.maximum(mean + sigma * self._rng.standard_normal(self.count), 0.0).astype(dtype)

    def _draw_stuck(self, variation) -> None:
        if not (variation.stuck_min_fraction or variation.stuck_max_fraction):
            return
        draw = self._rng.random(self.count)
        self.stuck = np.zeros(self.count, dtype=np.int8)
        self.stuck[draw < variation.stuck_min_fraction] = STUCK_AT_MIN
        upper = variation.stuck_min_fraction + variation.stuck_max_fraction
        self.stuck[(draw >= variation.stuck_min_fraction) & (draw < upper)] = STUCK_AT_MAX
        self._pin_stuck(np.flatnonzero(self.stuck))

    # Coordinates.

    def _bounds(self, index) -> tuple[np.ndarray, np.ndarray]:
        low = self.range_min_s if np.ndim(self.range_min_s) == 0 else self.range_min_s[index]
        high = self.range_max_s if np.ndim(self.range_max_s) == 0 else self.range_max_s[index]
        return low, high

    def _normalize(self, conductance_s, index) -> np.ndarray:
        low, high = self._bounds(index)
        return (conductance_s - low) / (high - low)

    def _denormalize(self, x, index) -> np.ndarray:
        low, high = self._bounds(index)
        return low + x * (high - low)

    def window_s(self) -> tuple[float, float]:
        """Conductance range that both pulse directions reach on a nominal cell, in siemens."""
        low, high = self.curve.reachable()
        response = self.config.response
        return response.conductance_min_s + low * response.window_s, response.conductance_min_s + high * response.window_s

    def draw_normal(self, shape) -> np.ndarray:
        """Draw standard normal noise from the population's generator (for MVM read noise)."""
        return self._rng.standard_normal(shape)

    # Physics.

    def conductance_at(self, index: np.ndarray, now_s: float) -> np.ndarray:
        """Return the true conductance of cells at time ``now_s``, drift included."""
        conductance = self.conductance_s[index]
        if self.drift_nu is None:
            return conductance
        low, _ = self._bounds(index)
        t0 = self.config.variation.drift_t0_s
        decay = ((now_s - self.last_pulse_s[index] + t0) / t0) ** (-self.drift_nu[index].astype(np.float64))
        return low + (conductance - low) * decay

    def read(self, index: np.ndarray, now_s: float) -> np.ndarray:
        """Return one noisy read per cell, in siemens."""
        conductance = self.conductance_at(index, now_s)
        sigma = self.config.variation.read_sigma_rel
        if sigma == 0:
            return conductance
        return conductance * (1.0 + sigma * self._rng.standard_normal(conductance.shape))

    def pulse(self, index: np.ndarray, amplitude_v: np.ndarray, width_s: np.ndarray, now_s: float) -> None:
        """Apply one pulse to each cell in ``index`` (unique flat indices)."""
        if self.drift_nu is not None:
            self.conductance_s[index] = self.conductance_at(index, now_s)
            self.last_pulse_s[index] = now_s
        up = amplitude_v > 0
        pulses = np.empty(index.shape)
        shift = 0.0 if self.threshold_shift_v is None else self.threshold_shift_v[index]
        shift_up = shift if np.ndim(shift) == 0 else shift[up]
        shift_down = shift if np.ndim(shift) == 0 else shift[~up]
        pulses[up] = self.config.law_up.nominal_pulses(amplitude_v[up], width_s[up], shift_up)
        pulses[~up] = self.config.law_down.nominal_pulses(amplitude_v[~up], width_s[~up], shift_down)
        pulses *= self.step_factor[index]
        variation = self.config.variation
        if variation.step_sigma_ctoc > 0:
            pulses *= np.maximum(1.0 + variation.step_sigma_ctoc * self._rng.standard_normal(pulses.shape), 0.0)

        if self.direction is not None:
            self._redraw_range_at_reversal(index, np.where(up, 1, -1).astype(np.int8))
        x = self._normalize(self.conductance_s[index], index)
        moved = np.empty_like(x)
        moved[up] = self._move(self.curve.up, x[up], pulses[up], index, up)
        moved[~up] = self._move(self.curve.down, x[~up], pulses[~up], index, ~up)
        if variation.write_noise_sigma_rel > 0:
            jump = variation.write_noise_sigma_rel * self._rng.standard_normal(moved.shape)
            moved = np.clip(moved + np.where(pulses > 0, jump, 0.0), 0.0, 1.0)
        self.conductance_s[index] = self._denormalize(moved, index)

        if self.endurance_limit is not None:
            self._wear(index, np.where(up, 1, -1).astype(np.int8))
        if self.stuck is not None:
            self._pin_stuck(index[self.stuck[index] != NOT_STUCK])

    def _window_shift_s(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the shifts of the range bottom and top for a range state, in siemens."""
        variation, width = self.config.variation, self.config.response.window_s
        return variation.window_min_sigma_ctoc * width * state, variation.window_max_sigma_ctoc * width * state

    def _redraw_range_at_reversal(self, index: np.ndarray, direction: np.ndarray) -> None:
        """Move the range state and redraw the approached range end of each cell whose pulse direction changed.

        The range state follows a first-order autoregressive process over reversals, with a standard
        normal stationary distribution and the correlation ``window_correlation_ctoc`` between
        reversals. It sets the shift of the approached end. The end the cell leaves stays where it
        is, so a ramp starts where the last one ended and at the same point of its curve.
        """
        changed = self.direction[index] != direction
        self.direction[index] = direction
        variation = self.config.variation
        width = self.config.response.window_s
        if variation.window_min_sigma_ctoc > 0 or variation.window_max_sigma_ctoc > 0:
            turned = index[changed]
            rho = variation.window_correlation_ctoc
            self.window_state[turned] = rho * self.window_state[turned] + np.sqrt(1.0 - rho**2) * self._rng.standard_normal(turned.size)
        if self._base_nu is not None:
            self._redraw_nonlinearity(index[changed & (direction == 1)], index[changed & (direction == -1)])

        sigma = variation.range_sigma_ctoc * width
        margin = 1e-3 * width
        rising = index[changed & (direction == 1)]
        falling = index[changed & (direction == -1)]
        top = self._base_range_s[1][rising] + self._window_shift_s(self.window_state[rising])[1]
        if sigma > 0:
            top = top + sigma * self._rng.standard_normal(rising.size)
        self.range_max_s[rising] = np.maximum(top, self.range_min_s[rising] + margin)
        bottom = self._base_range_s[0][falling] + self._window_shift_s(self.window_state[falling])[0]
        if sigma > 0:
            bottom = bottom + sigma * self._rng.standard_normal(falling.size)
        self.range_min_s[falling] = np.maximum(np.minimum(bottom, self.range_max_s[falling] - margin), 0.0)

    def _redraw_nonlinearity(self, rising: np.ndarray, falling: np.ndarray) -> None:
        variation = self.config.variation
        # ResponseConfig accepts nonlinearity factors up to 50 in magnitude.
        bound = 50.0
        up = self._base_nu[0][rising] + variation.nonlinearity_up_sigma_ctoc * self._rng.standard_normal(rising.size)
        down = self._base_nu[1][falling] + variation.nonlinearity_down_sigma_ctoc * self._rng.standard_normal(falling.size)
        self.curve.nu_up[rising] = np.clip(up, -bound, bound)
        self.curve.nu_down[falling] = np.clip(down, -bound, bound)

    def _move(self, step, x, pulses, index, selected):
        if self._per_cell_nu:
            return step(x, pulses, index=index[selected])
        return step(x, pulses)

    def _wear(self, index: np.ndarray, direction: np.ndarray) -> None:
        """Count a switching cycle at every depression-to-potentiation turn; worn cells stick at the top."""
        turned = (self.last_direction[index] == -1) & (direction == 1)
        self.cycles[index[turned]] += 1
        self.last_direction[index] = direction
        worn = index[self.cycles[index] >= self.endurance_limit[index]]
        if worn.size:
            if self.stuck is None:
                self.stuck = np.zeros(self.count, dtype=np.int8)
            self.stuck[worn] = STUCK_AT_MAX

    def _pin_stuck(self, index: np.ndarray) -> None:
        if not index.size:
            return
        low, high = self._bounds(index)
        self.conductance_s[index] = np.where(self.stuck[index] == STUCK_AT_MIN, low, high)
