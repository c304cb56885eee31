"""Analog-mode options of ``cim-run infer``: ``--mode analog`` with DAC, ADC, noise and drift settings."""

from __future__ import annotations

import argparse
import logging
import math

from cim_runtime.analog import AnalogConfig
from cim_runtime.analog.config import DRIFT_COMPENSATION, IR_DROP_MODELS, PAIR_SUBTRACTION, READ_NOISE_VARIANCE
from cim_runtime.analog.evaluate import AnalogRequest
from cim_runtime.errors import ConfigError

logger = logging.getLogger(__name__)

#: Options that only analog mode uses; any of them away from its default needs --mode analog.
ANALOG_ONLY = ("dac_bits", "adc_bits", "bit_serial", "read_noise", "read_noise_variance", "wire_resistance_ohm", "ir_drop", "pair_subtraction",
               "calibration_batches", "time_since_programming_s", "drift_compensation", "compile", "fold_batchnorm", "keep_digital")


def bits(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of bits") from None
    if not 1 <= value <= 24:
        raise argparse.ArgumentTypeError(f"{value} bits is invalid: must be from 1 to 24")
    return value


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the analog options to the ``infer`` parser; their defaults land in ``args.analog_defaults``."""
    group = parser.add_argument_group("analog mode")
    group.add_argument("--mode", choices=("readback", "analog"), default="readback",
                       help="readback: classify with the weights read back from the arrays; analog: compute every mapped "
                            "layer through DAC, tiles and ADC (default %(default)s)")
    group.add_argument("--dac-bits", type=bits, help="DAC resolution in bits (default: ideal DAC)")
    group.add_argument("--adc-bits", type=bits, help="ADC resolution in bits (default: ideal ADC)")
    group.add_argument("--bit-serial", action="store_true", help="send each DAC code as one read per bit (needs --dac-bits)")
    group.add_argument("--read-noise", type=float, metavar="SIGMA",
                       help="relative read noise per cell and MVM (default: the simulator profile's read_sigma_rel; "
                            "0 with --programmed, whose saved conductances carry the noise of their read)")
    group.add_argument("--read-noise-variance", choices=READ_NOISE_VARIANCE, default="exact",
                       help="exact: each cell's own conductance sets its noise; column-mean: the mean squared conductance "
                            "of each tile column does, which skips most of one convolution per layer (default %(default)s)")
    group.add_argument("--wire-resistance-ohm", type=float, default=0.0, help="resistance of each wire segment in ohms (default 0: no IR drop)")
    group.add_argument("--ir-drop", choices=IR_DROP_MODELS, default="approximate", help="IR-drop model (default %(default)s)")
    group.add_argument("--pair-subtraction", choices=PAIR_SUBTRACTION, default="analog",
                       help="subtract G+ and G- currents before the ADC (analog) or after it (digital) (default %(default)s)")
    group.add_argument("--calibration-batches", type=int, default=4, help="batches of images that set the converter ranges (default %(default)s)")
    group.add_argument("--time-since-programming-s", type=float, default=0.0,
                       help="seconds between programming and inference; the arrays drift meanwhile (default 0)")
    group.add_argument("--drift-compensation", choices=DRIFT_COMPENSATION, default="none",
                       help="output correction from a reference read after drift (default %(default)s)")
    group.add_argument("--compile", action="store_true",
                       help="fuse the DAC (with --dac-bits) and the read noise and ADC (with --adc-bits) into loops "
                            "compiled by torch.compile (needs a C++ compiler)")
    group.add_argument("--fold-batchnorm", action="store_true",
                       help="fold each batch norm that directly follows a convolution into its weights before mapping "
                            "(default: batch norm stays digital)")
    group.add_argument("--keep-digital", action="append", default=[], metavar="PATTERN",
                       help="keep the Conv2d or Linear layers whose names match this glob pattern digital, for example "
                            "'classifier' or 'features.conv0'; repeat for more patterns")
    parser.set_defaults(analog_defaults={name: parser.get_default(name) for name in ANALOG_ONLY})


def check_numbers(args: argparse.Namespace) -> None:
    """Reject analog option values that no run can use, naming the option."""
    checks = (
        ("--read-noise", args.read_noise, args.read_noise is None or 0 <= args.read_noise < math.inf, "a finite relative sigma of 0 or above"),
        ("--wire-resistance-ohm", args.wire_resistance_ohm, 0 <= args.wire_resistance_ohm < math.inf, "a finite resistance of 0 ohm or above"),
        ("--calibration-batches", args.calibration_batches, args.calibration_batches >= 1, "at least 1"),
        ("--time-since-programming-s", args.time_since_programming_s, 0 <= args.time_since_programming_s < math.inf,
         "a finite time of 0 s or above"),
    )
    for option, value, valid, expected in checks:
        if not valid:
            raise ConfigError(f"{option} {value} is invalid: must be {expected}")
    if args.bit_serial and args.dac_bits is None:
        raise ConfigError("--bit-serial needs --dac-bits N: bit-serial input sends each DAC code bit by bit")
    if args.compile and (args.adc_bits is None or args.dac_bits is None or args.bit_serial):
        logger.warning("--compile fuses the DAC only with --dac-bits (without --bit-serial), and the read noise and ADC "
                       "only with --adc-bits; the other stages of this run are not compiled")


def request_from_args(args: argparse.Namespace) -> AnalogRequest | None:
    """Return the analog request of ``--mode analog``, or None for readback mode.

    Raises:
        ConfigError: an analog option was given in readback mode.
    """
    if args.mode == "readback":
        changed = [name for name in ANALOG_ONLY if getattr(args, name) != args.analog_defaults[name]]
        if changed:
            options = ", ".join("--" + name.replace("_", "-") for name in changed)
            verb, pronoun = ("applies", "it") if len(changed) == 1 else ("apply", "them")
            raise ConfigError(f"{options} {verb} to --mode analog only; add --mode analog or drop {pronoun}")
        return None
    check_numbers(args)
    config = AnalogConfig(
        dac_bits=args.dac_bits, adc_bits=args.adc_bits, bit_serial=args.bit_serial, read_noise_sigma_rel=args.read_noise,
        read_noise_variance=args.read_noise_variance, wire_resistance_ohm=args.wire_resistance_ohm, ir_drop=args.ir_drop, pair_subtraction=args.pair_subtraction,
        drift_compensation=args.drift_compensation, compile=args.compile,
        seed=args.seed if args.seed is not None else 0,
    )
    return AnalogRequest(config, args.calibration_batches, args.time_since_programming_s,
                         fold_batchnorm=args.fold_batchnorm, keep_digital=tuple(args.keep_digital))


def compiled_label(config: dict) -> str:
    """Return which fused loops ran, for the printed summary ("" when none did)."""
    loops = []
    if config["compile"] and config["dac_bits"] is not None and not config["bit_serial"]:
        loops.append("DAC")
    if config["compile"] and config["adc_bits"] is not None:
        loops.append("ADC")
    return f", compiled ({' and '.join(loops)})" if loops else ""


def summary_lines(summary: dict) -> list[tuple[str, str]]:
    """Lines that the analog mode adds to the printed summary."""
    if summary.get("mode") != "analog":
        return []
    analog = summary["analog"]
    config = analog["config"]

    def resolution(value) -> str:
        return "ideal" if value is None else f"{value} bit"

    dac = resolution(config["dac_bits"]) + (" bit-serial" if config["bit_serial"] else "")
    subtraction = "pairs subtracted before the ADC" if config["pair_subtraction"] == "analog" else "each column digitized"
    wires = "no IR drop" if config["wire_resistance_ohm"] == 0 else f"{config['ir_drop']} IR drop at {config['wire_resistance_ohm']:g} ohm"
    # Configs saved before the option existed lack the key; they used the exact variance.
    column_mean = config.get("read_noise_variance") == "column-mean" and config["read_noise_sigma_rel"] > 0
    noise_variance = " (column-mean variance)" if column_mean else ""
    if analog.get("conductances_from") == "saved state":
        age = "conductances from the saved state"
    else:
        age = f"{analog['time_since_programming_s']:g} s after programming (drift compensation: {config['drift_compensation']})"
    lines = [
        ("analog", f"DAC {dac}, ADC {resolution(config['adc_bits'])} ({subtraction}), read noise "
                   f"{100 * config['read_noise_sigma_rel']:.2f} %{noise_variance}, {wires}{compiled_label(config)}"),
        ("conductance", age),
        ("saturated", f"DAC {100 * analog['dac_saturation']['fraction']:.3f} %, ADC {100 * analog['adc_saturation']['fraction']:.3f} % "
                      "of conversions"),
    ]
    if analog["folded_batchnorm"]:
        lines.append(("batch norm", f"{len(analog['folded_batchnorm'])} layers folded into convolutions"))
    if analog["digital_layers"]:
        lines.append(("digital", ", ".join(analog["digital_layers"]) + " (not mapped, computed by torch)"))
    return lines
