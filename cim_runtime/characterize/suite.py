"""Run chosen characterization routines on fresh cells and write every result to one folder."""

from __future__ import annotations

import logging
from pathlib import Path

from cim_runtime.characterize import reports
from cim_runtime.characterize.cells import select_cells
from cim_runtime.characterize.stability import endurance, read_noise, retention
from cim_runtime.characterize.trains import PulseTrainSettings, RampSettings, pulse_train, ramp_pulse_series
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError

logger = logging.getLogger(__name__)

#: Routine names, in the order they run.
ROUTINES = ("pulse-train", "rps", "retention", "endurance", "read-noise")


def run_characterization(driver: ArrayDriver, output: Path, *, routines=ROUTINES, cells: int = 16,
                         train: PulseTrainSettings = PulseTrainSettings(), endurance_cycles: int = 1000,
                         progress: bool = True) -> dict:
    """Run ``routines``, each on its own array (or its own cells when the system has one array).

    Returns:
        The summary written to ``characterization.json``.
    """
    unknown = [name for name in routines if name not in ROUTINES]
    if unknown:
        raise ConfigError(f"unknown routine(s) {', '.join(unknown)}: use {', '.join(ROUTINES)}")
    info = driver.info()
    summary = {"backend": info.identity, "cells": cells, "routines": {}}
    for position, name in enumerate(routine for routine in ROUTINES if routine in routines):
        array = position % info.arrays
        chosen = select_cells(driver, cells, array=array)
        logger.info("running %s on %d cells of array %d", name, cells, array)
        if name == "pulse-train":
            result = reports.write_pulse_train(output, pulse_train(driver, chosen, train, progress=progress))
        elif name == "rps":
            result = reports.write_ramp(output, ramp_pulse_series(driver, chosen, RampSettings()))
        elif name == "retention":
            result = reports.write_retention(output, retention(driver, chosen))
        elif name == "endurance":
            result = reports.write_endurance(output, endurance(driver, chosen, endurance_cycles, progress=progress))
        else:
            result = reports.write_read_noise(output, read_noise(driver, chosen))
        summary["routines"][name] = {"array": array, **result}
    reports.write_summary(output, summary)
    return summary
