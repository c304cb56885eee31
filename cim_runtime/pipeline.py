"""The main job: map a trained network, program it into arrays, read it back and classify photos."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cim_runtime import __version__
from cim_runtime.analog.evaluate import AnalogRequest, analog_from_saved_pairs, analog_summary, network_to_map, prepare_analog
from cim_runtime.data import check_images_readable, is_flowers102_root, open_dataset
from cim_runtime.driver import ArrayDriver
from cim_runtime.errors import ConfigError, DataError
from cim_runtime.inference import programmed_network
from cim_runtime.inference.readback import with_weights
from cim_runtime.mapping import ConductanceWindow, MappedNetwork, map_network
from cim_runtime.programming import WriteVerifyConfig, WriteVerifyResult, write_verify
from cim_runtime.programming.state import file_sha256, load_state
from cim_runtime.zoo import load_model

logger = logging.getLogger(__name__)


@dataclass
class InferenceRequest:
    """Inputs and settings of :func:`run_inference`."""

    #: Checkpoint folder; with a programmed state, None means the folder the state names.
    model_dir: Path | None
    data_root: Path
    #: Physical tile size (rows, columns); the whole array if None.
    tile: tuple[int, int] | None = None
    #: Flowers102 split, used only when the data root has torchvision's Flowers102 layout.
    split: str = "test"
    batch_size: int = 64
    write_verify: WriteVerifyConfig = field(default_factory=WriteVerifyConfig)
    progress: bool = True
    #: Analog-mode settings; None classifies with the read-back weights (readback mode).
    analog: AnalogRequest | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} is invalid: must be at least 1")


@dataclass
class InferenceOutcome:
    """Everything the job measured, and the raw data behind its plot."""

    summary: dict
    programming: WriteVerifyResult


def map_for_driver(network: torch.nn.Module, driver: ArrayDriver, tile: tuple[int, int] | None, spare_pairs: int = 0,
                   layer_names: list[str] | None = None) -> MappedNetwork:
    """Map ``network`` into the driver's conductance window and check that its arrays suffice.

    Args:
        spare_pairs: column pairs kept free on every array; the default tile is narrowed to leave them.
        layer_names: the layers to map; every Conv2d and Linear layer if None.
    """
    info = driver.info()
    if tile is None and info.cols % 2:
        raise ConfigError(f"the backend's arrays have {info.cols} columns, an odd number; pass --tile with an even column count, "
                          f"such as {info.rows}x{info.cols - 1}")
    tile_rows, tile_cols = tile if tile is not None else (info.rows, max(info.cols - 2 * spare_pairs, 2))
    window = ConductanceWindow(info.conductance_min_s, info.conductance_max_s)
    mapped = map_network(network, window, tile_rows=tile_rows, tile_cols=tile_cols, array_rows=info.rows, array_cols=info.cols,
                         spare_pairs=spare_pairs, layer_names=layer_names)
    if mapped.plan.arrays_used > info.arrays:
        raise ConfigError(
            f"the network needs {mapped.plan.arrays_used} arrays of {info.rows}x{info.cols} but the backend has {info.arrays}; "
            f"use a backend with more arrays (for the simulator: sim://?arrays={mapped.plan.arrays_used})"
        )
    return mapped


def classify(digital: torch.nn.Module, programmed: torch.nn.Module, dataset, batch_size: int, progress: bool) -> dict:
    """Run both networks on every image and return their top-1 accuracies and agreement."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    correct_digital = correct_programmed = agree = total = 0
    with torch.no_grad():
        for images, labels in tqdm(loader, desc="classify", unit="batch", disable=not progress):
            digital_top1 = digital(images).argmax(1)
            programmed_top1 = programmed(images).argmax(1)
            correct_digital += int((digital_top1 == labels).sum())
            correct_programmed += int((programmed_top1 == labels).sum())
            agree += int((digital_top1 == programmed_top1).sum())
            total += int(labels.numel())
    if total == 0:
        raise DataError("the dataset contains no images")
    return {
        "images": total,
        "digital_accuracy": correct_digital / total,
        "programmed_accuracy": correct_programmed / total,
        "prediction_agreement": agree / total,
    }


def layer_table(mapped: MappedNetwork, programming: WriteVerifyResult, digital: torch.nn.Module, programmed: torch.nn.Module) -> list[dict]:
    """Per-layer figures: cells, pulses per cell, fraction in tolerance and relative weight error."""
    rows = []
    layer_of_cell = programming.targets.layer
    for position, spec in enumerate(mapped.plan.layers):
        own = layer_of_cell == position
        pulses = programming.pulses[own]
        reference = digital.get_submodule(spec.name).weight.detach().double()
        actual = programmed.get_submodule(spec.name).weight.detach().double()
        norm = float(reference.norm())
        rows.append({
            "layer": spec.name,
            "kind": spec.kind,
            "weight_shape": list(spec.weight_shape),
            "cells": int(own.sum()),
            "pulses_per_cell_mean": float(pulses.mean()) if pulses.size else 0.0,
            "pulses_per_cell_p99": float(np.percentile(pulses, 99)) if pulses.size else 0.0,
            "fraction_in_tolerance": float(programming.in_tolerance[own].mean()) if pulses.size else 1.0,
            "weight_relative_error": float((actual - reference).norm()) / norm if norm > 0 else 0.0,
        })
    return rows


def weight_error(mapped: MappedNetwork, digital: torch.nn.Module, programmed: torch.nn.Module) -> float:
    """Relative L2 error of all programmed weights against the digital ones."""
    squared_error = squared_norm = 0.0
    for spec in mapped.plan.layers:
        reference = digital.get_submodule(spec.name).weight.detach().double()
        actual = programmed.get_submodule(spec.name).weight.detach().double()
        squared_error += float(((actual - reference) ** 2).sum())
        squared_norm += float((reference**2).sum())
    return float(np.sqrt(squared_error / max(squared_norm, 1e-300)))


def run_inference(driver: ArrayDriver, request: InferenceRequest) -> InferenceOutcome:
    """Map, program, read back and classify; return every figure of the run."""
    stage_s = {}
    started = time.monotonic()
    recipe, network = load_model(request.model_dir)
    dataset = open_dataset(request.data_root, recipe, request.split)
    check_images_readable(dataset)
    stage_s["load"] = time.monotonic() - started

    started = time.monotonic()
    # The digital accuracy is that of the network as trained; the rest uses the network as mapped.
    to_map = network_to_map(network, request.analog, dataset)
    mapped = map_for_driver(to_map.network, driver, request.tile, layer_names=to_map.layer_names)
    stage_s["map"] = time.monotonic() - started

    programming = write_verify(driver, mapped.targets(), request.write_verify, progress=request.progress)
    stage_s["program"] = programming.elapsed_s

    started = time.monotonic()
    programmed, _ = programmed_network(driver, to_map.network, mapped, progress=request.progress)
    stage_s["read_back"] = time.monotonic() - started

    evaluated = programmed
    if request.analog is not None:
        started = time.monotonic()
        evaluated = prepare_analog(driver, to_map.network, mapped, dataset, request.analog, request.batch_size, to_map.folded)
        stage_s["calibrate"] = time.monotonic() - started

    started = time.monotonic()
    accuracy = classify(network, evaluated, dataset, request.batch_size, request.progress)
    stage_s["classify"] = time.monotonic() - started

    info = driver.info()
    summary = build_summary(request, recipe, mapped, (info.identity, info.conductance_min_s, info.conductance_max_s),
                            programming, to_map.network, programmed, accuracy, stage_s)
    if request.analog is not None:
        summary["analog"] = analog_summary(evaluated, request.analog, accuracy, "backend")
    return InferenceOutcome(summary, programming)


def build_summary(request: InferenceRequest, recipe, mapped: MappedNetwork, backend: tuple[str, float, float], programming: WriteVerifyResult,
                  network: torch.nn.Module, programmed: torch.nn.Module, accuracy: dict, stage_s: dict) -> dict:
    """Collect every figure of an inference run into one JSON-ready dictionary.

    Args:
        backend: identity of the backend and its conductance window (bottom, top) in siemens.
    """
    plan = mapped.plan
    identity, window_min_s, window_max_s = backend
    return {
        "cim_runtime_version": __version__,
        "model": {"name": recipe.name, "path": str(Path(request.model_dir).resolve()), "builder": recipe.builder,
                  "input_size_px": recipe.input_size_px, "classes": len(recipe.classes)},
        "data_root": str(Path(request.data_root).resolve()),
        "split": request.split if is_flowers102_root(Path(request.data_root)) else None,
        "batch_size": request.batch_size,
        "backend": identity,
        "conductance_window_s": [window_min_s, window_max_s],
        "mapping": {
            "layers": len(plan.layers),
            "weights": sum(int(np.prod(spec.weight_shape)) for spec in plan.layers),
            "cells": plan.cells_used,
            "tiles": len(plan.tiles),
            "arrays": plan.arrays_used,
            "tile_rows": plan.tile_rows,
            "tile_cols": plan.tile_cols,
        },
        "write_verify_config": asdict(request.write_verify),
        "programming": programming.summary(),
        "weight_relative_error": weight_error(mapped, network, programmed),
        **accuracy,
        "accuracy_difference_points": 100 * (accuracy["programmed_accuracy"] - accuracy["digital_accuracy"]),
        "time_s": stage_s,
        "layers": layer_table(mapped, programming, network, programmed),
        "mode": "readback" if request.analog is None else "analog",
    }


def run_programmed_inference(state_dir: Path, request: InferenceRequest) -> InferenceOutcome:
    """Classify photos with a network programmed earlier by ``cim-run program``, without touching hardware."""
    stage_s = {}
    started = time.monotonic()
    state = load_state(state_dir)
    saved_model = state.meta["model"]
    if request.model_dir is None:
        request.model_dir = Path(saved_model["path"])
    recipe, network = load_model(request.model_dir)
    if file_sha256(Path(request.model_dir) / recipe.weights_file) != saved_model.get("weights_sha256"):
        raise ConfigError(f"the weights in {request.model_dir} are not the ones programmed in {state_dir} "
                          f"({saved_model.get('path')}); pass the same --model, or program this one with cim-run program")
    dataset = open_dataset(request.data_root, recipe, request.split)
    check_images_readable(dataset)
    mapped = state.mapped()
    pairs = state.measured_pairs()
    programmed = with_weights(network, mapped.decode_weights(pairs))
    stage_s["load"] = time.monotonic() - started

    evaluated = programmed
    if request.analog is not None:
        started = time.monotonic()
        evaluated = analog_from_saved_pairs(network, mapped, pairs, dataset, request.analog, request.batch_size)
        stage_s["calibrate"] = time.monotonic() - started

    started = time.monotonic()
    accuracy = classify(network, evaluated, dataset, request.batch_size, request.progress)
    stage_s["classify"] = time.monotonic() - started
    cells = state.cells
    tolerance_s = float(state.meta["programming"]["tolerance_s"])
    targets = state.targets()
    programming = WriteVerifyResult(targets, cells["measured_s"], cells["pulses"],
                                    np.abs(cells["measured_s"] - targets.target_s) <= tolerance_s, tolerance_s,
                                    float(state.meta["programming"]["time_s"]), int(state.meta["programming"]["rounds"]))
    backend = (f"{state.meta['backend']} (saved state {state_dir})", *state.meta["conductance_window_s"])
    summary = build_summary(request, recipe, mapped, backend, programming, network, programmed, accuracy, stage_s)
    summary["write_verify_config"] = None
    if request.analog is not None:
        summary["analog"] = analog_summary(evaluated, request.analog, accuracy, "saved state")
    return InferenceOutcome(summary, programming)
