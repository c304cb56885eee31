"""The ``cim-run`` command."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from urllib.parse import urlencode

from cim_runtime import __version__, cli_analog, cli_bench, cli_device, cli_program, cli_serial, cli_train, log_to_screen
from cim_runtime.driver import DEFAULT_BACKEND_URL, open_driver, split_backend_url
from cim_runtime.errors import CimError, ConfigError
from cim_runtime.pipeline import InferenceRequest, run_inference, run_programmed_inference
from cim_runtime.programming import WriteVerifyConfig
from cim_runtime.programming.schemes import SCHEMES
from cim_runtime.files import write_json
from cim_runtime.report import check_output_folder, keep_previous, plot_programming
from cim_runtime.zoo import DEFAULT_MODEL_DIR, DEFAULT_SAMPLE_DIR

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def parse_tile(text: str) -> tuple[int, int]:
    """Parse ``ROWSxCOLS`` (for example ``128x64``)."""
    rows, sep, cols = text.lower().partition("x")
    if not sep or not rows.isdigit() or not cols.isdigit():
        raise argparse.ArgumentTypeError(f"tile {text!r} is invalid: write ROWSxCOLS, for example 128x64")
    return int(rows), int(cols)


def backend_url(url: str, profile: str | None, seed: int | None) -> str:
    """Fold ``--device-profile`` and ``--seed`` into a ``sim://`` URL; they conflict with other backends."""
    scheme, options = split_backend_url(url)
    extra = {name: str(value) for name, value in (("profile", profile), ("seed", seed)) if value is not None}
    if not extra:
        return url
    if scheme != "sim":
        raise ConfigError(f"--device-profile and --seed apply to the simulator only, not to {url!r}")
    for name, value in extra.items():
        if name in options and options[name] != value:
            raise ConfigError(f"{name}={options[name]} in {url!r} conflicts with the command-line value {value}")
    options.update(extra)
    return f"sim://?{urlencode(options)}"


def print_summary(summary: dict) -> None:
    mapping, programming, times = summary["mapping"], summary["programming"], summary["time_s"]
    rows = [
        ("model", f"{summary['model']['name']} ({summary['model']['builder']}, {summary['model']['input_size_px']} px, "
                  f"{summary['model']['classes']} classes)"),
        ("data", f"{summary['data_root']} ({summary['images']} images)"),
        ("backend", summary["backend"]),
        ("mapped", f"{mapping['layers']} layers, {mapping['weights']:,} weights -> {mapping['cells']:,} cells in "
                   f"{mapping['tiles']:,} tiles of up to {mapping['tile_rows']}x{mapping['tile_cols']} on {mapping['arrays']} arrays"),
        ("programmed", f"{programming['pulses_per_cell_mean']:.2f} pulses per cell (p99 {programming['pulses_per_cell_p99']:.0f}), "
                       f"{math.floor(1e5 * programming['fraction_in_tolerance']) / 1e3:.3f} % in tolerance of ±{programming['tolerance_s'] * 1e6:.1f} µS, "
                       f"{programming['failed_cells']:,} failed"),
        ("weights", f"relative error of programmed weights {summary['weight_relative_error']:.4f}"),
        ("accuracy", f"digital {100 * summary['digital_accuracy']:.2f} %, {summary.get('mode', 'readback')} "
                     f"{100 * summary['programmed_accuracy']:.2f} % "
                     f"({summary['accuracy_difference_points']:+.2f} points), same prediction on "
                     f"{100 * summary['prediction_agreement']:.1f} % of images"),
        *cli_analog.summary_lines(summary),
        ("time", ", ".join(f"{stage.replace('_', ' ')} {seconds:.1f} s" for stage, seconds in times.items())),
    ]
    for label, text in rows:
        print(f"{label:<11} {text}")


OUTPUT_FILES = ("summary.json", "conductance.png")


def command_infer(args: argparse.Namespace) -> int:
    if args.programmed is not None:
        return command_infer_programmed(args)
    url = backend_url(args.backend, args.device_profile, args.seed)
    if not 0 < args.tolerance < 0.5:
        raise ConfigError(f"--tolerance {args.tolerance} is invalid: must be above 0 and below 0.5 (a fraction of the conductance window)")
    check_output_folder(args.output, OUTPUT_FILES)
    request = InferenceRequest(
        model_dir=args.model or DEFAULT_MODEL_DIR, data_root=args.data_root, tile=args.tile, split=args.split,
        batch_size=args.batch_size, write_verify=WriteVerifyConfig(tolerance_rel=args.tolerance, scheme=args.scheme),
        progress=not args.no_progress, analog=cli_analog.request_from_args(args),
    )
    with open_driver(url) as driver:
        outcome = run_inference(driver, request)
    return report_inference(args, outcome)


def command_infer_programmed(args: argparse.Namespace) -> int:
    """Classify with the state a ``cim-run program`` run saved; options that shape programming do not apply."""
    conflicting = [option for option, value, default in (
        ("--backend", args.backend, DEFAULT_BACKEND_URL), ("--device-profile", args.device_profile, None), ("--seed", args.seed, None),
        ("--tile", args.tile, None), ("--tolerance", args.tolerance, WriteVerifyConfig.tolerance_rel), ("--scheme", args.scheme, "amplitude-ramp"),
    ) if value != default]
    if conflicting:
        verb, pronoun = ("affects", "it does") if len(conflicting) == 1 else ("affect", "they do")
        raise ConfigError(f"{', '.join(conflicting)} only {verb} programming, so {pronoun} not apply with --programmed, which reads "
                          "a saved state; pass it to cim-run program instead")
    check_output_folder(args.output, OUTPUT_FILES)
    if (args.output / "programmed.json").exists() or (args.output / "journal.jsonl").exists():
        raise ConfigError(f"--output {args.output} contains a cim-run program run, whose summary.json this would replace; "
                          "choose another --output folder")
    request = InferenceRequest(model_dir=args.model, data_root=args.data_root, split=args.split, batch_size=args.batch_size,
                               progress=not args.no_progress, analog=cli_analog.request_from_args(args))
    return report_inference(args, run_programmed_inference(args.programmed, request))


def report_inference(args: argparse.Namespace, outcome) -> int:
    # Files come first, so a closed standard output loses no result. The plot comes before the summary:
    # no summary then claims a complete run whose plot could not be written.
    previous_paths = keep_previous(args.output, OUTPUT_FILES)
    if previous_paths:
        print(f"cim-run: note: {args.output} contained results of an earlier run; they are kept as "
              f"{', '.join(path.name for path in previous_paths)}", file=sys.stderr)
    plot_programming(args.output / "conductance.png", outcome.programming)
    write_json(args.output / "summary.json", outcome.summary)
    print_summary(outcome.summary)
    failed = outcome.summary["programming"]["failed_cells"]
    if failed and args.programmed is not None:
        print(f"cim-run: warning: {failed:,} cells ended outside their tolerance band when they were programmed; the state's "
              "summary.json counts the cells by status, including stuck cells that their pair compensates", file=sys.stderr)
    elif failed:
        print(f"cim-run: warning: {failed:,} cells ended outside their tolerance band; widen --tolerance "
              "or check the device profile", file=sys.stderr)
    print(f"{'results':<11} {args.output / 'summary.json'}, {args.output / 'conductance.png'}")
    return 0


def command_info(args: argparse.Namespace) -> int:
    with open_driver(backend_url(args.backend, args.device_profile, args.seed)) as driver:
        info = driver.info()
    print(f"identity        {info.identity}")
    print(f"geometry        {info.arrays} arrays of {info.rows} x {info.cols} cells")
    print(f"conductance     {info.conductance_min_s * 1e6:.1f} .. {info.conductance_max_s * 1e6:.1f} µS")
    print(f"read voltage    up to {info.read_voltage_max_v:g} V (default {info.default_read_voltage_v:g} V)")
    print(f"pulse           up to ±{info.pulse_amplitude_max_v:g} V, {info.pulse_width_min_s:g} .. {info.pulse_width_max_s:g} s")
    print(f"compliance      up to {info.compliance_max_a:g} A")
    print(f"capabilities    {', '.join(sorted(info.capabilities)) or 'none'}")
    return 0


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default=DEFAULT_BACKEND_URL, metavar="URL",
                        help=f"crossbar backend URL (default {DEFAULT_BACKEND_URL}, the simulator)")
    parser.add_argument("--device-profile", metavar="NAME",
                        help="simulator device profile: C1D1, C4D1 (default), C1D8, Identical_spikes, Non_spikes_1, Non_spikes_2, "
                             "ideal, or a device .toml file")
    parser.add_argument("--seed", type=int, help="simulator seed (default 0)")


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one ``cim-run: error:`` line with exit status 2."""

    def error(self, message: str):
        print(f"cim-run: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def output_folder(text: str) -> Path:
    """Parse an output folder name; an empty one would silently mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder name is empty")
    return Path(text)


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="cim-run", description="Run neural networks on memristor crossbar arrays.")
    parser.add_argument("--version", action="version", version=f"cim-run {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the library does to standard error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    infer = commands.add_parser("infer", help="map, program, read back and classify photos",
                                description="Map a trained network onto crossbar tiles, program every cell by write-verify, "
                                            "read the arrays back and classify photos with both the digital and the programmed network.")
    infer.add_argument("--model", type=Path, help="checkpoint folder with recipe.json (default: the bundled flowers model, "
                                                  "or with --programmed the model that was programmed)")
    infer.add_argument("--data-root", type=Path, default=DEFAULT_SAMPLE_DIR,
                       help="ImageFolder tree or a folder with torchvision's flowers-102/ layout (default: the bundled sample)")
    infer.add_argument("--split", default="test", choices=("train", "val", "test"), help="Flowers102 split, for the flowers-102/ layout only")
    add_backend_options(infer)
    infer.add_argument("--programmed", type=Path, metavar="FOLDER",
                       help="classify with the programmed state that 'cim-run program --output FOLDER' saved, without programming again")
    infer.add_argument("--tile", type=parse_tile, metavar="ROWSxCOLS", help="largest tile in physical cells (default: the whole array)")
    infer.add_argument("--tolerance", type=float, default=WriteVerifyConfig.tolerance_rel,
                       help="write-verify band half-width as a fraction of the conductance window (default %(default)s)")
    infer.add_argument("--scheme", choices=SCHEMES, default="amplitude-ramp",
                       help="write-verify pulse scheme (default %(default)s)")
    infer.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default %(default)s)")
    infer.add_argument("--output", type=output_folder, default=Path("cim-run-output"),
                       help="folder for summary.json and conductance.png (default %(default)s)")
    infer.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cli_analog.add_options(infer)
    infer.set_defaults(handler=command_infer)

    info = commands.add_parser("info", help="print a backend's geometry and limits")
    add_backend_options(info)
    info.set_defaults(handler=command_info)
    cli_device.add_commands(commands, add_backend_options, output_folder, positive_int)
    cli_train.add_commands(commands, output_folder, positive_int)
    cli_program.add_command(commands, add_backend_options, output_folder, parse_tile)
    cli_serial.add_commands(commands)
    cli_bench.add_commands(commands)
    return parser


def command_program(args: argparse.Namespace) -> int:
    return cli_program.command_program(args, backend_url(args.backend, args.device_profile, args.seed))


def command_device(args: argparse.Namespace) -> int:
    if args.device_handler == "characterize":
        return cli_device.command_characterize(args, backend_url(args.backend, args.device_profile, args.seed))
    if args.device_handler == "fit":
        return cli_device.command_fit(args)
    return cli_device.command_device_show(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings (a lost link, a device that cannot drift) reach the screen even without -v.
    log_to_screen(logging.INFO if args.verbose else logging.WARNING)
    try:
        handler = args.handler or (command_program if args.command == "program" else command_device)
        return handler(args)
    except CimError as exc:
        print(f"cim-run: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        resumable = args.command == "program" and (args.output / "journal.jsonl").exists()
        hint = f"; cim-run program --resume --output {args.output} continues the run" if resumable else ""
        print(f"cim-run: interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of standard output went away (as with `| head`); results are already on disk.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    raise SystemExit(main())
