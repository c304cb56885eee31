"""``cim-run program``: program a network into the arrays in resumable steps and save the programmed state."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from urllib.parse import urlencode

from cim_runtime.driver import open_driver, split_backend_url
from cim_runtime.errors import ConfigError
from cim_runtime.files import write_csv, write_json
from cim_runtime.program_job import ProgramRequest, run_program
from cim_runtime.programming import WriteVerifyConfig
from cim_runtime.programming.schemes import SCHEMES
from cim_runtime.programming.session import JOURNAL_FILE, SessionSettings
from cim_runtime.report import check_output_folder, plot_programming
from cim_runtime.zoo import DEFAULT_MODEL_DIR

OUTPUT_FILES = ("summary.json", "layers.csv", "programming.png", "programmed.json", "programmed.npz", JOURNAL_FILE)


def add_command(commands, add_backend_options, output_folder, parse_tile) -> None:
    program = commands.add_parser(
        "program", help="program a network into the arrays, resumably, and save the programmed state",
        description="Map a trained network onto crossbar tiles and program every cell by write-verify, one array at a time. "
                    "Each finished step goes into OUTPUT/journal.jsonl, so --resume continues a run that was interrupted. "
                    "The programmed state (OUTPUT/programmed.json and .npz) feeds 'cim-run infer --programmed OUTPUT'.")
    program.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="checkpoint folder with recipe.json (default: the bundled flowers model)")
    add_backend_options(program)
    program.add_argument("--tile", type=parse_tile, metavar="ROWSxCOLS", help="largest tile in physical cells (default: the whole array)")
    program.add_argument("--tolerance", type=float, default=WriteVerifyConfig.tolerance_rel,
                         help="write-verify band half-width as a fraction of the conductance window (default %(default)s)")
    program.add_argument("--scheme", choices=SCHEMES, default="amplitude-ramp", help="write-verify pulse scheme (default %(default)s)")
    program.add_argument("--verify-reads", type=int, default=1, metavar="N",
                         help="reads averaged into each verify value, after one discarded warm-up read when N > 1 (default %(default)s)")
    program.add_argument("--confirm-reads", type=int, default=0, metavar="N",
                         help="extra verify rounds a cell must read inside its band before it is accepted (default %(default)s)")
    program.add_argument("--retry-passes", type=int, default=1, help="passes that re-read every cell and reprogram the ones outside "
                                                                     "their band (default %(default)s)")
    program.add_argument("--no-compensation", action="store_true", help="do not re-target the partner of a stuck cell")
    program.add_argument("--spare-pairs", type=int, default=0, metavar="N",
                         help="column pairs kept free at the edge of every array; column pairs that keep a stuck cell move there "
                              "(default %(default)s)")
    program.add_argument("--output", type=output_folder, default=Path("cim-run-program"),
                         help="folder for the journal, programmed state and reports (default %(default)s)")
    program.add_argument("--resume", action="store_true", help="continue the interrupted run whose journal is in --output")
    program.add_argument("--no-progress", action="store_true", help="hide progress bars")
    program.set_defaults(handler=None)


def simulator_state_url(url: str, folder: Path) -> str:
    """Give a ``sim://`` URL a state folder, so the simulated arrays survive an interrupted run."""
    scheme, options = split_backend_url(url)
    if scheme != "sim" or "state" in options:
        return url
    return f"sim://?{urlencode({**options, 'state': str(folder)})}"


def print_outcome(summary: dict, output: Path) -> None:
    programming, mapping = summary["programming"], summary["mapping"]
    by_status = ", ".join(f"{count:,} {name}" for name, count in programming["cells_by_status"].items() if count)
    lines = [
        ("model", f"{summary['model']['name']} ({mapping['layers']} layers, {mapping['cells']:,} cells, {mapping['tiles']} tiles, "
                  f"{mapping['arrays']} arrays)"),
        ("backend", summary["backend"]),
        ("programmed", f"{programming['pulses_per_cell_mean']:.2f} pulses per cell (p99 {programming['pulses_per_cell_p99']:.0f}), "
                       f"{math.floor(1e5 * programming['fraction_in_tolerance']) / 1e3:.3f} % in tolerance; {by_status}"),
        ("weights", f"relative error of programmed weights {summary['weight_relative_error']:.4f}"),
    ]
    if summary["calibration"]:
        calibration = summary["calibration"]
        lines.append(("calibration", f"{calibration['columns']:,} columns, gain {calibration['gain_mean']:.4f} ± {calibration['gain_std']:.4f}"))
    lines.append(("results", f"{output}/summary.json, layers.csv, programming.png, programmed.json, programmed.npz"))
    for label, text in lines:
        print(f"{label:<11} {text}")


def check_program_folder(folder: Path, resume: bool) -> None:
    """Refuse to start a run over the results of another run; a resumed run writes over its own."""
    check_output_folder(folder, OUTPUT_FILES)
    if resume or (folder / JOURNAL_FILE).exists():
        return  # A journal without --resume is refused by the session, with its own message.
    earlier = [name for name in (*OUTPUT_FILES, "steps", "simulator") if (folder / name).exists()]
    if earlier:
        raise ConfigError(f"--output {folder} already contains results of another run ({', '.join(earlier)}); "
                          "choose another --output folder, or delete those first")


def command_program(args: argparse.Namespace, url: str) -> int:
    if not 0 < args.tolerance < 0.5:
        raise ConfigError(f"--tolerance {args.tolerance} is invalid: must be above 0 and below 0.5 (a fraction of the conductance window)")
    if not 0 <= args.retry_passes <= 10:
        raise ConfigError(f"--retry-passes {args.retry_passes} is invalid: use 0 to 10")
    if args.spare_pairs < 0:
        raise ConfigError(f"--spare-pairs {args.spare_pairs} is invalid: use 0 or more")
    if args.verify_reads < 1 or args.confirm_reads < 0:
        raise ConfigError(f"--verify-reads {args.verify_reads} and --confirm-reads {args.confirm_reads} are invalid: "
                          "use at least 1 and at least 0")
    check_program_folder(args.output, args.resume)
    write_verify = WriteVerifyConfig(tolerance_rel=args.tolerance, scheme=args.scheme, reads_per_verify=args.verify_reads,
                                     discard_reads=1 if args.verify_reads > 1 else 0, confirm_reads=args.confirm_reads)
    settings = SessionSettings(write_verify, retry_passes=args.retry_passes, compensate_pairs=not args.no_compensation)
    request = ProgramRequest(model_dir=args.model, output=args.output, tile=args.tile, spare_pairs=args.spare_pairs, settings=settings,
                             resume=args.resume, progress=not args.no_progress)
    with open_driver(simulator_state_url(url, args.output / "simulator")) as driver:
        outcome = run_program(driver, request)
    write_csv(args.output / "layers.csv", outcome.summary["layers"])
    plot_programming(args.output / "programming.png", outcome.result.as_write_verify_result())
    write_json(args.output / "summary.json", outcome.summary)
    print_outcome(outcome.summary, args.output)
    return 0
