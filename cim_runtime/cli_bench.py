"""``cim-run emulate-bench``: serve emulated VISA bench instruments on loopback ports, for ``visa://`` backends."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cim_runtime.driver.visa_bench import TIMEOUT_RANGE_S
from cim_runtime.driver.visa_commands import SMU_FAMILIES, SWITCH_FAMILIES
from cim_runtime.errors import ConfigError

#: Largest array the emulated switch matrix can wire: rows and columns share its lines.
MAX_LINES = SWITCH_FAMILIES["keysight-34980a"].max_line


def command_emulate_bench(args: argparse.Namespace) -> int:
    from cim_runtime.driver.visa_emulator import BenchEmulator

    if args.rows < 1 or args.cols < 1 or args.rows + args.cols > MAX_LINES:
        raise ConfigError(f"--rows {args.rows} --cols {args.cols} is invalid: both at least 1, and together at most "
                          f"{MAX_LINES}, the lines of one switch matrix module")
    low, high = TIMEOUT_RANGE_S
    if not low <= args.timeout_s <= high:
        raise ConfigError(f"--timeout-s {args.timeout_s} is invalid: must be between {low:g} and {high:g} seconds")
    if Path(args.bench_file).is_dir():
        raise ConfigError(f"--bench-file {args.bench_file} is a folder: name a file, such as {Path(args.bench_file) / 'bench.toml'}")
    if not Path(args.bench_file).parent.is_dir():
        raise ConfigError(f"--bench-file {args.bench_file} is invalid: its folder {Path(args.bench_file).parent} does not exist")
    with BenchEmulator(rows=args.rows, cols=args.cols, profile=args.device_profile, seed=args.seed,
                       smu_family=args.smu_family) as bench:
        path = bench.bench_file(args.bench_file, timeout_s=args.timeout_s)
        print(f"bench emulator ready: use --backend 'visa://?bench={path}' (stop it with Ctrl-C, or kill it when it runs "
              "in the background)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print(f"bench emulator stopped after {bench.command_count:,} commands")
    return 0


def add_commands(commands) -> None:
    """Add ``emulate-bench`` to the ``cim-run`` subcommands."""
    emulate = commands.add_parser(
        "emulate-bench", help="run emulated SMU, pulse generator and switch matrix for visa:// backends",
        description="Serve a bench of SCPI instruments (a Keysight B2900 or Keithley 2400 SMU, a Keysight 33500B pulse "
                    "generator and a 34980A switch matrix) on loopback TCP ports, wired to one simulated array, until Ctrl-C. Writes the bench "
                    "file that visa://?bench=PATH opens.")
    emulate.add_argument("--bench-file", type=Path, default=Path("bench.toml"), metavar="PATH",
                         help="bench file to write (default %(default)s)")
    emulate.add_argument("--rows", type=int, default=8, help="rows of the array (default %(default)s)")
    emulate.add_argument("--cols", type=int, default=8, help="columns of the array (default %(default)s)")
    emulate.add_argument("--device-profile", default="C4D1", metavar="NAME", help="simulator device profile (default %(default)s)")
    emulate.add_argument("--seed", type=int, default=0, help="simulator seed (default %(default)s)")
    emulate.add_argument("--smu-family", choices=sorted(SMU_FAMILIES), default="keysight-b2900",
                         help="SMU to emulate (default %(default)s)")
    emulate.add_argument("--timeout-s", type=float, default=5.0, help="reply deadline written into the bench file, in seconds "
                                                                      "(default %(default)s)")
    emulate.set_defaults(handler=command_emulate_bench)
