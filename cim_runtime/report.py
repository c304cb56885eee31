"""Write run results: a JSON summary and PNG plots, each replaced atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cim_runtime.errors import ConfigError
from cim_runtime.files import atomic_write
from cim_runtime.programming import WriteVerifyResult

#: Cells drawn into the scatter plot; more only slows the plot down.
SCATTER_POINTS = 20_000


def check_output_folder(folder: Path, names: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` before any work if results cannot be written to ``folder``."""
    if str(folder) == "":
        raise ConfigError("--output is empty; pass a folder name")
    if str(folder) == ".":
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file; pass a folder (it is created if missing)")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--output {folder} is inside {parent}, which is a file")
            break
    for name in names:
        if (folder / name).is_dir():
            raise ConfigError(f"{folder / name} is a folder, so the result file cannot be written there; remove it or pick another --output")


def keep_previous(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Rename result files of an earlier run in ``folder`` to ``NAME.previous.EXT``; return the new paths.

    Only one earlier run survives: a second rerun replaces the ``.previous`` files.
    """
    renamed = []
    for name in names:
        path = folder / name
        if path.is_file():
            previous = path.with_name(f"{path.stem}.previous{path.suffix}")
            path.replace(previous)
            renamed.append(previous)
    return renamed


def plot_programming(path: Path, result: WriteVerifyResult, seed: int = 0) -> None:
    """Plot target against programmed conductance, the programming error and the pulses per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target_us = result.targets.target_s * 1e6
    measured_us = result.measured_s * 1e6
    shown = np.random.default_rng(seed).permutation(target_us.size)[:SCATTER_POINTS]
    tolerance_us = result.tolerance_s * 1e6

    figure, (scatter, histogram, pulse_histogram) = plt.subplots(1, 3, figsize=(16, 4.5))
    scatter.scatter(target_us[shown], measured_us[shown], s=2, alpha=0.3, color="tab:blue", label="cells")
    low, high = float(target_us.min()), float(target_us.max())
    scatter.plot([low, high], [low, high], color="black", linewidth=1, label="target")
    scatter.fill_between([low, high], [low - tolerance_us, high - tolerance_us], [low + tolerance_us, high + tolerance_us],
                         color="tab:green", alpha=0.2, label=f"tolerance ±{tolerance_us:.1f} µS")
    scatter.set_xlabel("target conductance (µS)")
    scatter.set_ylabel("programmed conductance, last verify read (µS)")
    scatter.set_title(f"{target_us.size:,} cells, {100 * result.in_tolerance.mean():.2f} % in tolerance")
    scatter.legend(loc="upper left")

    histogram.hist(measured_us - target_us, bins=120, color="tab:blue")
    histogram.axvline(-tolerance_us, color="tab:green")
    histogram.axvline(tolerance_us, color="tab:green")
    histogram.set_xlabel("programming error (µS)")
    histogram.set_ylabel("cells (log scale)")
    histogram.set_yscale("log")
    histogram.set_title("programming error of every cell")

    pulse_histogram.hist(result.pulses, bins=np.arange(result.pulses.max() + 2) - 0.5, color="tab:orange")
    pulse_histogram.set_xlabel("pulses applied to the cell")
    pulse_histogram.set_ylabel("cells (log scale)")
    pulse_histogram.set_yscale("log")
    pulse_histogram.set_title(f"mean {result.pulses.mean():.1f} pulses per cell, p99 {np.percentile(result.pulses, 99):.0f}")
    figure.tight_layout()

    save_figure(figure, path)


def save_figure(figure, path: Path) -> None:
    """Save a matplotlib figure as PNG through a temporary file, then close it."""
    import matplotlib.pyplot as plt

    def write(temporary: str) -> None:
        figure.savefig(temporary, dpi=110, format="png")

    try:
        atomic_write(path, write)
    finally:
        plt.close(figure)
