"""Benchmark: programming speed over a paced serial link, host-side write-verify against on-board PROGRAM.

Run: ``.venv/bin/python benchmarks/serial_link.py [--cells 20000] [--link-bytes-per-s 92160]``.

The board emulator runs in a thread of this process on a loopback TCP socket, paced to the link rate
(92,160 bytes per second in each direction is a UART at 921,600 baud with 8N1 framing). The cells are a
random sample of the targets of torchvision's ResNet-18 (1000 classes, random weights), placed on one
256 x 256 simulated array. Prints one JSON line with cells per second for both paths, the link limit of
each and the estimated time to program all of ResNet-18.

The link limit counts only the record and result bytes the protocol must carry per cell (section 3.2 of
firmware_protocol/SPEC.md), without framing. The link carries both directions at once, so the limit
divides the link rate by the bytes of the busier direction. The half-duplex figure, which divides by
the bytes of both directions, is what a host reaches that waits for each reply before it sends again.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torchvision

from cim_runtime.driver import SimulatorDriver, open_driver
from cim_runtime.mapping import CellTargets, ConductanceWindow, map_network
from cim_runtime.programming import WriteVerifyConfig, write_verify
from firmware_protocol.emulator import start_emulator
from firmware_protocol.firmware import CountingSimulator
from firmware_protocol.messages import MessageType, operations

SIDE = 256


def sample_resnet18(cells: int, seed: int) -> tuple[np.ndarray, int]:
    """Return target conductances of ``cells`` random ResNet-18 cells and the network's total cell count."""
    torch.manual_seed(seed)
    network = torchvision.models.resnet18(num_classes=1000)
    with SimulatorDriver("C4D1", rows=SIDE, cols=SIDE, arrays=1) as probe:
        info = probe.info()
    window = ConductanceWindow(info.conductance_min_s, info.conductance_max_s)
    mapped = map_network(network, window, tile_rows=SIDE, tile_cols=SIDE, array_rows=SIDE, array_cols=SIDE)
    targets = mapped.targets()
    chosen = np.sort(np.random.default_rng(seed).choice(len(targets), size=cells, replace=False))
    return targets.target_s[chosen], len(targets)


def link_limits(bytes_in_per_cell: float, bytes_out_per_cell: float, rate: float) -> dict:
    return {
        "bytes_per_cell_to_board": round(bytes_in_per_cell, 2),
        "bytes_per_cell_to_host": round(bytes_out_per_cell, 2),
        "limit_cells_per_s": round(rate / max(bytes_in_per_cell, bytes_out_per_cell)),
        "limit_half_duplex_cells_per_s": round(rate / (bytes_in_per_cell + bytes_out_per_cell)),
    }


def run(path: str, targets: CellTargets, config: WriteVerifyConfig, rate: float, seed: int) -> dict:
    simulator = CountingSimulator("C4D1", rows=SIDE, cols=SIDE, arrays=1, seed=seed)
    server = start_emulator(simulator, link_bytes_per_s=rate)
    try:
        with open_driver(f"{server.url}?link_bytes_per_s={rate:g}") as driver:
            started = time.monotonic()
            if path == "host":
                result = write_verify(driver, targets, config, progress=False)
            else:
                result = driver.program(targets, config)
            elapsed_s = time.monotonic() - started
            counters = driver.counters
    finally:
        server.stop()
    summary = result.summary()
    layouts = operations(SIDE, SIDE)
    if path == "host":
        # Each round reads every unfinished cell, then pulses those outside their band.
        reads = summary["pulses_total"] + summary["cells"]
        read, pulse = layouts[MessageType.READ], layouts[MessageType.PULSE]
        bytes_in = (reads * read.record.itemsize + summary["pulses_total"] * pulse.record.itemsize) / summary["cells"]
        bytes_out = reads * read.result.itemsize / summary["cells"]
    else:
        program = layouts[MessageType.PROGRAM]
        bytes_in, bytes_out = program.record.itemsize, program.result.itemsize
    limits = link_limits(bytes_in, bytes_out, rate)
    cells_per_s = summary["cells"] / elapsed_s
    return {
        "cells_per_s": round(cells_per_s, 1),
        **limits,
        "fraction_of_limit": round(cells_per_s / limits["limit_cells_per_s"], 3),
        "fraction_of_half_duplex_limit": round(cells_per_s / limits["limit_half_duplex_cells_per_s"], 3),
        "time_s": round(elapsed_s, 2),
        "pulses_per_cell_mean": round(summary["pulses_per_cell_mean"], 2),
        "fraction_in_tolerance": summary["fraction_in_tolerance"],
        "pulses_on_board": simulator.pulses_applied,
        "bytes_sent": counters.get("bytes_sent", 0),
        "bytes_received": counters.get("bytes_received", 0),
        "retransmissions": counters.get("retransmissions", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20000, help=f"cells sampled from ResNet-18, at most {SIDE * SIDE}")
    parser.add_argument("--link-bytes-per-s", type=float, default=92160.0, help="link rate in each direction, in bytes per second")
    parser.add_argument("--tolerance", type=float, default=0.02, help="band half-width, fraction of the window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.cells <= SIDE * SIDE:
        parser.error(f"--cells {args.cells} is invalid: must be between 1 and {SIDE * SIDE}")

    target_s, network_cells = sample_resnet18(args.cells, args.seed)
    index = np.arange(args.cells, dtype=np.int32)
    targets = CellTargets(np.zeros(args.cells, dtype=np.int32), index // SIDE, index % SIDE, target_s)
    config = WriteVerifyConfig(tolerance_rel=args.tolerance)
    report = {"link_bytes_per_s": args.link_bytes_per_s, "cells": args.cells, "resnet18_cells": network_cells,
              "tolerance_rel": args.tolerance}
    for path in ("host", "onboard"):
        outcome = run(path, targets, config, args.link_bytes_per_s, args.seed)
        outcome["resnet18_estimate_h"] = round(network_cells / outcome["cells_per_s"] / 3600, 2)
        report[path] = outcome
    print(json.dumps(report))


if __name__ == "__main__":
    main()
