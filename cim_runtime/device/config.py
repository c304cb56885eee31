"""Validated device configuration: response curve, pulse law and variability, loadable from TOML.

A device file is TOML with a top-level ``name`` and the tables ``[response]``, ``[law_up]``,
``[law_down]`` and ``[variation]``; every field is documented below with its unit. Unknown keys and
values out of range raise :class:`~cim_runtime.errors.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import tomli_w

from cim_runtime.device.response import ExponentialResponse, ResponseCurve, SoftBoundsResponse, TableResponse
from cim_runtime.errors import ConfigError
from cim_runtime.files import read_toml

RESPONSE_KINDS = ("table", "exponential", "soft-bounds", "linear-step")
_CURVE_FIELDS = ("potentiation_s", "depression_s")
_EXPONENTIAL_FIELDS = ("nonlinearity_up", "nonlinearity_down", "up_span_s", "down_span_s")
_PULSE_FIELDS = ("pulses_up", "pulses_down")
_SOFT_FIELDS = ("step_fraction_up", "step_fraction_down")
#: Response fields a device file of each kind leaves out, because that kind ignores them.
UNUSED_BY_KIND = {
    "table": _EXPONENTIAL_FIELDS + _PULSE_FIELDS + _SOFT_FIELDS,
    "exponential": _CURVE_FIELDS + _SOFT_FIELDS,
    "linear-step": _CURVE_FIELDS + _EXPONENTIAL_FIELDS + _SOFT_FIELDS,
    "soft-bounds": _CURVE_FIELDS + _EXPONENTIAL_FIELDS + _PULSE_FIELDS,
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class PulseLaw:
    """Scaling of the step along the response curve with pulse amplitude and width.

    A pulse counts as ``((|V| - threshold_v) / (nominal_amplitude_v - threshold_v)) ** amplitude_exponent
    * (width_s / nominal_width_s) ** width_exponent`` nominal pulses, and as none when ``|V| <= threshold_v``.
    """

    #: Amplitude magnitude below which a pulse changes nothing, in volts.
    threshold_v: float = 0.5
    #: Amplitude magnitude of the pulse that counts as one nominal pulse, in volts.
    nominal_amplitude_v: float = 1.0
    #: Width of the nominal pulse, in seconds.
    nominal_width_s: float = 100e-6
    #: Power of the normalized overdrive, above 0.
    amplitude_exponent: float = 1.0
    #: Power of the normalized width, above 0.
    width_exponent: float = 1.0

    def __post_init__(self) -> None:
        _require(0 <= self.threshold_v < self.nominal_amplitude_v,
                 f"threshold_v={self.threshold_v} is invalid: must be at least 0 and below nominal_amplitude_v={self.nominal_amplitude_v}")
        _require(self.nominal_width_s > 0, f"nominal_width_s={self.nominal_width_s} is invalid: must be above 0")
        _require(self.amplitude_exponent > 0 and self.width_exponent > 0,
                 f"amplitude_exponent={self.amplitude_exponent} and width_exponent={self.width_exponent} must be above 0")

    def nominal_pulses(self, amplitude_v: np.ndarray, width_s: np.ndarray, threshold_shift_v=0.0) -> np.ndarray:
        """Return how many nominal pulses each (amplitude, width) pulse is worth.

        ``threshold_shift_v`` moves each cell's threshold (device-to-device spread); the nominal pulse
        keeps its meaning relative to the unshifted threshold.
        """
        threshold = self.threshold_v + np.asarray(threshold_shift_v)
        overdrive = (np.abs(amplitude_v) - threshold) / (self.nominal_amplitude_v - self.threshold_v)
        return np.maximum(overdrive, 0.0) ** self.amplitude_exponent * (np.asarray(width_s) / self.nominal_width_s) ** self.width_exponent


@dataclass(frozen=True)
class ResponseConfig:
    """The response curve of the device population and its conductance range."""

    #: One of ``table``, ``exponential``, ``soft-bounds``, ``linear-step``.
    kind: str
    #: Bottom of the device's conductance range, in siemens.
    conductance_min_s: float
    #: Top of the device's conductance range, in siemens.
    conductance_max_s: float
    #: Table form: conductance after each potentiation pulse, in siemens.
    potentiation_s: tuple[float, ...] = ()
    #: Table form: conductance after each depression pulse, in siemens.
    depression_s: tuple[float, ...] = ()
    #: Exponential form: nonlinearity factor of potentiation (0 linear, above 0 saturating).
    nonlinearity_up: float = 0.0
    #: Exponential form: nonlinearity factor of depression.
    nonlinearity_down: float = 0.0
    #: Exponential and linear-step forms: nominal pulses that cross the range upwards.
    pulses_up: float = 64.0
    #: Exponential and linear-step forms: nominal pulses that cross the range downwards.
    pulses_down: float = 64.0
    #: Exponential form: (start, end) of the potentiation curve in siemens; the whole range if empty.
    up_span_s: tuple[float, ...] = ()
    #: Exponential form: (start, end) of the depression curve in siemens; the whole range if empty.
    down_span_s: tuple[float, ...] = ()
    #: Soft-bounds form: fraction of the distance to the top moved by one nominal pulse.
    step_fraction_up: float = 0.05
    #: Soft-bounds form: fraction of the distance to the bottom moved by one nominal pulse.
    step_fraction_down: float = 0.05

    def __post_init__(self) -> None:
        _require(self.kind in RESPONSE_KINDS, f"response kind {self.kind!r} is invalid: use one of {', '.join(RESPONSE_KINDS)}")
        low, high = self.conductance_min_s, self.conductance_max_s
        _require(math.isfinite(low) and math.isfinite(high) and 0 <= low < high,
                 f"conductance range [{low:g}, {high:g}] S is invalid: need 0 <= conductance_min_s < conductance_max_s")
        if self.kind == "table":
            for label, curve in (("potentiation_s", self.potentiation_s), ("depression_s", self.depression_s)):
                _require(len(curve) >= 2, f"table response needs at least 2 values in {label}, got {len(curve)}")
                _require(all(math.isfinite(v) for v in curve), f"{label} has a value that is not finite")
        for label in ("pulses_up", "pulses_down"):
            value = getattr(self, label)
            _require(math.isfinite(value) and value >= 1, f"{label}={value} is invalid: must be at least 1 pulse")
        for label in ("nonlinearity_up", "nonlinearity_down"):
            value = getattr(self, label)
            _require(math.isfinite(value) and abs(value) <= 50, f"{label}={value} is invalid: must be between -50 and 50")
        for label, increasing in (("up_span_s", True), ("down_span_s", False)):
            span = getattr(self, label)
            if span:
                _require(len(span) == 2 and all(math.isfinite(v) for v in span), f"{label} must be two finite conductances, got {span}")
                _require((span[1] > span[0]) == increasing and low <= min(span) and max(span) <= high,
                         f"{label}={list(span)} is invalid: it must run {'up' if increasing else 'down'} inside [{low:g}, {high:g}] S")
        for label in ("step_fraction_up", "step_fraction_down"):
            value = getattr(self, label)
            _require(0 < value < 1, f"{label}={value} is invalid: must be above 0 and below 1")

    @property
    def window_s(self) -> float:
        return self.conductance_max_s - self.conductance_min_s

    def normalize(self, conductance_s) -> np.ndarray:
        return (np.asarray(conductance_s, dtype=np.float64) - self.conductance_min_s) / self.window_s

    def build(self, nu_up=None, nu_down=None) -> ResponseCurve:
        """Build the curve; ``nu_up`` and ``nu_down`` override the exponential factors per cell."""
        if self.kind == "table":
            return TableResponse(self.normalize(self.potentiation_s), self.normalize(self.depression_s))
        if self.kind == "soft-bounds":
            return SoftBoundsResponse(self.step_fraction_up, self.step_fraction_down)
        if self.kind == "linear-step":
            return ExponentialResponse(0.0, 0.0, self.pulses_up, self.pulses_down)
        return ExponentialResponse(
            self.nonlinearity_up if nu_up is None else nu_up,
            self.nonlinearity_down if nu_down is None else nu_down,
            self.pulses_up, self.pulses_down,
            span_up=tuple(self.normalize(self.up_span_s)) if self.up_span_s else (0.0, 1.0),
            span_down=tuple(self.normalize(self.down_span_s)) if self.down_span_s else (1.0, 0.0),
        )


@dataclass(frozen=True)
class VariationConfig:
    """Variability and faults of a device population; every sigma is of a normal draw."""

    #: Log-normal sigma of the per-cell step factor.
    step_sigma_dtod: float = 0.10
    #: Per-cell spread of the range bottom, relative to the range width.
    conductance_min_sigma_dtod: float = 0.0
    #: Per-cell spread of the range top, relative to the range width.
    conductance_max_sigma_dtod: float = 0.0
    #: Per-cell spread of the exponential nonlinearity factors (absolute).
    nonlinearity_sigma_dtod: float = 0.0
    #: Per-cell spread of the switching threshold of both pulse laws, in volts.
    threshold_sigma_dtod_v: float = 0.0
    #: Relative sigma of the step of each pulse (cycle-to-cycle).
    step_sigma_ctoc: float = 0.05
    #: Sigma of the range end a cell moves toward, redrawn at every reversal of direction, relative to the range width.
    range_sigma_ctoc: float = 0.0
    #: Sigma of the shift of the range bottom that wanders with the cell's range state, relative to the range width.
    window_min_sigma_ctoc: float = 0.0
    #: Sigma of the shift of the range top that wanders with the same state, relative to the range width.
    window_max_sigma_ctoc: float = 0.0
    #: Correlation of the range state between consecutive reversals: 0 redraws it, near 1 lets it wander slowly.
    window_correlation_ctoc: float = 0.0
    #: Exponential form: sigma of the potentiation nonlinearity factor of a ramp, redrawn at each reversal around the cell's own.
    nonlinearity_up_sigma_ctoc: float = 0.0
    #: Exponential form: sigma of the depression nonlinearity factor of a ramp, redrawn at each reversal around the cell's own.
    nonlinearity_down_sigma_ctoc: float = 0.0
    #: Sigma of a conductance jump added by each pulse, relative to the range width.
    write_noise_sigma_rel: float = 0.0
    #: Relative sigma of each read.
    read_sigma_rel: float = 0.002
    #: Spread of the as-fabricated conductance above the bottom of the window, relative to the range width.
    initial_spread_rel: float = 0.02
    #: Fraction of cells stuck at the bottom of their range.
    stuck_min_fraction: float = 0.0
    #: Fraction of cells stuck at the top of their range.
    stuck_max_fraction: float = 0.0
    #: Mean drift exponent: a cell relaxes as ``G_min + (G - G_min) * ((t + t0) / t0) ** -nu`` after its last pulse.
    drift_nu_mean: float = 0.0
    #: Per-cell sigma of the drift exponent.
    drift_nu_sigma_dtod: float = 0.0
    #: Reference time of the drift law, in seconds.
    drift_t0_s: float = 1.0
    #: Median switching cycles before a cell wears out and sticks at the top of its range; inf for none.
    endurance_cycles: float = math.inf
    #: Log-normal sigma of the per-cell endurance.
    endurance_sigma_dtod: float = 0.3

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            _require(not math.isnan(value) and value >= 0, f"{item.name}={value} is invalid: must be at least 0")
        for name in ("step_sigma_ctoc", "read_sigma_rel", "write_noise_sigma_rel", "initial_spread_rel", "range_sigma_ctoc",
                     "window_min_sigma_ctoc", "window_max_sigma_ctoc", "window_correlation_ctoc"):
            _require(getattr(self, name) < 1, f"{name}={getattr(self, name)} is invalid: must be below 1")
        _require(self.stuck_min_fraction + self.stuck_max_fraction <= 1,
                 f"stuck_min_fraction + stuck_max_fraction = {self.stuck_min_fraction + self.stuck_max_fraction} exceeds 1")
        _require(self.drift_t0_s > 0, f"drift_t0_s={self.drift_t0_s} is invalid: must be above 0")
        _require(self.endurance_cycles >= 1, f"endurance_cycles={self.endurance_cycles} is invalid: must be at least 1")


@dataclass(frozen=True)
class DeviceConfig:
    """Everything the simulator needs to know about a device population."""

    name: str
    response: ResponseConfig
    law_up: PulseLaw = field(default_factory=PulseLaw)
    law_down: PulseLaw = field(default_factory=PulseLaw)
    variation: VariationConfig = field(default_factory=VariationConfig)

    def without_variation(self) -> "DeviceConfig":
        """Return a copy with no variability, noise or faults."""
        quiet = VariationConfig(step_sigma_dtod=0, step_sigma_ctoc=0, read_sigma_rel=0, initial_spread_rel=0)
        return replace(self, variation=quiet)

    def to_toml(self) -> str:
        document = asdict(self)
        response = document["response"]
        for key in UNUSED_BY_KIND[self.response.kind]:
            del response[key]
        for key in ("potentiation_s", "depression_s", "up_span_s", "down_span_s"):
            if key in response and not response[key]:
                del response[key]
            elif key in response:
                response[key] = list(response[key])
        return tomli_w.dumps(document)


SECTIONS = {"response": ResponseConfig, "law_up": PulseLaw, "law_down": PulseLaw, "variation": VariationConfig}


def _build_section(section: str, raw: object, source: str):
    cls = SECTIONS[section]
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    allowed = {item.name for item in fields(cls)}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)} in [{section}]; allowed: {', '.join(sorted(allowed))}")
    defaults = {item.name: item.default for item in fields(cls)}
    values = {}
    for key, value in raw.items():
        expected = defaults[key]
        if isinstance(expected, tuple):
            if not isinstance(value, list) or not all(_is_number(v) for v in value):
                raise ConfigError(f"{source}: [{section}] {key} = {value!r} is invalid: expected a list of numbers")
            value = tuple(float(v) for v in value)
        elif isinstance(expected, str) or key == "kind":
            if not isinstance(value, str):
                raise ConfigError(f"{source}: [{section}] {key} = {value!r} is invalid: expected a string")
        elif not _is_number(value):
            raise ConfigError(f"{source}: [{section}] {key} = {value!r} is invalid: expected a number")
        values[key] = value
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: [{section}] is incomplete: {exc}") from exc


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def device_config_from_dict(raw: dict, source: str = "device config") -> DeviceConfig:
    """Build a :class:`DeviceConfig` from parsed TOML, rejecting unknown keys."""
    unknown = sorted(set(raw) - {"name", *SECTIONS})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: name, {', '.join(SECTIONS)}")
    if "response" not in raw:
        raise ConfigError(f"{source}: the [response] table is missing")
    sections = {section: _build_section(section, raw[section], source) for section in SECTIONS if section in raw}
    return DeviceConfig(name=str(raw.get("name", Path(source).stem)), **sections)


def load_device_config(path: Path) -> DeviceConfig:
    """Read a device TOML file.

    Raises:
        DataError: the file is missing or not valid TOML.
        ConfigError: a key is unknown or a value is out of range.
    """
    return device_config_from_dict(read_toml(path, "device file"), str(path))


def save_device_config(config: DeviceConfig, path: Path) -> None:
    """Write ``config`` as TOML."""
    Path(path).write_text(config.to_toml(), encoding="utf-8")
