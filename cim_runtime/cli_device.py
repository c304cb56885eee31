"""``cim-run characterize``, ``cim-run fit`` and ``cim-run device show``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cim_runtime.characterize import ROUTINES, SCHEMES, PulseTrainSettings, run_characterization
from cim_runtime.device import make_profile
from cim_runtime.device.calibration import calibrate_ramp_variation
from cim_runtime.device.fit_check import SPREAD_WINDOWS
from cim_runtime.device.fit_report import write_fit
from cim_runtime.device.fitting import MODELS, fit_device
from cim_runtime.device.readers import read_measurements
from cim_runtime.driver import open_driver
from cim_runtime.errors import ConfigError
from cim_runtime.files import write_json
from cim_runtime.report import check_output_folder, save_figure


def command_characterize(args: argparse.Namespace, url: str) -> int:
    check_output_folder(args.output, ())
    routines = ROUTINES if args.routines == "all" else tuple(name.strip() for name in args.routines.split(","))
    if not all(routines):
        raise ConfigError(f"--routines {args.routines!r} has an empty name; separate names with single commas")
    train = PulseTrainSettings(pulses=args.pulses, cycles=args.cycles, scheme=args.scheme)
    with open_driver(url) as driver:
        summary = run_characterization(driver, args.output, routines=routines, cells=args.cells, train=train,
                                       endurance_cycles=args.endurance_cycles, progress=not args.no_progress)
    for name, result in summary["routines"].items():
        details = ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                            for key, value in result.items() if key not in ("file", "array"))
        print(f"{name:<12} {args.output / result['file']} ({details})")
    return 0


def command_fit(args: argparse.Namespace) -> int:
    check_output_folder(args.output, ("device.toml", "fit.json", "fit.png"))
    if not 0 < args.max_nrmse < 1:
        raise ConfigError(f"--max-nrmse {args.max_nrmse} is invalid: must be above 0 and below 1")
    data = read_measurements(args.files, args.current_read_voltage_v)
    if args.map_to_s is not None:
        data = data.mapped_onto(*args.map_to_s)
    fit = fit_device(data, model=args.model, max_nrmse=args.max_nrmse, name=args.name)
    cycling = len(data.up) >= 2 and len(data.down) >= 2
    simulated = None
    if cycling:
        fit, simulated = calibrate_ramp_variation(data, fit)
    write_fit(args.output, data, fit, simulated)
    print(f"data        {len(data.up)} potentiation and {len(data.down)} depression ramps from {len(args.files)} file(s)")
    print(f"range       {fit.conductance_min_s:.6g} .. {fit.conductance_max_s:.6g} S")
    print(f"nonlinearity up {fit.nonlinearity_up:+.3f}, down {fit.nonlinearity_down:+.3f} "
          f"(exponential NRMSE up {100 * fit.nrmse_exponential['up']:.2f} %, down {100 * fit.nrmse_exponential['down']:.2f} %)")
    print(f"asymmetry   ANL {fit.asymmetry_measured:+.3f} measured, {fit.asymmetry_fitted:+.3f} fitted")
    ctoc = "not measurable from one ramp per direction" if fit.step_sigma_ctoc is None else f"{fit.step_sigma_ctoc:.3f}"
    print(f"variation   cycle-to-cycle step sigma {ctoc}; {fit.levels} distinguishable levels")
    if fit.read_sigma_rel is not None:
        spread = fit.spread_dtod.get("step_sigma_dtod")
        print(f"            read sigma {100 * fit.read_sigma_rel:.3f} %"
              + (f"; step spread between cells {spread:.3f}" if spread is not None else ""))
    print(f"model       {fit.model}, NRMSE up {100 * fit.nrmse['up']:.2f} %, down {100 * fit.nrmse['down']:.2f} %")
    if simulated is not None:
        print(f"simulated   mean-ramp NRMSE up {100 * simulated['nrmse_mean_up']:.2f} %, down {100 * simulated['nrmse_mean_down']:.2f} %")
        for label in ("up", "down"):
            positions = ", ".join(f"{name} {simulated[f'spread_ratio_{label}_{name}']:.2f}" for name, _, _ in SPREAD_WINDOWS)
            print(f"            ramp-to-ramp spread ratio {label} {simulated[f'spread_ratio_{label}']:.2f} ({positions})")
    print(f"results     {args.output / 'device.toml'}, {args.output / 'fit.json'}, {args.output / 'fit.png'}")
    return 0


def profile_curves(profile) -> tuple[np.ndarray, np.ndarray]:
    """Simulate nominal pulse trains across the window on one noiseless cell of ``profile``."""
    from cim_runtime.characterize.cells import CellSelection
    from cim_runtime.characterize.trains import run_train
    from cim_runtime.driver.simulator import SimulatorDriver

    quiet = profile.without_variation()
    pulses = int(max(quiet.response.pulses_up, len(quiet.response.potentiation_s) - 1, 64))
    with SimulatorDriver(quiet, rows=1, cols=1, arrays=1) as driver:
        cell = CellSelection(0, np.array([0]), np.array([0]))
        amplitude = np.full(pulses, quiet.law_up.nominal_amplitude_v)
        run_train(driver, cell, -1, amplitude, np.full(pulses, quiet.law_down.nominal_width_s))
        up = run_train(driver, cell, +1, amplitude, np.full(pulses, quiet.law_up.nominal_width_s))[:, 0]
        down = run_train(driver, cell, -1, amplitude, np.full(pulses, quiet.law_down.nominal_width_s))[:, 0]
    return up, down


def command_device_show(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check_output_folder(args.output, ())
    profile = make_profile(args.profile)
    up, down = profile_curves(profile)
    figure, axis = plt.subplots(figsize=(6, 4.2))
    axis.plot(np.arange(up.size), up * 1e6, marker=".", label="potentiation")
    axis.plot(np.arange(up.size - 1, up.size + down.size - 1), down * 1e6, marker=".", label="depression")
    axis.set_xlabel("nominal pulse")
    axis.set_ylabel("conductance (µS)")
    axis.set_title(f"{profile.name} ({profile.response.kind}), no variation")
    axis.legend()
    args.output.mkdir(parents=True, exist_ok=True)
    stem = Path(profile.name).name
    save_figure(figure, args.output / f"{stem}.png")
    write_json(args.output / f"{stem}.json", {"profile": profile.name, "kind": profile.response.kind,
                                              "potentiation_s": up.tolist(), "depression_s": down.tolist()})
    print(f"{profile.name}: {profile.response.kind} response, range {profile.response.conductance_min_s:.6g} .. "
          f"{profile.response.conductance_max_s:.6g} S")
    print(f"results     {args.output / (stem + '.png')}, {args.output / (stem + '.json')}")
    return 0


def add_commands(commands, add_backend_options, output_folder, positive_int) -> None:
    """Register the device commands on the ``cim-run`` subparser collection."""
    characterize = commands.add_parser("characterize", help="measure pulse trains, RPS, retention, endurance and read noise",
                                       description="Run characterization routines through any backend and write CSV, JSON and PNG.")
    add_backend_options(characterize)
    characterize.add_argument("--output", type=output_folder, default=Path("cim-run-characterize"), help="results folder (default %(default)s)")
    characterize.add_argument("--routines", default="all", help=f"comma-separated subset of {','.join(ROUTINES)} (default all)")
    characterize.add_argument("--cells", type=positive_int, default=16, help="cells measured per routine (default %(default)s)")
    characterize.add_argument("--pulses", type=positive_int, default=64, help="pulses per train (default %(default)s)")
    characterize.add_argument("--cycles", type=positive_int, default=3, help="potentiation-depression cycles (default %(default)s)")
    characterize.add_argument("--scheme", choices=SCHEMES, default="identical", help="pulse scheme of the trains")
    characterize.add_argument("--endurance-cycles", type=positive_int, default=1000, help="switching cycles of the endurance test (default %(default)s)")
    characterize.add_argument("--no-progress", action="store_true", help="hide progress bars")
    characterize.set_defaults(handler=None, device_handler="characterize")

    fit = commands.add_parser("fit", help="fit a device model to pulse-train files",
                              description="Fit the exponential (or table) device model to measured pulse trains.")
    fit.add_argument("files", nargs="+", type=Path, help="measurement files (characterize CSV, one column per line, ramp columns)")
    fit.add_argument("--output", type=output_folder, default=Path("cim-run-fit"), help="results folder (default %(default)s)")
    fit.add_argument("--model", choices=MODELS, default="auto", help="model to keep (default auto: exponential when it fits)")
    fit.add_argument("--max-nrmse", type=float, default=0.03, help="largest exponential NRMSE that auto accepts (default %(default)s)")
    fit.add_argument("--current-read-voltage-v", type=float, help="the files hold read currents at this voltage, not conductances")
    fit.add_argument("--map-to-s", type=float, nargs=2, metavar=("MIN", "MAX"),
                     help="map the measured range onto this conductance window in siemens (for normalized data)")
    fit.add_argument("--name", help="device name written into device.toml")
    fit.set_defaults(handler=None, device_handler="fit")

    device = commands.add_parser("device", help="inspect device profiles")
    device_commands = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    show = device_commands.add_parser("show", help="plot a profile's potentiation and depression curves")
    show.add_argument("profile", help="preset name (C4D1, ...) or device .toml file")
    show.add_argument("--output", type=output_folder, default=Path("cim-run-device"), help="results folder (default %(default)s)")
    show.set_defaults(handler=None, device_handler="show")
