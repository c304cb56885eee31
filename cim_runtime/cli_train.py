"""``cim-run train`` and ``cim-run sweep``: device-aware training against a digital baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch.distributed as dist

from cim_runtime.device.presets import MEASURED_PRESETS
from cim_runtime.device.profiles import PROFILE_NAMES, make_profile
from cim_runtime.errors import ConfigError
from cim_runtime.files import write_json
from cim_runtime.report import check_output_folder
from cim_runtime.training import DEVICE_LAYERS, PULSE_SCHEMES, ROUNDINGS, PulseSettings
from cim_runtime.training.datasets import DATASETS, load_training_data
from cim_runtime.training.loop import TrainingRun, TrainSettings, init_distributed
from cim_runtime.training.models import MODEL_NAMES
from cim_runtime.training.sweep import plot_curves, run_specs, run_sweep


def comma_list(text: str) -> list[str]:
    """Parse a comma-separated list of names."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty name; separate names with single commas")
    return names


def positive_float(text: str) -> float:
    """Parse a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be a finite number above 0")
    return value


def settings_from(args: argparse.Namespace, model: str) -> TrainSettings:
    pulse = PulseSettings(rounding=args.rounding, pulse_limit=args.pulse_limit,
                          weight_range_factor=args.weight_range_factor, amplitude_max_v=args.amplitude_max_v)
    return TrainSettings(model=model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, image_size_px=args.image_size,
                         device_layers=args.device_layers, freeze_features=args.freeze_features, pulse=pulse,
                         tolerance_rel=args.tolerance, seed=args.seed, progress=not args.no_progress)


def load_data(args: argparse.Namespace, progress: bool):
    return load_training_data(args.dataset, args.data_root, args.image_size, holdout_fraction=args.holdout_fraction,
                              seed=args.seed, max_classes=args.classes, progress=progress)


def command_train(args: argparse.Namespace) -> int:
    check_output_folder(args.output, ("accuracy.png", "summary.json"))
    make_profile(args.device_profile)
    settings = settings_from(args, args.model)
    distributed = init_distributed(args.accelerator)
    try:
        data = load_data(args, settings.progress and distributed.rank == 0)
        specs = run_specs([args.device_profile], [args.pulse_scheme], args.training)[1:]
        if not args.no_baseline:
            specs.insert(0, run_specs([], [])[0])
        histories, descriptions = {}, {}
        features: dict = {}
        for spec in specs:
            run = TrainingRun(spec, settings, data, args.output / spec.name, distributed, features)
            histories[spec.name] = run.run(resume=args.resume)
            descriptions[spec.name] = run.model_description
        if distributed.rank == 0:
            report_train(args, data, settings, histories, descriptions)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def report_train(args, data, settings, histories: dict, descriptions: dict) -> None:
    plot_curves(args.output / "accuracy.png", histories)
    summary = {
        "data": data.description, "classes": len(data.classes), "image_size_px": settings.image_size_px,
        "runs": {name: {"model": descriptions[name], "final": history[-1], "log": str(args.output / name / "log.csv")}
                 for name, history in histories.items()},
    }
    write_json(args.output / "summary.json", summary)
    print(f"{'data':<11} {data.description}")
    for name, history in histories.items():
        final = history[-1]
        print(f"{name:<28} valid top-1 {100 * final['valid_top1']:6.2f} % after {final['epoch']} epoch{'' if final['epoch'] == 1 else 's'} "
              f"(pulses per weight update {final['pulses_per_weight_update']:.3f})")
    print(f"{'results':<11} {args.output / 'summary.json'}, {args.output / 'accuracy.png'}, <run>/log.csv, <run>/checkpoint.pt")


def command_sweep(args: argparse.Namespace) -> int:
    check_output_folder(args.output, ("results.csv", "results.md", "sweep.png"))
    for profile in args.profiles:
        make_profile(profile)
    check_schemes(args.pulse_schemes)
    settings = settings_from(args, args.models[0])
    distributed = init_distributed(args.accelerator)
    try:
        data = load_data(args, settings.progress and distributed.rank == 0)
        specs = run_specs(args.profiles, args.pulse_schemes, args.training)
        rows = run_sweep(settings, data, args.models, specs, args.output, resume=args.resume, distributed=distributed)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if distributed.rank == 0:
        print((args.output / "results.md").read_text(encoding="utf-8"), end="")
        print(f"results     {args.output / 'results.csv'}, {args.output / 'results.md'}, {args.output / 'sweep.png'} ({len(rows)} runs)")
    return 0


def add_common_options(parser: argparse.ArgumentParser, output_folder, positive_int, default_output: str) -> None:
    """Add the data, training, device and run options that ``train`` and ``sweep`` share."""
    parser.add_argument("--dataset", choices=DATASETS, default="imagefolder", help="dataset kind (default %(default)s)")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="folder with torchvision's archive layout of the dataset or with class folders (train/<class>/, "
                             "optionally valid/<class>/, or <class>/)")
    parser.add_argument("--classes", type=positive_int, help="train on the first N classes only (default: all)")
    parser.add_argument("--holdout-fraction", type=float, default=0.2,
                        help="fraction of each class held out for validation where the data has no validation split (default %(default)s)")

    parser.add_argument("--image-size", type=positive_int, default=32, help="network input side in pixels (default %(default)s)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs per run (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch and process (default %(default)s)")
    parser.add_argument("--lr", type=positive_float, default=0.05, help="peak SGD learning rate, cosine-annealed (default %(default)s)")

    parser.add_argument("--training", choices=("pulse", "noise-aware"), default="pulse",
                        help="pulse: weights move only by device pulses; noise-aware: digital training with device noise "
                             "and quantization injected (default %(default)s)")
    parser.add_argument("--device-layers", choices=DEVICE_LAYERS, default="all",
                        help="layers whose weights live on devices: every Conv2d and Linear, or the last Linear only (default %(default)s)")
    parser.add_argument("--freeze-features", action="store_true",
                        help="keep the feature layers fixed and train the classifier on features computed once (needs --device-layers classifier)")

    parser.add_argument("--rounding", choices=ROUNDINGS, default="stochastic", help="rounding of the desired change to pulses (default %(default)s)")
    parser.add_argument("--pulse-limit", type=positive_int, default=PulseSettings.pulse_limit,
                        help="maximum pulses per device and update (default %(default)s)")
    parser.add_argument("--weight-range-factor", type=float, default=PulseSettings.weight_range_factor,
                        help="maximum weight magnitude of a device pair, as a multiple of the layer's initial maximum magnitude (default %(default)s)")
    parser.add_argument("--amplitude-max-v", type=positive_float, default=PulseSettings.amplitude_max_v,
                        help="largest pulse amplitude of the non-identical scheme, in volts (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=TrainSettings.tolerance_rel,
                        help="write-verify tolerance that noise-aware training assumes, as a fraction of the conductance window (default %(default)s)")

    parser.add_argument("--seed", type=int, default=0, help="seed of every draw (default %(default)s)")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train: auto (CUDA where torch finds it, else the CPU), cpu or cuda (default %(default)s)")
    parser.add_argument("--resume", action="store_true", help="continue the runs from their checkpoints in --output")
    parser.add_argument("--output", type=output_folder, default=Path(default_output), help="results folder (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_commands(commands, output_folder, positive_int) -> None:
    """Register ``train`` and ``sweep`` on the ``cim-run`` subparser collection."""
    models = f"{', '.join(MODEL_NAMES)}, or a checkpoint folder with recipe.json"
    train = commands.add_parser("train", help="train a network with device pulse updates and a digital baseline",
                                description="Train a network whose weights move only by memristor pulses (or with device noise "
                                            "injected), next to a digital baseline. Runs under torchrun for several processes.")
    train.add_argument("--model", default="densenet-small", help=f"network: {models} (default %(default)s)")
    train.add_argument("--device-profile", default="C4D1", metavar="NAME",
                       help=f"device profile: {', '.join(PROFILE_NAMES)}, or a device .toml file (default %(default)s)")
    train.add_argument("--pulse-scheme", choices=PULSE_SCHEMES, default="identical",
                       help="identical pulses, or non-identical pulses whose amplitude aims at equal steps (default %(default)s)")
    train.add_argument("--no-baseline", action="store_true", help="skip the digital baseline run")
    add_common_options(train, output_folder, positive_int, "cim-run-train")
    train.set_defaults(handler=command_train)

    sweep = commands.add_parser("sweep", help="compare device profiles, pulse schemes and networks in one table",
                                description="Train a digital baseline and every profile x pulse scheme run for each network; "
                                            "write results.csv, results.md and sweep.png.")
    sweep.add_argument("--models", type=comma_list, default=["densenet-small"], help=f"comma-separated networks: {models}")
    sweep.add_argument("--profiles", type=comma_list, default=list(MEASURED_PRESETS),
                       help="comma-separated device profiles or .toml files (default: the six measured presets)")
    sweep.add_argument("--pulse-schemes", type=comma_list, default=["identical"],
                       help=f"comma-separated pulse schemes from {', '.join(PULSE_SCHEMES)} (default identical)")
    add_common_options(sweep, output_folder, positive_int, "cim-run-sweep")
    sweep.set_defaults(handler=command_sweep)


def check_schemes(schemes: list[str]) -> None:
    unknown = [name for name in schemes if name not in PULSE_SCHEMES]
    if unknown:
        raise ConfigError(f"--pulse-schemes {','.join(unknown)} is invalid: use {', '.join(PULSE_SCHEMES)}")
