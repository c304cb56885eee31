"""Sweeps of device profiles x pulse schemes x networks against a digital baseline, with one table and one plot."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cim_runtime.device import make_profile
from cim_runtime.device.fitting import fit_exponential_ramp
from cim_runtime.files import atomic_write, write_csv
from cim_runtime.report import save_figure
from cim_runtime.training.datasets import TrainingData
from cim_runtime.training.loop import Distributed, RunSpec, TrainingRun, TrainSettings
from cim_runtime.training.torch_response import build_torch_curve

logger = logging.getLogger(__name__)

RESULT_COLUMNS = ("network", "profile", "scheme", "valid_top1", "best_valid_top1", "vs_digital_points", "train_loss",
                  "nonlinearity_up", "nonlinearity_down", "asymmetric_nonlinearity", "pulses_across")


def profile_metrics(profile: str) -> dict:
    """Describe a device's linearity and symmetry from its noiseless potentiation and depression curves.

    Returns the fitted exponential nonlinearity factor of each direction (0 is linear), the
    asymmetric nonlinearity ``(G_up(N/2) - G_down(N/2)) / window`` (0 for a linear, symmetric device,
    where ``G_down`` counts depression pulses from the top) and the mean pulse count across the window.
    """
    curve = build_torch_curve(make_profile(profile).response)
    low, high = curve.reachable()
    pulses_up, pulses_down = curve.pulses_across()
    count = max(2, round((pulses_up + pulses_down) / 2))
    steps = torch.arange(count + 1, dtype=torch.float64)
    up = curve.up(torch.full_like(steps, low), steps).numpy()
    down = curve.down(torch.full_like(steps, high), steps).numpy()
    nu_up = float(fit_exponential_ramp(up)[2])
    # Mirror the depression curve so that a saturating fall fits a positive factor, as a saturating rise does.
    nu_down = float(fit_exponential_ramp(high + low - down)[2])
    half = torch.tensor([count / 2], dtype=torch.float64)
    up_half = float(curve.up(torch.tensor([low], dtype=torch.float64), half))
    down_half = float(curve.down(torch.tensor([high], dtype=torch.float64), half))
    asymmetry = (up_half - down_half) / (high - low)
    return {"nonlinearity_up": round(nu_up, 3), "nonlinearity_down": round(nu_down, 3),
            "asymmetric_nonlinearity": round(asymmetry, 3), "pulses_across": round((pulses_up + pulses_down) / 2, 1)}


def run_specs(profiles: list[str], schemes: list[str], mode: str = "pulse") -> list[RunSpec]:
    """Return the digital baseline followed by every profile x scheme run."""
    specs = [RunSpec("digital")]
    if mode == "noise-aware":
        return specs + [RunSpec("noise-aware", profile) for profile in profiles]
    return specs + [RunSpec("pulse", profile, scheme) for profile in profiles for scheme in schemes]


def run_sweep(settings: TrainSettings, data: TrainingData, models: list[str], specs: list[RunSpec], output: Path,
              resume: bool = False, distributed: Distributed | None = None) -> list[dict]:
    """Train every run of ``specs`` for every network in ``models`` and write the table and the plot.

    Each run has the folder ``output/<model>/<run>/``. With ``resume`` a finished run is read back from
    its checkpoint and an unfinished one continues.
    """
    distributed = distributed or Distributed()
    rows = []
    metrics = {}
    for model in models:
        model_settings = replace(settings, model=model)
        features: dict = {}
        digital_top1 = None
        for spec in specs:
            folder = Path(output) / Path(model).name / spec.name
            history = TrainingRun(spec, model_settings, data, folder, distributed, features).run(resume=resume)
            final = history[-1]["valid_top1"]
            if spec.mode == "digital":
                digital_top1 = final
            if spec.profile and spec.profile not in metrics:
                metrics[spec.profile] = profile_metrics(spec.profile)
            rows.append({
                "network": Path(model).name, "profile": spec.profile or "digital",
                "scheme": spec.scheme if spec.mode == "pulse" else spec.mode,
                "valid_top1": final, "best_valid_top1": max(row["valid_top1"] for row in history),
                "vs_digital_points": round(100 * (final - digital_top1), 2) if digital_top1 is not None else "",
                "train_loss": history[-1]["train_loss"],
                **metrics.get(spec.profile, dict.fromkeys(RESULT_COLUMNS[7:], "")),
            })
            logger.info("sweep run %s/%s: valid top-1 %.4f", model, spec.name, final)
    if distributed.rank == 0:
        write_results(Path(output), rows, settings, data)
    return rows


def results_markdown(rows: list[dict], settings: TrainSettings, data: TrainingData) -> str:
    """Format the sweep table, closest to the digital baseline first within each network."""
    lines = [
        f"Data: {data.description}. Input {settings.image_size_px} px, {settings.epochs} epochs, batch {settings.batch_size}, "
        f"peak learning rate {settings.lr:g}, device layers: {settings.device_layers}"
        f"{' (features frozen)' if settings.freeze_features else ''}, rounding {settings.pulse.rounding}, "
        f"pulse limit {settings.pulse.pulse_limit}, seed {settings.seed}.",
        "",
        "| network | profile | scheme | valid top-1 (%) | vs digital (points) | final training loss | nonlinearity up "
        "| nonlinearity down | asymmetric nonlinearity | pulses across window |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: (r["network"], r["profile"] != "digital", -r["valid_top1"])):
        delta = f"{row['vs_digital_points']:+.2f}" if isinstance(row["vs_digital_points"], float) else ""
        loss = f"{row['train_loss']:.3f}" if isinstance(row["train_loss"], float) else ""
        lines.append(f"| {row['network']} | {row['profile']} | {row['scheme']} | {100 * row['valid_top1']:.2f} | {delta} | {loss} "
                     f"| {row['nonlinearity_up']} | {row['nonlinearity_down']} | {row['asymmetric_nonlinearity']} "
                     f"| {row['pulses_across']} |")
    return "\n".join(lines) + "\n"


def write_results(output: Path, rows: list[dict], settings: TrainSettings, data: TrainingData) -> None:
    """Write ``results.csv``, ``results.md`` and ``sweep.png`` into ``output``."""
    write_csv(output / "results.csv", rows)
    text = results_markdown(rows, settings, data)
    atomic_write(output / "results.md", lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))
    plot_sweep(output / "sweep.png", rows)


def plot_sweep(path: Path, rows: list[dict]) -> None:
    """Plot each run's validation accuracy minus the digital baseline's, per profile and scheme, one panel per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = sorted({row["network"] for row in rows})
    figure, axes = plt.subplots(1, len(networks), figsize=(7 * len(networks), 4.5), squeeze=False)
    for axis, network in zip(axes[0], networks):
        device_rows = [row for row in rows if row["network"] == network and row["profile"] != "digital"]
        digital = next((row["valid_top1"] for row in rows if row["network"] == network and row["profile"] == "digital"), 0.0)
        profiles = list(dict.fromkeys(row["profile"] for row in device_rows))
        schemes = list(dict.fromkeys(row["scheme"] for row in device_rows))
        width = 0.8 / max(1, len(schemes))
        for offset, scheme in enumerate(schemes):
            values = [next((100 * (r["valid_top1"] - digital) for r in device_rows if r["profile"] == p and r["scheme"] == scheme),
                           np.nan) for p in profiles]
            axis.bar(np.arange(len(profiles)) + offset * width, values, width, label=scheme)
        axis.axhline(0.0, color="black", linewidth=1)
        axis.set_xticks(np.arange(len(profiles)) + width * (len(schemes) - 1) / 2, [Path(p).stem for p in profiles], rotation=20)
        axis.set_ylabel("validation top-1 minus digital (points)")
        axis.set_title(f"{network}: digital baseline {100 * digital:.2f} %")
        axis.legend()
    figure.tight_layout()
    save_figure(figure, path)


def plot_curves(path: Path, histories: dict[str, list[dict]]) -> None:
    """Plot validation accuracy against epoch for each run."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, history in histories.items():
        axis.plot([row["epoch"] for row in history], [100 * row["valid_top1"] for row in history], marker="o", label=name)
    axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation top-1 (%)")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, path)
