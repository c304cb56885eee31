"""Benchmark: simulated write-verify of all of torchvision's ResNet-18 (1000 classes, random weights).

Run: ``.venv/bin/python benchmarks/program_resnet18.py [--profile C4D1] [--tolerance 0.02]``.
Prints one JSON line: cells, cells per second, pulses per cell, fraction in tolerance, peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torchvision

from cim_runtime.driver import SimulatorDriver
from cim_runtime.mapping import ConductanceWindow, map_network
from cim_runtime.programming import WriteVerifyConfig, write_verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="C4D1")
    parser.add_argument("--tolerance", type=float, default=0.02, help="band half-width, fraction of the window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scheme", default="amplitude-ramp", help="write-verify scheme (fixed, amplitude-ramp, width-ramp, adaptive)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    network = torchvision.models.resnet18(num_classes=1000)
    started = time.monotonic()
    # Plan on a one-array probe for the window, then open only as many arrays as the plan uses.
    with SimulatorDriver(args.profile, arrays=1) as probe:
        info = probe.info()
    window = ConductanceWindow(info.conductance_min_s, info.conductance_max_s)
    mapped = map_network(network, window, tile_rows=info.rows, tile_cols=info.cols, array_rows=info.rows, array_cols=info.cols)
    with SimulatorDriver(args.profile, arrays=mapped.plan.arrays_used, seed=args.seed) as driver:
        targets = mapped.targets()
        prepared = time.monotonic()
        result = write_verify(driver, targets, WriteVerifyConfig(tolerance_rel=args.tolerance, scheme=args.scheme), progress=False)
    summary = result.summary()
    report = {
        "profile": args.profile,
        "scheme": args.scheme,
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
