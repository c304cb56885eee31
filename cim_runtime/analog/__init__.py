"""Analog inference: DAC, crossbar tiles with read noise and IR drop, ADC, calibration and drift compensation."""

from cim_runtime.analog.calibration import calibrate, read_after_drift
from cim_runtime.analog.config import AnalogConfig
from cim_runtime.analog.converters import Quantizer, SaturationCounter
from cim_runtime.analog.convert import AnalogNetwork, convert, fold_batch_norms, from_driver, measured_pairs
from cim_runtime.analog.layer import AnalogLayer
from cim_runtime.analog.storage import load_analog, save_analog

__all__ = [
    "AnalogConfig",
    "AnalogLayer",
    "AnalogNetwork",
    "Quantizer",
    "SaturationCounter",
    "calibrate",
    "convert",
    "fold_batch_norms",
    "from_driver",
    "load_analog",
    "measured_pairs",
    "read_after_drift",
    "save_analog",
]
