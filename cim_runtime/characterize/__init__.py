"""Characterization routines that run through any driver: pulse trains, RPS, retention, endurance, read noise."""

from cim_runtime.characterize.cells import CellSelection, select_cells
from cim_runtime.characterize.stability import endurance, read_noise, retention
from cim_runtime.characterize.suite import ROUTINES, run_characterization
from cim_runtime.characterize.trains import SCHEMES, PulseTrainSettings, RampSettings, pulse_train, ramp_pulse_series

__all__ = [
    "ROUTINES",
    "SCHEMES",
    "CellSelection",
    "PulseTrainSettings",
    "RampSettings",
    "endurance",
    "pulse_train",
    "ramp_pulse_series",
    "read_noise",
    "retention",
    "run_characterization",
    "select_cells",
]
