"""The ``cim-run program`` job: map a network, program it in resumable steps, calibrate and save the state."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cim_runtime import __version__
from cim_runtime.driver import ArrayDriver
from cim_runtime.inference.readback import with_weights
from cim_runtime.mapping import array_chunks, cells_to_pairs
from cim_runtime.pipeline import layer_table, map_for_driver, weight_error
from cim_runtime.programming.calibration import calibrate_columns, calibration_summary
from cim_runtime.programming.session import ProgrammingSession, SessionResult, SessionSettings
from cim_runtime.programming.state import file_sha256, save_state
from cim_runtime.zoo import load_model

logger = logging.getLogger(__name__)


@dataclass
class ProgramRequest:
    """Inputs and settings of :func:`run_program`."""

    model_dir: Path
    output: Path
    tile: tuple[int, int] | None = None
    #: Column pairs kept free on every array for columns with stuck cells.
    spare_pairs: int = 0
    settings: SessionSettings = field(default_factory=SessionSettings)
    resume: bool = False
    progress: bool = True
    #: Test vectors per tile for the column calibration; 0 skips it.
    calibration_vectors: int = 16


@dataclass
class ProgramOutcome:
    summary: dict
    result: SessionResult


def run_program(driver: ArrayDriver, request: ProgramRequest) -> ProgramOutcome:
    """Program every cell of the model's tile plan, or finish an interrupted run; save the programmed state."""
    model_dir = Path(request.model_dir).resolve()
    recipe, network = load_model(model_dir)
    mapped = map_for_driver(network, driver, request.tile, request.spare_pairs)
    plan_json = mapped.plan.to_json()
    weights_sha256 = file_sha256(model_dir / recipe.weights_file)
    session = ProgrammingSession(driver, mapped.targets(), array_chunks(mapped.plan), request.output, request.settings, mapped.plan)
    header = {"model_sha256": weights_sha256, "plan_sha256": hashlib.sha256(plan_json.encode()).hexdigest()}
    result = session.run(header, resume=request.resume, progress=request.progress)

    info = driver.info()
    calibration = {}
    if request.calibration_vectors and "analog_mvm" in info.capabilities:
        placed = result.as_write_verify_result().targets
        calibration = calibrate_columns(driver, mapped.plan, placed, vectors=request.calibration_vectors)

    programmed = with_weights(network, mapped.decode_weights(cells_to_pairs(mapped.plan, result.measured_s)))
    summary = {
        "cim_runtime_version": __version__,
        "model": {"name": recipe.name, "path": str(model_dir), "weights_sha256": weights_sha256, "builder": recipe.builder},
        "backend": info.identity,
        "conductance_window_s": [info.conductance_min_s, info.conductance_max_s],
        "scales": mapped.scales,
        "settings": request.settings.to_dict(),
        "mapping": {"layers": len(mapped.plan.layers), "cells": mapped.plan.cells_used, "tiles": len(mapped.plan.tiles),
                    "arrays": mapped.plan.arrays_used, "spare_pairs_per_array": mapped.plan.spare_pairs},
        "programming": result.summary(),
        "calibration": calibration_summary(calibration) if calibration else None,
        "weight_relative_error": weight_error(mapped, network, programmed),
        "layers": layer_table(mapped, result.as_write_verify_result(), network, programmed),
    }
    targets = result.targets
    cells = {"array": targets.array, "row": targets.row, "col": targets.col, "layer": targets.layer, "target_s": targets.target_s,
             "final_target_s": result.target_s, "measured_s": result.measured_s, "pulses": result.pulses, "status": result.status}
    save_state(request.output, {key: summary[key] for key in ("model", "backend", "conductance_window_s", "scales", "programming")},
               mapped.plan, cells, calibration)
    return ProgramOutcome(summary, result)
