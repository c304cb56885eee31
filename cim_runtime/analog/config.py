"""Settings of the analog signal chain: DAC, ADC, read noise, IR drop and drift compensation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from cim_runtime.analog.converters import check_bits
from cim_runtime.errors import ConfigError

PAIR_SUBTRACTION = ("analog", "digital")
IR_DROP_MODELS = ("approximate", "exact")
DRIFT_COMPENSATION = ("none", "global", "column")
READ_NOISE_VARIANCE = ("exact", "column-mean")


@dataclass(frozen=True)
class AnalogConfig:
    """Settings of the DAC, tiles and ADC that compute each mapped layer; the defaults are the ideal chain."""

    #: DAC resolution per row; None is an ideal DAC.
    dac_bits: int | None = None
    #: ADC resolution per column; None is an ideal ADC.
    adc_bits: int | None = None
    #: Send each DAC code as ``dac_bits`` binary reads (one per bit plane) and add the digitized
    #: results with their bit weights. Needs ``dac_bits``.
    bit_serial: bool = False
    #: Largest row read voltage magnitude ``V``, in volts. The DAC spans ``[0, V)`` for layers whose
    #: calibration inputs are all non-negative and ``[-V, V)`` otherwise.
    read_voltage_v: float = 0.1
    #: Relative read noise of each cell per MVM (sigma of the current over the cell's mean current).
    #: None takes the simulator's ``read_sigma_rel`` when converting from a simulator, else 0.
    read_noise_sigma_rel: float | None = 0.0
    #: How the variance of a column's read noise is computed. ``exact``: from every cell's own
    #: conductance, ``sum(v**2 * (sigma * G)**2)``, one more convolution as large as the signal's.
    #: ``column-mean``: each cell's ``G**2`` is replaced by its tile column's mean, so the variance is
    #: ``sum(v**2) * mean((sigma * G)**2)``. That needs only the row power per tile, and the spread is
    #: typically off by 1 to 3 % (docs/analog.md).
    read_noise_variance: str = "exact"
    #: Resistance of each row and column wire segment, in ohms; 0 disables IR drop.
    wire_resistance_ohm: float = 0.0
    #: ``approximate`` (first order in the wire resistance) or ``exact`` (sparse nodal solve per tile).
    ir_drop: str = "approximate"
    #: ``analog``: the ADC digitizes the pair current ``I+ - I-`` (differential sensing).
    #: ``digital``: the ADC digitizes each physical column and the pair is subtracted afterwards.
    pair_subtraction: str = "analog"
    #: Percentile of the magnitudes seen during calibration that sets each converter range; 100 is the maximum.
    calibration_percentile: float = 99.99
    #: Output correction for conductance drift, from a reference read: ``none``, ``global`` (one factor
    #: per layer) or ``column`` (one factor per output column).
    drift_compensation: str = "none"
    #: Fuse the DAC into one loop, and read noise, ADC, saturation count, tile sum, pair subtraction
    #: and scaling into another, with ``torch.compile``. This needs a C++ compiler, and the first
    #: run compiles for a minute or two (the compiled loops are cached on disk for later runs).
    compile: bool = False
    #: Seed of the read-noise generator.
    seed: int = 0

    def __post_init__(self) -> None:
        check_bits(self.dac_bits, "DAC")
        check_bits(self.adc_bits, "ADC")
        if self.bit_serial and self.dac_bits is None:
            raise ConfigError("bit_serial=True needs dac_bits: set the DAC resolution or turn bit-serial input off")
        if not self.read_voltage_v > 0:
            raise ConfigError(f"read_voltage_v={self.read_voltage_v!r} is invalid: must be above 0 V")
        if self.read_noise_sigma_rel is not None and not self.read_noise_sigma_rel >= 0:
            raise ConfigError(f"read_noise_sigma_rel={self.read_noise_sigma_rel!r} is invalid: must be 0 or above")
        if not self.wire_resistance_ohm >= 0:
            raise ConfigError(f"wire_resistance_ohm={self.wire_resistance_ohm!r} is invalid: must be 0 or above")
        if not 0 < self.calibration_percentile <= 100:
            raise ConfigError(f"calibration_percentile={self.calibration_percentile!r} is invalid: must be above 0 and at most 100")
        for name, allowed in (("ir_drop", IR_DROP_MODELS), ("pair_subtraction", PAIR_SUBTRACTION),
                              ("drift_compensation", DRIFT_COMPENSATION), ("read_noise_variance", READ_NOISE_VARIANCE)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: must be one of {', '.join(allowed)}")

    @property
    def read_noise(self) -> float:
        """Relative read noise sigma, with None read as 0."""
        return self.read_noise_sigma_rel or 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "AnalogConfig":
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown analog settings {unknown}: valid names are {sorted(known)}")
        return cls(**raw)
