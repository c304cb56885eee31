"""Benchmark: simulated write-verify of all of torchvision's ResNet-18 (1000 classes, random weights).

Run: ``.venv/bin/python benchmarks/program_resnet18.py [--scheme adaptive] [--mode arrays] [--tolerance 0.02]``.
Prints one JSON line: cells, cells per second, pulses per cell, fraction in tolerance, peak memory.

Modes:

* ``whole``: one write-verify call over every cell of the network at once.
* ``arrays``: one write-verify call per array, as ``cim-run program`` does, without its files.
* ``session``: the whole ``cim-run program`` session (program, retry and compensate passes), with its
  journal, step files and simulator checkpoints written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np

import torch
import torchvision

from cim_runtime.driver import SimulatorDriver
from cim_runtime.mapping import CellTargets, ConductanceWindow, array_chunks, map_network
from cim_runtime.programming import WriteVerifyConfig, WriteVerifyResult, write_verify
from cim_runtime.programming.session import ProgrammingSession, SessionSettings


def program_by_array(driver, targets, chunks, config) -> WriteVerifyResult:
    """Write-verify one array at a time and join the results."""
    measured, pulses, in_tolerance = np.empty(len(targets)), np.zeros(len(targets), dtype=np.int32), np.zeros(len(targets), dtype=bool)
    started, rounds = time.monotonic(), 0
    for chunk in chunks:
        part = np.s_[chunk.cell_start : chunk.cell_stop]
        subset = CellTargets(targets.array[part], targets.row[part], targets.col[part], targets.target_s[part])
        result = write_verify(driver, subset, config, progress=False)
        measured[part], pulses[part], in_tolerance[part] = result.measured_s, result.pulses, result.in_tolerance
        rounds = max(rounds, result.rounds)
    return WriteVerifyResult(targets, measured, pulses, in_tolerance, result.tolerance_s, time.monotonic() - started, rounds)


def program_in_session(driver, targets, chunks, config) -> WriteVerifyResult:
    with tempfile.TemporaryDirectory(prefix="cim-bench-") as folder:
        session = ProgrammingSession(driver, targets, chunks, folder, SessionSettings(config))
        return session.run({}, resume=False, progress=False).as_write_verify_result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="C4D1")
    parser.add_argument("--tolerance", type=float, default=0.02, help="band half-width, fraction of the window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheme", default="amplitude-ramp", help="write-verify scheme (fixed, amplitude-ramp, width-ramp, adaptive)")
    parser.add_argument("--mode", choices=("whole", "arrays", "session"), default="arrays", help="how cells are grouped (see above)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    network = torchvision.models.resnet18(num_classes=1000)
    started = time.monotonic()
    # Plan on a one-array probe for the window, then open only as many arrays as the plan uses.
    with SimulatorDriver(args.profile, arrays=1) as probe:
        info = probe.info()
    window = ConductanceWindow(info.conductance_min_s, info.conductance_max_s)
    mapped = map_network(network, window, tile_rows=info.rows, tile_cols=info.cols, array_rows=info.rows, array_cols=info.cols)
    config = WriteVerifyConfig(tolerance_rel=args.tolerance, scheme=args.scheme)
    with tempfile.TemporaryDirectory(prefix="cim-bench-sim-") as state, \
            SimulatorDriver(args.profile, arrays=mapped.plan.arrays_used, seed=args.seed, state=state if args.mode == "session" else None) as driver:
        targets = mapped.targets()
        prepared = time.monotonic()
        if args.mode == "whole":
            result = write_verify(driver, targets, config, progress=False)
        else:
            program = program_by_array if args.mode == "arrays" else program_in_session
            result = program(driver, targets, array_chunks(mapped.plan), config)
    summary = result.summary()
    report = {
        "profile": args.profile,
        "scheme": args.scheme,
        "mode": args.mode,
        "tolerance_rel": args.tolerance,
        "cells": summary["cells"],
        "arrays": mapped.plan.arrays_used,
        "setup_s": round(prepared - started, 1),
        "program_s": round(summary["time_s"], 1),
        "cells_per_s": round(summary["cells"] / summary["time_s"]),
        "pulses_per_cell_mean": round(summary["pulses_per_cell_mean"], 2),
        "pulses_per_cell_p99": summary["pulses_per_cell_p99"],
        "fraction_in_tolerance": summary["fraction_in_tolerance"],
        "peak_memory_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
