"""Fit a device model to pulse-train measurements.

The exponential form (see :mod:`cim_runtime.device.response`) is fitted to the mean ramp of each
direction: ``G(k) = G_start + (G_end - G_start) * shape(k / N, nu)`` with ``k`` the pulse count and
``N`` the pulses of the measured train, so ``G_start``, ``G_end`` and ``nu`` are fitted. The device
range is the union of both spans. The fit error is the RMS deviation from the mean ramp divided by
the measured range (NRMSE). Where the exponential form misses by more than
``max_nrmse``, ``model="auto"`` keeps a table model instead: the mean ramps made monotonic by
isotonic regression and joined linearly between the centres of its steps. Where the data name at
least 3 cells, each cell's pulse axis is first scaled by its step factor. The mean ramp is then the
ramp of a cell with factor 1, not a blur of fast and slow cells.

Descriptors besides the model parameters:

* asymmetric nonlinearity (ANL): ``(G_up(n/2) - G_down(n/2)) / W`` at mid-train, 0 for a linear
  symmetric device;
* cycle-to-cycle step sigma, read noise and the cell-to-cell step spread, measured on the fitted
  curve (see :mod:`cim_runtime.device.noise_fit`); they need at least two ramps per direction, and
  the device file keeps the defaults where they cannot be measured;
* range wander from cycle to cycle (see :mod:`cim_runtime.device.window_fit`), where the cells have
  at least 10 ramps per direction;
* ramp-to-ramp spread: the standard deviation across ramps at each pulse, averaged over pulses;
* distinguishable levels: ``1 + floor(W / (2 * spread))``, capped at the pulses of the longer train;
* device-to-device spread of the range and nonlinearity, where the file names several cells.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import isotonic_regression, least_squares

from cim_runtime.device.config import DeviceConfig, ResponseConfig, VariationConfig
from cim_runtime.device.cell_speed import aligned_mean_ramp
from cim_runtime.device.noise_fit import estimate_noise
from cim_runtime.device.readers import PulseTrainData
from cim_runtime.device.response import exponential_shape
from cim_runtime.device.window_fit import fit_window_wander
from cim_runtime.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MODELS = ("auto", "exponential", "table")
NU_BOUND = 30.0
#: Rounds of aligning cells by their step factor and refitting the curve.
ALIGNMENT_PASSES = 3


def mean_ramp(ramps: list[np.ndarray]) -> np.ndarray:
    """Average ramps pulse by pulse, over the pulses that at least half of the ramps reach."""
    length = max(ramp.size for ramp in ramps)
    stacked = np.full((len(ramps), length), np.nan)
    for row, ramp in enumerate(ramps):
        stacked[row, : ramp.size] = ramp
    present = np.sum(~np.isnan(stacked), axis=0)
    keep = present >= max(1, len(ramps) / 2)
    return np.nanmean(stacked[:, keep], axis=0)


def exponential_ramp(params: np.ndarray, length: int) -> np.ndarray:
    """Evaluate ``start + (end - start) * shape(k / (length - 1), nu)`` at k = 0..length-1."""
    start, end, nu = params
    return start + (end - start) * exponential_shape(np.arange(length) / (length - 1), nu)


def fit_exponential_ramp(ramp: np.ndarray, initial: np.ndarray | None = None) -> np.ndarray:
    """Fit (start, end, nu) to one mean ramp, from ``initial`` or else from several starting nonlinearities.

    NaN values of ``ramp`` are missing pulses: they keep their place in the pulse count but do not
    enter the fit.
    """
    present = ~np.isnan(ramp)
    values = ramp[present]
    width = float(values.max() - values.min()) or 1.0

    def residual(params):
        return (exponential_ramp(params, ramp.size)[present] - values) / width

    lower = [values.min() - width, values.min() - width, -NU_BOUND]
    upper = [values.max() + width, values.max() + width, NU_BOUND]
    starts = [[values[0], values[-1], nu] for nu in (-5.0, -1.0, 0.5, 3.0, 8.0)]
    if initial is not None:
        starts = [np.clip(initial, np.add(lower, 1e-12), np.subtract(upper, 1e-12))]
    best = None
    for start in starts:
        result = least_squares(residual, start, bounds=(lower, upper))
        if best is None or result.cost < best.cost:
            best = result
    return best.x


def monotone_curve(ramp: np.ndarray, increasing: bool) -> np.ndarray:
    """Fit a monotonic curve to a ramp without the flat steps of plain isotonic regression.

    Isotonic regression of a noisy ramp is a staircase, and a table with long flat steps would need many
    pulses per level in the simulator. The curve here runs linearly between the centres of the steps.
    """
    steps = isotonic_regression(ramp, increasing=increasing).x
    starts = np.flatnonzero(np.concatenate([[True], np.diff(steps) != 0]))
    ends = np.concatenate([starts[1:], [steps.size]]) - 1
    centres = (starts + ends) / 2.0
    if centres.size < 2:
        return steps
    return np.interp(np.arange(steps.size), centres, steps[starts])


def _nrmse(model: np.ndarray, measured: np.ndarray, width: float) -> float:
    return float(np.sqrt(np.mean((model - measured) ** 2)) / width)


def ramp_spread(ramps: list[np.ndarray]) -> float:
    """Standard deviation across ramps at each pulse, averaged over pulses; 0 for one ramp."""
    if len(ramps) < 2:
        return 0.0
    length = min(ramp.size for ramp in ramps)
    return float(np.mean(np.std(np.stack([ramp[:length] for ramp in ramps]), axis=0, ddof=1)))


@dataclass
class DeviceFit:
    """Fitted parameters, descriptors and errors, and the device configuration they define."""

    name: str
    model: str
    conductance_min_s: float
    conductance_max_s: float
    nonlinearity_up: float
    nonlinearity_down: float
    pulses_up: float
    pulses_down: float
    nrmse_exponential: dict
    nrmse_table: dict
    nrmse: dict
    asymmetry_measured: float
    asymmetry_fitted: float
    #: None where one ramp per direction cannot separate noise from the curve's shape.
    step_sigma_ctoc: float | None
    #: Read noise relative to the mean conductance; None where it cannot be measured.
    read_sigma_rel: float | None
    #: Range wander (see :mod:`cim_runtime.device.window_fit`), or None where it cannot be measured.
    window_wander: dict | None
    ramp_spread_s: dict
    levels: int
    spread_dtod: dict
    config: DeviceConfig
    mean_up: np.ndarray = field(repr=False)
    mean_down: np.ndarray = field(repr=False)
    fitted_up: np.ndarray = field(repr=False)
    fitted_down: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        skip = {"config", "mean_up", "mean_down", "fitted_up", "fitted_down"}
        return {key: value for key, value in self.__dict__.items() if key not in skip}


def _asymmetry(up: np.ndarray, down: np.ndarray, width: float) -> float:
    middle = min(up.size, down.size) // 2
    return float((up[middle] - down[middle]) / width)


def _midpoint_index(ramp: np.ndarray, increasing: bool) -> float:
    """Fractional pulse count at which a ramp crosses the middle of its own span."""
    curve = monotone_curve(ramp, increasing)
    middle = (curve[0] + curve[-1]) / 2
    ordered = curve if increasing else curve[::-1]
    index = float(np.interp(middle, ordered, np.arange(curve.size)))
    return index if increasing else curve.size - 1 - index


def _step_spread(data: PulseTrainData, cells: list[int]) -> float:
    """Log-normal sigma of per-cell speed: how many pulses each cell needs to cross mid-span."""
    logs = []
    for ramps, owners, increasing in ((data.up, data.up_cells, True), (data.down, data.down_cells, False)):
        crossings = [_midpoint_index(mean_ramp([r for r, c in zip(ramps, owners) if c == cell]), increasing) for cell in cells]
        crossings = np.maximum(np.asarray(crossings), 0.5)
        logs.append(np.std(np.log(crossings)))
    return float(np.mean(logs))


def _cell_fit_spread(ramps, owners, cells, speeds: dict[int, float], initial) -> np.ndarray:
    """Return the spread across cells of each exponential parameter (start, end, nu) of one direction.

    Each ramp is aligned by its cell's step factor and fitted on its own. A slow cell does not reach
    the last pulses of the nominal curve, so those stay missing in its fit instead of being padded.
    The variance of the per-cell means, less the sampling variance of such a mean (the scatter of the
    cell's ramps divided by their count), is the spread that the cells themselves have.
    """
    length = mean_ramp(ramps).size
    index = np.arange(length, dtype=np.float64)
    means, sampling = [], []
    for cell in cells:
        own = [ramp for ramp, owner in zip(ramps, owners) if owner == cell]
        factor = speeds.get(cell, 1.0)
        fits = np.array([fit_exponential_ramp(np.interp(index, factor * np.arange(ramp.size), ramp, right=np.nan), initial)
                         for ramp in own])
        means.append(fits.mean(axis=0))
        sampling.append(fits.var(axis=0, ddof=1) / len(own) if len(own) >= 2 else np.zeros(3))
    variance = np.var(np.array(means), axis=0, ddof=1) - np.mean(np.array(sampling), axis=0)
    return np.sqrt(np.maximum(variance, 0.0))


def _dtod_spread(data: PulseTrainData, exponential: bool, speeds: dict[int, float], nominal: tuple) -> dict:
    """Return the spread of the parameters across cells, where the data name at least 3 cells.

    The step spread is model-free. The range and nonlinearity spreads come from exponential fits of each
    cell, so they are left out where the exponential form does not describe the device. Each cell's
    ramps are first aligned by its step factor (``speeds``), because a fast cell's ramp otherwise looks
    like one of a stronger nonlinearity; each fit starts from the ``nominal`` (up, down) parameters.
    """
    cells = sorted(set(data.up_cells) & set(data.down_cells))
    if len(cells) < 3:
        return {}
    spread = {"cells": len(cells), "step_sigma_dtod": _step_spread(data, cells)}
    if not exponential:
        return spread
    up = _cell_fit_spread(data.up, data.up_cells, cells, speeds, nominal[0])
    down = _cell_fit_spread(data.down, data.down_cells, cells, speeds, nominal[1])
    width = float(np.mean([nominal[0][1] - nominal[0][0], nominal[1][0] - nominal[1][1]]))
    # A ramp starts where the previous one stopped, which for a slow cell is short of the range end,
    # so each range end comes from the ramp that approaches it.
    return {
        **spread,
        "conductance_min_sigma_dtod": float(down[1] / width),
        "conductance_max_sigma_dtod": float(up[1] / width),
        "nonlinearity_sigma_dtod": float((up[2] + down[2]) / 2),
    }


@dataclass
class _Shapes:
    """Both model forms fitted to a pair of mean ramps, and the form chosen."""

    model: str
    up_params: np.ndarray
    down_params: np.ndarray
    fitted_up: np.ndarray
    fitted_down: np.ndarray
    table_up: np.ndarray
    table_down: np.ndarray
    nrmse_exponential: dict
    nrmse_table: dict

    def curves(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the chosen model's ramps, one value per pulse."""
        if self.model == "exponential":
            return self.fitted_up, self.fitted_down
        return self.table_up, self.table_down


def _fit_shapes(up: np.ndarray, down: np.ndarray, width: float, model: str, max_nrmse: float) -> _Shapes:
    up_params, down_params = fit_exponential_ramp(up), fit_exponential_ramp(down)
    fitted_up, fitted_down = exponential_ramp(up_params, up.size), exponential_ramp(down_params, down.size)
    table_up = monotone_curve(up, increasing=True)
    table_down = monotone_curve(down, increasing=False)
    nrmse_exponential = {"up": _nrmse(fitted_up, up, width), "down": _nrmse(fitted_down, down, width)}
    nrmse_table = {"up": _nrmse(table_up, up, width), "down": _nrmse(table_down, down, width)}
    chosen = model
    if model == "auto":
        chosen = "exponential" if max(nrmse_exponential.values()) <= max_nrmse else "table"
    return _Shapes(chosen, up_params, down_params, fitted_up, fitted_down, table_up, table_down, nrmse_exponential, nrmse_table)


def fit_device(data: PulseTrainData, *, model: str = "auto", max_nrmse: float = 0.03, name: str | None = None) -> DeviceFit:
    """Fit ``data`` and build the device configuration of the chosen model.

    Raises:
        ConfigError: ``model`` is unknown.
        DataError: the ramps are too short or the measured range is empty.
    """
    if model not in MODELS:
        raise ConfigError(f"model {model!r} is invalid: use one of {', '.join(MODELS)}")
    up, down = mean_ramp(data.up), mean_ramp(data.down)
    if up.size < 3 or down.size < 3:
        raise DataError(f"{data.name}: ramps need at least 3 values (the start and 2 pulses), got {up.size} up and {down.size} down")
    low, high = min(up.min(), down.min()), max(up.max(), down.max())
    if not high > low:
        raise DataError(f"{data.name}: every value is {low:g}, so there is no conductance range to fit")
    width = high - low

    measurable = len(data.up) >= 2 and len(data.down) >= 2
    shapes = _fit_shapes(up, down, width, model, max_nrmse)
    noise = estimate_noise(data, *shapes.curves()) if measurable else None
    for _ in range(ALIGNMENT_PASSES):
        if noise is None or not noise.speed_factors:
            break
        # Fit the curve of a cell with step factor 1, then measure the noise on that sharper curve.
        up = aligned_mean_ramp(data.up, data.up_cells, noise.speed_factors, up.size)
        down = aligned_mean_ramp(data.down, data.down_cells, noise.speed_factors, down.size)
        shapes = _fit_shapes(up, down, width, model, max_nrmse)
        noise = estimate_noise(data, *shapes.curves())
    chosen, up_params, down_params = shapes.model, shapes.up_params, shapes.down_params
    model_up, model_down = shapes.curves()
    table_up, table_down = shapes.table_up, shapes.table_down
    nrmse_exponential, nrmse_table = shapes.nrmse_exponential, shapes.nrmse_table

    g_min = float(min(up_params[0], up_params[1], down_params[0], down_params[1]))
    g_max = float(max(up_params[0], up_params[1], down_params[0], down_params[1]))
    ctoc = read_sigma_rel = wander = None
    if noise is not None:
        ctoc = float(min(0.95, noise.step_sigma_ctoc))
        read_sigma_rel = float(min(0.95, noise.read_sigma_rel))
        read_sigma_s = read_sigma_rel * float(np.mean(np.concatenate([up, down])))
        wander = fit_window_wander(data, width, read_sigma_s)
    spreads = {"up": ramp_spread(data.up), "down": ramp_spread(data.down)}
    residual = np.sqrt(np.mean(np.concatenate([model_up - up, model_down - down]) ** 2))
    level_sigma = max(np.mean(list(spreads.values())), residual, 1e-12 * width)
    levels = int(min(1 + np.floor(width / (2 * level_sigma)), max(up.size, down.size)))
    speeds = noise.speed_factors if noise is not None else {}
    dtod = _dtod_spread(data, chosen == "exponential", speeds, (up_params, down_params))
    if dtod and noise is not None and noise.step_sigma_dtod is not None:
        dtod["step_sigma_dtod"] = noise.step_sigma_dtod

    variation = VariationConfig(
        step_sigma_ctoc=ctoc if ctoc is not None else VariationConfig.step_sigma_ctoc,
        read_sigma_rel=read_sigma_rel if read_sigma_rel is not None else VariationConfig.read_sigma_rel,
        window_min_sigma_ctoc=wander.min_sigma_rel if wander else 0.0,
        window_max_sigma_ctoc=wander.max_sigma_rel if wander else 0.0,
        window_correlation_ctoc=wander.correlation if wander else 0.0,
        step_sigma_dtod=dtod.get("step_sigma_dtod", 0.0),
        conductance_min_sigma_dtod=dtod.get("conductance_min_sigma_dtod", 0.0),
        conductance_max_sigma_dtod=dtod.get("conductance_max_sigma_dtod", 0.0),
        nonlinearity_sigma_dtod=dtod.get("nonlinearity_sigma_dtod", 0.0) if chosen == "exponential" else 0.0,
        initial_spread_rel=0.0,
    )
    if chosen == "exponential":
        if g_min < 0:
            raise DataError(f"{data.name}: the fitted range starts at {g_min:g}, below 0; the values are not conductances in "
                            "siemens, so map them onto a conductance window first (cim-run fit --map-to-s MIN MAX)")
        response = ResponseConfig(
            kind="exponential", conductance_min_s=g_min, conductance_max_s=g_max,
            nonlinearity_up=float(up_params[2]), nonlinearity_down=float(down_params[2]),
            pulses_up=float(up.size - 1), pulses_down=float(down.size - 1),
            up_span_s=(float(up_params[0]), float(up_params[1])), down_span_s=(float(down_params[0]), float(down_params[1])),
        )
    else:
        if low < 0:
            raise DataError(f"{data.name}: the measured range starts at {low:g}, below 0; the values are not conductances in "
                            "siemens, so map them onto a conductance window first (cim-run fit --map-to-s MIN MAX)")
        response = ResponseConfig(
            kind="table", conductance_min_s=float(low), conductance_max_s=float(high),
            potentiation_s=tuple(map(float, table_up)), depression_s=tuple(map(float, table_down)),
        )
    config = DeviceConfig(name=name or data.name, response=response, variation=variation)
    return DeviceFit(
        name=config.name, model=chosen,
        conductance_min_s=response.conductance_min_s, conductance_max_s=response.conductance_max_s,
        nonlinearity_up=float(up_params[2]), nonlinearity_down=float(down_params[2]),
        pulses_up=float(up.size - 1), pulses_down=float(down.size - 1),
        nrmse_exponential=nrmse_exponential, nrmse_table=nrmse_table,
        nrmse=nrmse_exponential if chosen == "exponential" else nrmse_table,
        asymmetry_measured=_asymmetry(up, down, width), asymmetry_fitted=_asymmetry(model_up, model_down, width),
        step_sigma_ctoc=ctoc, read_sigma_rel=read_sigma_rel, window_wander=asdict(wander) if wander else None, ramp_spread_s=spreads, levels=levels, spread_dtod=dtod, config=config,
        mean_up=up, mean_down=down, fitted_up=model_up, fitted_down=model_down,
    )
